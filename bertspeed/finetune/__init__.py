"""Finetuning drivers (SQuAD, GLUE, NER) over the `bert` core; metric definitions in finetune.metrics."""
