"""Sequence packing of pretraining micro-batches (--pack): the instances of one micro-batch, as
`bertspeed.pretrain.data` yields it, laid into as few rows of the same length as fit (first-fit decreasing,
`bertspeed.model.packing`).

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
from bertspeed.model.packing import packed_inputs, plan_packing


def pack_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A padded micro-batch (input_ids, attention_mask, token_type_ids, labels, next_sentence_label; B x T,
    real tokens first in every row) -> a packed batch (module docstring) of rows of the same length T."""
    layout = plan_packing(batch["attention_mask"])
    packed = packed_inputs(layout, batch["input_ids"], batch["token_type_ids"])
    packed["labels"] = layout.scatter(batch["labels"], IGNORE_INDEX)
    R, K = layout.num_rows, max(len(r) for r in layout.rows)
    cls_positions = torch.full((R, K), -1, dtype=torch.long)
    nsp = torch.full((R, K), IGNORE_INDEX, dtype=torch.long)
    cls_positions[layout.row_of, layout.slot] = layout.offset
    nsp[layout.row_of, layout.slot] = batch["next_sentence_label"].view(-1).long()
    packed["cls_positions"], packed["next_sentence_label"] = cls_positions, nsp
    return packed


def packing_ratio(batch: dict[str, torch.Tensor], packed: dict[str, torch.Tensor]) -> float:
    """Rows before / rows after packing."""
    return batch["input_ids"].shape[0] / packed["input_ids"].shape[0]
