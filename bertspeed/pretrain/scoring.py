"""Held-out scores of a pretraining model, shared by the training loop's evaluation and `bertspeed evaluate`:
MLM loss and accuracy, accuracy at the positions whose input is [MASK] (the others can copy the visible
token), NSP loss and accuracy; summed over the batches of every rank, then divided."""
from __future__ import annotations

import torch
import torch.distributed as dist

from bertspeed.model.model import IGNORE_INDEX

# mlm loss*n, mlm correct, mlm n, nsp loss*n, nsp correct, nsp n, correct at [MASK], n at [MASK]
NUM_SUMS = 8


@torch.no_grad()
def score_sums(forward, batches, mask_id: int | None, device) -> torch.Tensor:
    """The 8 sums of this rank's batches; `forward(**batch)` returns a PreTrainingOutput."""
    sums = torch.zeros(NUM_SUMS, dtype=torch.float64)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = forward(**batch)
        n_mlm, n_nsp = out.mlm_labels.numel(), batch["next_sentence_label"].numel()
        hits = out.prediction_logits.argmax(-1) == out.mlm_labels
        inputs = batch["input_ids"][batch["labels"] != IGNORE_INDEX]  # aligned with out.mlm_labels
        at_mask = inputs == (-1 if mask_id is None else mask_id)  # no [MASK] id: all False
        nsp_correct = (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum()
        sums += torch.tensor([out.mlm_loss.item() * n_mlm, hits.sum().item(), n_mlm,
                              out.nsp_loss.item() * n_nsp, nsp_correct.item(), n_nsp,
                              (hits & at_mask).sum().item(), at_mask.sum().item()], dtype=torch.float64)
    return sums


def all_ranks(sums: torch.Tensor, device) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
    return sums.cpu()


def results_of(sums: torch.Tensor, prefix: str = "eval/") -> dict:
    """Scores from the sums of all ranks; {} when no masked position was seen."""
    if sums[2] == 0:
        return {}
    results = {"mlm_loss": sums[0] / sums[2], "mlm_acc": sums[1] / sums[2], "nsp_loss": sums[3] / sums[5],
               "nsp_acc": sums[4] / sums[5], "loss": sums[0] / sums[2] + sums[3] / sums[5]}
    if sums[7] > 0:
        results["mlm_acc_at_mask"] = sums[6] / sums[7]
    return {f"{prefix}{k}": float(v) for k, v in results.items()}
