"""Batches of the finetuning loop: length-grouped shuffled batches (a function of seed and epoch, so
a resumed run recomputes the same order), equal shares per rank, dynamic padding."""
from __future__ import annotations

import math

import numpy as np
import torch


def length_grouped_batches(lengths, batch_size: int, seed: int, group_by_length: bool = True):
    """Shuffled batches of indices; with grouping, each batch holds examples of similar length
    (sorted within shuffled windows of 50 batches), so dynamic padding wastes little."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if group_by_length:
        window = 50 * batch_size
        order = np.concatenate([sorted(order[i:i + window], key=lambda j: -lengths[j])
                                for i in range(0, len(order), window)]) if len(order) else order
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def shard_batches(batches: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s share; the list is wrapped around so every rank gets the same count."""
    per_rank = math.ceil(len(batches) / world_size)
    padded = batches + batches[: per_rank * world_size - len(batches)]
    return padded[rank::world_size]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def collate_padded(features: list[dict], pad_id: int = 0) -> dict:
    """Pad a batch to its longest sequence (dynamic padding). Token-level `labels` lists are padded
    with -100; scalar fields are stacked; keys starting with "_" are metadata and left out."""
    T = max(len(f["input_ids"]) for f in features)
    B = len(features)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((B, T), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"])
        token_type_ids[i, :n] = torch.tensor(f["token_type_ids"])
        attention_mask[i, :n] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    for key in features[0]:
        if key in batch or key.startswith("_"):
            continue
        values = [f[key] for f in features]
        if isinstance(values[0], list):
            padded = torch.full((B, T), -100, dtype=torch.long)
            for i, v in enumerate(values):
                padded[i, :len(v)] = torch.tensor(v, dtype=torch.long)
            batch[key] = padded
        else:
            batch[key] = torch.tensor(values, dtype=torch.float if isinstance(values[0], float) else torch.long)
    return batch
