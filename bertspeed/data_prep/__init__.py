"""Raw text to NVIDIA-compatible HDF5 pretraining shards: extraction, sentence splitting, vocab,
instances, masking (shared with pretrain's loader), S3, and the create_datasets.sh pipeline."""
