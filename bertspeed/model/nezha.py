"""NEZHA's functional relative positions (Wei et al. 2019, arXiv:1909.00204).

A NEZHA encoder is BERT without absolute position embeddings: every attention layer adds a fixed
sinusoid a_ij of the clipped distance j - i to the keys and to the values,

    score_ij = q_i . (k_j + a_ij) / sqrt(d),   out_i = sum_j p_ij (v_j + a_ij),

with a_ij = table[clip(j - i, -K, K) + K] and table[r] the sinusoid of index r in [0, 2K] (as in the
reference code: the index, not the signed distance, is encoded). Only 2K + 1 distinct vectors exist,
so both terms are computed against the (2K + 1, d) table and gathered, instead of the (T, T, d) tensor.
"""
from __future__ import annotations

import math
import re

import torch

NOT_HF_NOTE = ("NEZHA model: relative positions in every attention layer and no position embeddings. "
               "transformers' BertModel cannot load it (it would run with random position embeddings); "
               "load it with bertspeed (bertspeed.model.checkpoint.load_model, the finetune drivers, predict).")


def relative_table(max_relative_position: int, head_dim: int, dtype=torch.float32) -> torch.Tensor:
    """(2K + 1, head_dim) sinusoids of the indices 0..2K; even columns sin, odd columns cos."""
    position = torch.arange(2 * max_relative_position + 1, dtype=torch.float64)[:, None]
    inverse_freq = torch.exp(torch.arange(0, head_dim, 2, dtype=torch.float64) * (-math.log(10000.0) / head_dim))
    table = torch.zeros(2 * max_relative_position + 1, head_dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inverse_freq)
    table[:, 1::2] = torch.cos(position * inverse_freq)[:, : head_dim // 2]
    return table.to(dtype)


def relative_index(length: int, max_relative_position: int, device=None) -> torch.Tensor:
    """(T, T) row of `table` for each query i and key j: clip(j - i, -K, K) + K."""
    idx = torch.arange(length, device=device)
    return (idx[None, :] - idx[:, None]).clamp(-max_relative_position, max_relative_position) + max_relative_position


def relative_attention(q, k, v, key_mask, dropout_p: float, table: torch.Tensor, max_relative_position: int):
    """q, k, v (B, heads, T, D); key_mask (B, T) bool (True = attend) or None; table (2K + 1, D)."""
    B, heads, T, D = q.shape
    index = relative_index(T, max_relative_position, q.device).expand(B, heads, T, T)
    table = table.to(q.dtype)
    scores = q @ k.transpose(-2, -1) + torch.gather(q @ table.T, -1, index)  # (B, heads, T, T)
    scores = scores / math.sqrt(D)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, dropout_p)
    per_distance = torch.zeros(B, heads, T, table.shape[0], dtype=probs.dtype, device=probs.device)
    per_distance = per_distance.scatter_add(-1, index, probs)  # probability mass per clipped distance
    return probs @ v + per_distance @ table


# Published NEZHA PyTorch checkpoints: transformers' Nezha* classes (prefix "nezha.") and Huawei's
# NEZHA-PyTorch (prefix "bert."); both may carry the fixed sinusoid tables, which we recompute.
_PREFIX = re.compile(r"^nezha\.")
_FIXED_TABLE = re.compile(r"\.attention\.self\.relative_positions_(?:encoding|embeddings)\.")


def rename_published_keys(state: dict) -> tuple[dict, list[str]]:
    """Our key names for a published NEZHA state dict, and the fixed-table keys that were dropped."""
    renamed, dropped = {}, []
    for key, tensor in state.items():
        if _FIXED_TABLE.search(key):
            dropped.append(key)
            continue
        renamed[_PREFIX.sub("bert.", key)] = tensor
    return renamed, dropped
