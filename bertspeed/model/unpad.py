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

Both use the padded model's weights and modules (same state dict); dropout draws differ, results in eval mode
equal the padded model's to fp32 rounding. NEZHA (relative positions) is refused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bertspeed.model.layers import attention
from bertspeed.model.model import IGNORE_INDEX, BertModel, BertModelOutput, PreTrainingOutput, loss_positions
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


def run_encoder(bert, x, attend):
    """The encoder's layers on tokens x of any layout, attention by `attend` (BertSelfAttention.forward)."""
    return bert.encoder(x, None, attend=attend)[0]


def encode_unpadded(bert, input_ids, attention_mask, token_type_ids=None):
    """Real tokens only: hidden (N, H), their flat indices into B*T, the sequence lengths."""
    index, positions, lengths = flat_indices(attention_mask)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = bert.embeddings(input_ids.reshape(-1)[index], token_type_ids.reshape(-1)[index], positions)
    x = run_encoder(bert, x, lambda q, k, v, p: varlen_attention(q, k, v, lengths, p))
    return x, index, lengths


def unpadded_bert_forward(bert, input_ids, attention_mask, token_type_ids=None) -> BertModelOutput:
    """BertModel.forward without padding FLOPs; last_hidden_state re-padded (zeros at padding)."""
    hidden, index, _ = encode_unpadded(bert, input_ids, attention_mask, token_type_ids)
    B, T = input_ids.shape
    padded = hidden.new_zeros(B * T, hidden.shape[-1]).index_copy(0, index, hidden).view(B, T, -1)
    pooled = bert.pooler(padded) if bert.pooler is not None else None
    return BertModelOutput(padded, pooled, None)


def segment_lengths(instance_ids: torch.Tensor) -> list[int]:
    """(R, C) instance ids (0 = padding) -> lengths of the runs of one instance, or of a row's padding, with the
    rows laid end to end."""
    R, C = instance_ids.shape
    key = torch.arange(R, device=instance_ids.device)[:, None] * (C + 1) + instance_ids
    return torch.unique_consecutive(key.reshape(-1), return_counts=True)[1].tolist()


def encode_packed(bert, packed: dict, last_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Packed rows (`bertspeed.model.packing.packed_inputs`) -> hidden (R, C, H). Block-diagonal attention: each
    instance attends to its own tokens only (varlen attention over the rows' runs; a row's padding to itself).
    With `last_positions` (R, Q) of instance tokens, the last layer runs at those tokens only, each attending to
    its instance's tokens (a masked SDPA call), and the result is (R, Q, H)."""
    x = bert.embeddings(packed["input_ids"], packed["token_type_ids"], packed["position_ids"])
    R, C = packed["input_ids"].shape
    lengths = segment_lengths(packed["instance_ids"])

    def attend(q, k, v, dropout_p):  # (R, C, heads, D) each
        q, k, v = (t.reshape(R * C, *t.shape[2:]) for t in (q, k, v))
        return varlen_attention(q, k, v, lengths, dropout_p).view(R, C, -1)
    last_key_mask = None
    if last_positions is not None:
        ids = packed["instance_ids"]
        last_key_mask = ids.gather(1, last_positions)[:, :, None] == ids[:, None, :]  # (R, Q, C)
    return bert.encoder(x, None, attend=attend, last_positions=last_positions, last_key_mask=last_key_mask)[0]


def packed_bert_forward(bert, input_ids, attention_mask, token_type_ids=None) -> BertModelOutput:
    """BertModel.forward on the batch packed into rows of bert.pack_length tokens; last_hidden_state unpacked to
    the batch's layout (zeros at padding), so the pooler and every head see each sequence's own tokens."""
    layout = plan_packing(attention_mask, bert.pack_length)
    hidden = layout.gather(encode_packed(bert, packed_inputs(layout, input_ids, token_type_ids)))
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
    hidden = encode_packed(model.bert, packed, positions)
    pooled = model.bert.pooler.dense(hidden[rows, cls]).tanh()  # (instances, H)
    seq_logits = model.cls.seq_relationship(pooled)
    selected = labels != IGNORE_INDEX
    mlm_labels = labels[selected]
    logits, mlm_loss = model.cls.predictions.loss(hidden[selected], mlm_labels,
                                                  fused=model.training and model.fused_mlm_loss)
    nsp_loss = F.cross_entropy(seq_logits.float(), packed["next_sentence_label"][has])
    return PreTrainingOutput(mlm_loss + nsp_loss, mlm_loss, nsp_loss, logits, seq_logits, mlm_labels)
