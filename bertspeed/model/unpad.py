"""Unpadded (varlen) and packed BERT forwards: the GEMMs, LayerNorms and GELUs run on the real tokens only
(unpadded) or on rows nearly full of them (packed).

Unpadded: the real tokens of a padded batch (attention_mask a prefix of ones in every row) are flattened to
(N, H) with their sequence lengths, every dense op runs on those N rows, and attention runs per sequence (one
SDPA call per run of equal-length sequences, no mask). `set_unpad(model)` makes every BertModel inside `model`
do this in its forward; it re-pads its output to (B, T, H) (zeros at padding) so every head works unchanged.

Packed: several sequences share a row (`bertspeed.model.packing`, first-fit decreasing), with per-sequence
position and token type ids; attention is block-diagonal (each sequence attends to its own tokens: varlen
attention over the runs of the rows). Pretraining packs each micro-batch itself (`bertspeed.pretrain.packing`,
NSP from each instance's own [CLS]); `set_pack(model, row_length)` makes every BertModel pack its batch into
rows of `row_length` and unpack its output to the batch's layout, so every finetuning head runs on each
sequence's own tokens ([CLS] pooled per sequence, QA softmax over its tokens, a label per token).

Where only some positions of the output are wanted (pretraining's [CLS] and masked tokens, a classifier's [CLS]),
the last layer runs at those tokens only, as in the padded model: back in the batch's layout (unpadded, packed
finetuning), or in the packed rows with a per-query mask (packed pretraining: each token attends to its instance).

Both use the padded model's weights and modules (same state dict); dropout draws differ, results in eval mode
equal the padded model's to fp32 rounding. NEZHA (relative positions) is refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bertspeed.model.layers import attention
from bertspeed.model.model import (
    IGNORE_INDEX,
    BertModel,
    BertModelOutput,
    PreTrainingOutput,
    key_mask_of,
    loss_positions,
)
from bertspeed.model.packing import packed_inputs, plan_packing, prefix_lengths


def set_unpad(model: torch.nn.Module, enabled: bool = True) -> None:
    """Make every BertModel in `model` run unpadded (enabled) or padded."""
    for bert in _berts(model, "--unpad", enabled):
        check_one_layout(enabled, bert.pack_length is not None)
        bert.unpad = enabled


def set_pack(model: torch.nn.Module, row_length: int | None) -> None:
    """Make every BertModel in `model` pack each batch's sequences into rows of `row_length` tokens (None: off)."""
    for bert in _berts(model, "--pack", row_length is not None):
        check_one_layout(bert.unpad, row_length is not None)
        bert.pack_length = row_length


def _berts(model: torch.nn.Module, flag: str, enabled: bool) -> list[BertModel]:
    berts = [m for m in model.modules() if isinstance(m, BertModel)]
    if enabled and any(bert.config.is_nezha for bert in berts):
        raise ValueError(f"{flag}: NEZHA's relative attention has no unpadded or packed path")
    return berts


def check_one_layout(unpad: bool, pack: bool) -> None:
    """--unpad and --pack exclude each other (the drivers' settings and set_unpad/set_pack check it)."""
    if unpad and pack:
        raise ValueError("give only one of --unpad and --pack (packed rows are already free of padding FLOPs)")


def flat_indices(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(B, T) mask of prefix ones -> flat indices of the real tokens into B*T, position ids, lengths."""
    lengths = prefix_lengths(attention_mask, "unpadding")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    index = attention_mask.reshape(-1).bool().nonzero().squeeze(1)
    return index, positions.expand_as(attention_mask).reshape(-1)[index], lengths.tolist()


def length_runs(lengths: list[int]) -> list[tuple[int, int]]:
    """Runs of equal consecutive lengths: (length, count) pairs."""
    runs: list[tuple[int, int]] = []
    for L in lengths:
        if runs and runs[-1][0] == L:
            runs[-1] = (L, runs[-1][1] + 1)
        else:
            runs.append((L, 1))
    return runs


def varlen_attention(q, k, v, lengths: list[int], dropout_p: float):
    """q, k, v (N, heads, D) of sequences laid end to end -> context (N, heads * D); each sequence attends
    to itself only; a run of equal lengths is one batched call of the padded model's attention op (SDPA, or the
    fused kernels, fp32 for bf16 training on CPU). torch.split (not slicing) keeps the backward one concatenation
    instead of a full-size zero gradient per sequence."""
    runs = [(L, n) for L, n in length_runs(lengths) if L]
    sizes = [L * n for L, n in runs]
    outputs = []
    for (L, n), qs, ks, vs in zip(runs, q.split(sizes), k.split(sizes), v.split(sizes)):
        qs, ks, vs = (t.view(n, L, *t.shape[1:]).transpose(1, 2) for t in (qs, ks, vs))  # (n, heads, L, D)
        context = attention(qs, ks, vs, None, dropout_p)  # the padded model's attention op, unmasked
        outputs.append(context.transpose(1, 2).reshape(n * L, -1))
    return torch.cat(outputs)


def unpadded_bert_forward(bert, input_ids, attention_mask, token_type_ids=None,
                          last_positions=None) -> BertModelOutput:
    """BertModel.forward without padding FLOPs; last_hidden_state re-padded (zeros at padding). With
    `last_positions` (B, Q), the last layer runs re-padded at those positions only; the output is (B, Q, H)."""
    index, positions, lengths = flat_indices(attention_mask)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    B, T = input_ids.shape

    def repad(hidden):
        return hidden.new_zeros(B * T, hidden.shape[-1]).index_copy(0, index, hidden).view(B, T, -1)
    x = bert.embeddings(input_ids.reshape(-1)[index], token_type_ids.reshape(-1)[index], positions)
    hidden = bert.encoder(x, None, attend=lambda q, k, v, p: varlen_attention(q, k, v, lengths, p),
                          last_positions=last_positions,
                          last_layout=lambda h: (repad(h), key_mask_of(attention_mask)))[0]
    hidden = repad(hidden) if last_positions is None else hidden
    pooled = bert.pooler(hidden) if bert.pooler is not None else None
    return BertModelOutput(hidden, pooled, None)


def segment_lengths(instance_ids: torch.Tensor) -> list[int]:
    """(R, C) instance ids (0 = padding) -> lengths of the runs of one instance, or of a row's padding, with the
    rows laid end to end."""
    R, C = instance_ids.shape
    key = torch.arange(R, device=instance_ids.device)[:, None] * (C + 1) + instance_ids
    return torch.unique_consecutive(key.reshape(-1), return_counts=True)[1].tolist()


def encode_packed(bert, packed: dict, last_positions=None, last_layout=None) -> torch.Tensor:
    """Packed rows (`bertspeed.model.packing.packed_inputs`) -> hidden (R, C, H). Block-diagonal attention: each
    instance attends to its own tokens only (varlen attention over the rows' runs; a row's padding to itself).
    `last_positions`, `last_layout`: the last layer at some tokens only (BertEncoder.forward)."""
    x = bert.embeddings(packed["input_ids"], packed["token_type_ids"], packed["position_ids"])
    R, C = packed["input_ids"].shape
    lengths = segment_lengths(packed["instance_ids"])

    def attend(q, k, v, dropout_p):  # (R, C, heads, D) each
        q, k, v = (t.reshape(R * C, *t.shape[2:]) for t in (q, k, v))
        return varlen_attention(q, k, v, lengths, dropout_p).view(R, C, -1)
    return bert.encoder(x, None, attend=attend, last_positions=last_positions, last_layout=last_layout)[0]


def packed_bert_forward(bert, input_ids, attention_mask, token_type_ids=None, last_positions=None) -> BertModelOutput:
    """BertModel.forward on the batch packed into rows of bert.pack_length tokens; last_hidden_state unpacked to
    the batch's layout (zeros at padding), so the pooler and every head see each sequence's own tokens. With
    `last_positions` (B, Q), the last layer runs unpacked at those positions only; the output is (B, Q, H)."""
    layout = plan_packing(attention_mask, bert.pack_length)
    hidden = encode_packed(bert, packed_inputs(layout, input_ids, token_type_ids), last_positions,
                           lambda h: (layout.gather(h), key_mask_of(attention_mask)))
    hidden = layout.gather(hidden) if last_positions is None else hidden
    pooled = bert.pooler(hidden) if bert.pooler is not None else None
    return BertModelOutput(hidden, pooled, None)


def packed_pretraining_forward(model, packed: dict) -> PreTrainingOutput:
    """BertForPreTraining on packed rows: the padded model's MLM and NSP losses over the same instances. As in the
    padded model, the last layer runs only at each instance's [CLS] and labelled tokens where it can."""
    cls = packed["cls_positions"]  # (R, K) positions of each instance's [CLS], -1 = none
    has = cls >= 0
    rows = torch.arange(cls.shape[0], device=cls.device)[:, None].expand_as(cls)[has]
    cls, labels = cls[has], packed["labels"]
    positions = None
    if model.last_layer_at_loss_positions and model.bert.last_layer_skips_tokens():
        keep = labels != IGNORE_INDEX
        keep[rows, cls] = True
        positions, labels = loss_positions(labels, keep)
        cls = (keep.cumsum(1) - 1)[rows, cls]  # each [CLS]'s column among the kept positions
    last_layout = None
    if positions is not None:  # packed rows as they are, each query attending to its own instance's tokens
        ids = packed["instance_ids"]
        own_instance = ids.gather(1, positions)[:, :, None] == ids[:, None, :]  # (R, Q, C)

        def last_layout(hidden):
            return hidden, own_instance
    hidden = encode_packed(model.bert, packed, positions, last_layout)
    pooled = model.bert.pooler.dense(hidden[rows, cls]).tanh()  # (instances, H)
    seq_logits = model.cls.seq_relationship(pooled)
    selected = labels != IGNORE_INDEX
    mlm_labels = labels[selected]
    logits, mlm_loss = model.cls.predictions.loss(hidden[selected], mlm_labels,
                                                  fused=model.training and model.fused_mlm_loss)
    nsp_loss = F.cross_entropy(seq_logits.float(), packed["next_sentence_label"][has])
    return PreTrainingOutput(mlm_loss + nsp_loss, mlm_loss, nsp_loss, logits, seq_logits, mlm_labels)
