"""Data sources, tokenizers and pipelines."""
