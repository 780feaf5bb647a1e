"""Classification fine-tuning: task `classify` is the three objectives of one head each,
chosen by the body `init_from` brings (or model.family from scratch): an encoder's
(classify_text.py: `[CLS] A [SEP] B [SEP]`, pooled), a decoder's (classify_decoder.py: GPT-1's
last token plus an auxiliary LM loss) or a ViT's (classify_images.py). Text comes from a TSV
(`text[, text_b], label`), images from the vision data sources.
"""

from ssl_jax.tasks import Task, classify_decoder, classify_images, classify_text

OBJECTIVES = (classify_text.TASK, classify_decoder.TASK, classify_images.TASK)

TASK = Task('classify', group='classify',
            settings={'lm_weight': (0.5, 'decoders: weight of the auxiliary language-modelling loss (GPT-1)')},
            heads={body: family for task in OBJECTIVES for body, family in task.heads.items()},
            best_metric='eval_accuracy',
            per_family={family: task.name for task in OBJECTIVES for family in task.heads.values()})
