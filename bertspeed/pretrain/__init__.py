"""BERT pretraining on DeepSpeed: loader, LAMB, schedule, checkpoints, metrics, entry points."""
