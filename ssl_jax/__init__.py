"""ssl_jax: self-supervised pretraining of transformers in JAX/Flax, and transfer."""
