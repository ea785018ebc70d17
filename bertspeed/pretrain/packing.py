"""Sequence packing of pretraining micro-batches (--pack): the instances of one micro-batch, as
`bertspeed.pretrain.data` yields it, laid into as few rows of the same length as fit (first-fit decreasing).

A packed batch holds, per row (R, T): input_ids, token_type_ids, position_ids (restarting at 0 for every
instance), instance_ids (1, 2, ... per instance in the row, 0 = padding) and labels (MLM, -100 elsewhere);
per row and instance slot (R, K): cls_positions (-1 = empty slot) and next_sentence_label. The instances and
their masked positions are exactly those of the micro-batch, so `bertspeed.model.unpad.packed_pretraining_forward`
gives the padded model's MLM and NSP losses (means over the same tokens and instances); only the sample order
inside the micro-batch changes, and the global sample order (resume, world size) is untouched.
"""
from __future__ import annotations

import torch

from bertspeed.model.model import IGNORE_INDEX


def assign_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: lists of instance indices whose lengths sum to at most `capacity` each."""
    rows, free = [], []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        if lengths[i] > capacity:
            raise ValueError(f"instance of {lengths[i]} tokens exceeds the packed row length {capacity}")
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def pack_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A padded micro-batch (input_ids, attention_mask, token_type_ids, labels, next_sentence_label; B x T,
    real tokens first in every row) -> a packed batch (module docstring) of rows of the same length T."""
    mask = batch["attention_mask"]
    B, T = mask.shape
    lengths = mask.sum(dim=1)
    if not torch.equal(mask.bool(), torch.arange(T)[None, :] < lengths[:, None]):
        raise ValueError("packing needs attention_mask rows of ones then zeros (real tokens first)")
    rows = assign_rows(lengths.tolist(), T)
    R, K = len(rows), max(len(r) for r in rows)
    row_of, offset, slot = torch.empty(B, dtype=torch.long), torch.empty(B, dtype=torch.long), torch.empty(B, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for s, i in enumerate(members):
            row_of[i], offset[i], slot[i] = r, start, s
            start += int(lengths[i])
    source = mask.reshape(-1).bool().nonzero().squeeze(1)  # flat real tokens, row-major
    instance = source // T
    position = source % T
    target = row_of[instance] * T + offset[instance] + position

    def scatter(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((R * T,), fill, dtype=values.dtype)
        return out.index_copy(0, target, values.reshape(-1)[source]).view(R, T)

    packed = {
        "input_ids": scatter(batch["input_ids"], 0),
        "token_type_ids": scatter(batch["token_type_ids"], 0),
        "position_ids": torch.zeros(R * T, dtype=torch.long).index_copy(0, target, position).view(R, T),
        "instance_ids": torch.zeros(R * T, dtype=torch.long).index_copy(0, target, slot[instance] + 1).view(R, T),
        "labels": scatter(batch["labels"], IGNORE_INDEX),
    }
    cls_positions = torch.full((R, K), -1, dtype=torch.long)
    nsp = torch.full((R, K), IGNORE_INDEX, dtype=torch.long)
    cls_positions[row_of, slot] = offset
    nsp[row_of, slot] = batch["next_sentence_label"].view(-1).long()
    packed["cls_positions"], packed["next_sentence_label"] = cls_positions, nsp
    return packed


def packing_ratio(batch: dict[str, torch.Tensor], packed: dict[str, torch.Tensor]) -> float:
    """Rows before / rows after packing."""
    return batch["input_ids"].shape[0] / packed["input_ids"].shape[0]
