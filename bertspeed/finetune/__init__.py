"""Finetuning drivers (SQuAD, GLUE, NER) and predict.py over `bertspeed.model`; their flags in
finetune.settings, the shared training loop in finetune.trainer, metric definitions in finetune.metrics."""
