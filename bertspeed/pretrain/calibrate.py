"""Pretraining-step throughput of a model on this machine, measured in-process on synthetic data
(our model, our LAMB, the precision's autocast): what the demo sizes itself from, and the batch
the benchmarks feed to every configuration."""
from __future__ import annotations

import time

import torch

from bertspeed.model.config import BertConfig
from bertspeed.model.model import IGNORE_INDEX, BertForPreTraining
from bertspeed.pretrain.lamb import Lamb
from bertspeed.training.hardware import autocast
from bertspeed.training.params import param_groups

MASK_ID = 103  # [MASK] in the bert-base-uncased vocab; any id works for timing


def synthetic_batch(config: BertConfig, batch: int, seq: int, predictions: int, seed: int = 0) -> dict:
    """Random ids, `predictions` masked positions per sequence, two segments, random NSP labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, config.vocab_size - 1), config.vocab_size, (batch, seq), generator=gen)
    labels = torch.full((batch, seq), IGNORE_INDEX)
    for row in range(batch):
        positions = torch.randperm(seq - 2, generator=gen)[:predictions] + 1
        labels[row, positions] = ids[row, positions]
        ids[row, positions] = MASK_ID % config.vocab_size
    segments = torch.zeros(batch, seq, dtype=torch.long)
    segments[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            "token_type_ids": segments, "labels": labels,
            "next_sentence_label": torch.randint(0, 2, (batch,), generator=gen)}


def training_seq_per_s(config: BertConfig, batch: int, seq: int, predictions: int, precision: str,
                       steps: int = 3) -> float:
    """Sequences per second of full training steps (forward, backward, LAMB) in this process, from
    the fastest of `steps` timed steps after one warm-up step."""
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = Lamb(param_groups(model, 0.01), lr=1e-4, weight_decay=0.01)
    data = synthetic_batch(config, batch, seq, predictions)
    best = float("inf")
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast(precision, "cpu"):
            loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            best = min(best, time.perf_counter() - start)
    return batch / best
