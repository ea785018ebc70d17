"""bertspeed: pretrain BERT encoders from raw text on PyTorch + DeepSpeed, and finetune them.

Packages: `bertspeed.model` (config, model, heads, tokenizer, checkpoints), `bertspeed.kernels` (fused
CUDA ops), `bertspeed.data_prep` (text -> HDF5 shards), `bertspeed.pretrain`, `bertspeed.finetune`,
and `bertspeed.training` (the plumbing both share). The command line is `bertspeed <command>`.
"""
__version__ = "0.2.0"
