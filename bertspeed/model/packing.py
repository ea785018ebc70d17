"""Sequence packing: the sequences of a padded batch laid into as few rows of a given length as fit
(first-fit decreasing), each token keeping its position within its own sequence.

`PackLayout` maps the real tokens of a (B, T) batch (real tokens first in every row) to their places in (R, C)
packed rows and back: `scatter` packs a per-token tensor, `gather` unpacks the encoder's output to the batch's
padded layout (zeros at padding), so every task head runs unchanged on each sequence's own tokens.
`packed_inputs` gives the encoder's inputs: token and token-type ids, per-sequence position ids, and instance
ids (1, 2, ... per sequence in its row, 0 = padding). Used by pretraining (`bertspeed.pretrain.packing`, which
adds MLM labels and NSP) and by finetuning (`BertModel` with `set_pack`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def prefix_lengths(attention_mask: torch.Tensor, purpose: str) -> torch.Tensor:
    """(B, T) mask -> (B,) lengths; every row must be ones then zeros (real tokens first)."""
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
        raise ValueError(f"{purpose} needs attention_mask rows of ones then zeros (real tokens first)")
    return lengths


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


@dataclass
class PackLayout:
    batch_shape: tuple[int, int]  # (B, T) of the padded batch
    capacity: int  # C, tokens per packed row
    rows: list[list[int]]  # the sequences of each packed row, in order
    lengths: list[int]  # (B,) real tokens per sequence
    row_of: torch.Tensor  # (B,) packed row of each sequence
    offset: torch.Tensor  # (B,) where it starts in that row
    slot: torch.Tensor  # (B,) its place among the row's sequences (0, 1, ...)
    source: torch.Tensor  # flat indices of the real tokens into B * T (row-major)
    target: torch.Tensor  # their flat indices into R * C
    positions: torch.Tensor  # each real token's position within its sequence

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def scatter(self, values: torch.Tensor, fill) -> torch.Tensor:
        """(B, T) per-token values -> (R, C), `fill` where no token is."""
        return self.place(values.reshape(-1)[self.source], fill)

    def place(self, values: torch.Tensor, fill=0) -> torch.Tensor:
        """(N,) values of the real tokens (row-major) -> (R, C), `fill` where no token is."""
        out = torch.full((self.num_rows * self.capacity,), fill, dtype=values.dtype, device=values.device)
        return out.index_copy(0, self.target, values).view(self.num_rows, self.capacity)

    def gather(self, packed: torch.Tensor) -> torch.Tensor:
        """(R, C, ...) -> (B, T, ...) in the batch's layout, zeros at padding."""
        B, T = self.batch_shape
        flat = packed.reshape(self.num_rows * self.capacity, *packed.shape[2:])
        out = flat.new_zeros(B * T, *packed.shape[2:]).index_copy(0, self.source, flat[self.target])
        return out.view(B, T, *packed.shape[2:])


def plan_packing(attention_mask: torch.Tensor, capacity: int | None = None) -> PackLayout:
    """The packing of a (B, T) batch into rows of `capacity` tokens (default T)."""
    B, T = attention_mask.shape
    capacity = T if capacity is None else capacity
    lengths = prefix_lengths(attention_mask, "packing").cpu()
    rows = assign_rows(lengths.tolist(), capacity)
    row_of, offset, slot = (torch.empty(B, dtype=torch.long) for _ in range(3))
    for r, members in enumerate(rows):
        start = 0
        for s, i in enumerate(members):
            row_of[i], offset[i], slot[i] = r, start, s
            start += int(lengths[i])
    device = attention_mask.device
    source = attention_mask.reshape(-1).bool().nonzero().squeeze(1)  # flat real tokens, row-major
    sequence, position = source // T, source % T
    row_of, offset, slot = row_of.to(device), offset.to(device), slot.to(device)
    target = row_of[sequence] * capacity + offset[sequence] + position
    return PackLayout((B, T), capacity, rows, lengths.tolist(), row_of, offset, slot, source, target, position)


def packed_inputs(layout: PackLayout, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> dict:
    """The encoder's inputs for the packed rows (module docstring), each (R, C)."""
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    sequence = layout.source // layout.batch_shape[1]
    return {"input_ids": layout.scatter(input_ids, 0), "token_type_ids": layout.scatter(token_type_ids, 0),
            "position_ids": layout.place(layout.positions), "instance_ids": layout.place(layout.slot[sequence] + 1)}
