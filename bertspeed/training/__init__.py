"""The training plumbing pretraining and finetuning share: settings, distributed set-up, precision,
metrics, parameter groups, atomic writes and the run-folder format."""
