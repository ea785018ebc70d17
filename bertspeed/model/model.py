"""BERT encoder and its pretraining heads.

Module attribute names mirror Hugging Face transformers' BERT exactly, so
`state_dict()` keys are identical with no mapping layer (pinned by a test).
Shapes: B = batch, T = sequence length, H = hidden size, V = vocab size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bertspeed.model.config import BertConfig
from bertspeed.model.cpu_linear import Linear, linear
from bertspeed.model.layers import LayerNorm, attention
from bertspeed.model.mlm_loss import linear_cross_entropy
from bertspeed.model.nezha import relative_table

IGNORE_INDEX = -100  # label value that takes no part in a loss (as in transformers)


def measured_by_hooks(module: nn.Module) -> bool:
    """Marked by an optimizer whose hooks measure this module's inputs and output gradients on every call
    (training/thor.py sets `measured_by_hooks`): it must then run as its own module call on every token.
    Other hooks (ZeRO-3's parameter gathering) do not keep the fused QKV or the sparse last layer away."""
    return getattr(module, "measured_by_hooks", False)


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return {"relu": F.relu, "tanh": torch.tanh}[name]


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        # NEZHA has no absolute positions: they enter every attention layer instead.
        self.position_embeddings = (None if config.is_nezha
                                    else nn.Embedding(config.max_position_embeddings, config.hidden_size))
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        """input_ids (B, T) -> (B, T, H); position_ids (the shape of input_ids, any shape) default to 0..T-1
        in every row (unpad.py passes each token's position within its own sequence)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is None:
            if position_ids is not None:
                raise ValueError("position ids need absolute position embeddings (NEZHA has none)")
            return self.dropout(self.LayerNorm(x))
        limit = self.position_embeddings.num_embeddings
        if position_ids is None:
            if input_ids.shape[1] > limit:
                raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings {limit}")
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
        elif position_ids.numel() and int(position_ids.max()) >= limit:
            raise ValueError(f"position {int(position_ids.max())} exceeds max_position_embeddings {limit}")
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.max_relative_position = config.max_relative_position if config.is_nezha else None
        if config.is_nezha:  # fixed sinusoids, recomputed rather than saved
            table = relative_table(config.max_relative_position, config.head_dim)
            self.register_buffer("relative_table", table, persistent=False)

    def qkv(self, x, queries=None):
        """Q, K, V of (..., H) tokens as (..., heads, H / heads) views. One GEMM (3x wider, faster than three
        on CPU); the weights keep HF's names. With `queries` (other rows of hidden states), Q is theirs and
        K, V are x's. Projections measured by hooks (THOR) are called one by one, as modules."""
        H = x.shape[-1]

        def heads(t, n):
            return t.view(*t.shape[:-1], n, self.num_heads, H // self.num_heads).unbind(-3)
        projections = (self.query, self.key, self.value)
        if any(measured_by_hooks(m) for m in projections):
            q = self.query(x if queries is None else queries)
            return heads(q, 1)[0], heads(self.key(x), 1)[0], heads(self.value(x), 1)[0]
        fused = projections if queries is None else projections[1:]
        weight = torch.cat([m.weight for m in fused])  # (3H or 2H, H)
        bias = torch.cat([m.bias for m in fused])
        if queries is None:
            return heads(linear(x, weight, bias), 3)
        return (heads(self.query(queries), 1)[0], *heads(linear(x, weight, bias), 2))

    def forward(self, x, key_mask, attend=None, queries=None):
        """x (B, T, H) -> context (B, T, H); with `queries` (B, Q, H), the hidden states of some of the tokens
        attending to all of x: context (B, Q, H). `attend(q, k, v, dropout_p)` replaces the attention for
        another layout of the tokens (unpad.py: x (N, H), q/k/v (N, heads, H / heads) -> (N, H))."""
        dropout_p = self.dropout_p if self.training else 0.0
        if attend is not None:
            return attend(*self.qkv(x), dropout_p)
        B, H = x.shape[0], x.shape[-1]
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x, queries))  # (B, heads, T or Q, H / heads) views
        relative = None if self.max_relative_position is None else (self.relative_table, self.max_relative_position)
        context = attention(q, k, v, key_mask, dropout_p, relative)  # (B, heads, T or Q, H / heads)
        return context.transpose(1, 2).reshape(B, q.shape[2], H)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden)), residual=residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x, key_mask, attend=None, queries=None):
        return self.output(self.self(x, key_mask, attend, queries), x if queries is None else queries)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x):
        return self.act(self.dense(x))


class BertOutput(BertSelfOutput):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.dense = Linear(config.intermediate_size, config.hidden_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x, key_mask, attend=None, queries=None):
        """`queries` (B, Q, H): the layer's output at those tokens only (B, Q, H), attending to all of x."""
        attended = self.attention(x, key_mask, attend, queries)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x, key_mask, output_hidden_states=False, attend=None, last_positions=None,
                last_layout=None):
        """`attend`: the attention of another token layout (BertSelfAttention.forward), else masked SDPA.
        `last_positions` (B, Q): the last layer runs at those positions only (its keys and values still come
        from every token) and the output is (B, Q, H). `last_layout(x) -> (x, key_mask)`: the last layer's input
        in the (B, T, H) layout `last_positions` index and its mask ((B, T), or (B, Q, T) per query), in place of
        `attend` (unpad.py: unpadded or packed tokens back in the batch's layout, or packed rows as they are)."""
        all_hidden = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layer):
            queries = None
            if last_positions is not None and i == len(self.layer) - 1:
                if last_layout is not None:
                    (x, key_mask), attend = last_layout(x), None
                queries = at_positions(x, last_positions)
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, key_mask, attend, queries, use_reentrant=False)
            else:
                x = layer(x, key_mask, attend, queries)
            if output_hidden_states:
                all_hidden.append(x)
        return x, (tuple(all_hidden) if output_hidden_states else None)


def at_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H) at positions (B, Q) -> (B, Q, H)."""
    return hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H) from [CLS]


@dataclass
class BertModelOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor | None  # (B, H)
    hidden_states: tuple | None = None  # embeddings + every layer, when asked for


class BertPreTrainedModel(nn.Module):
    """Weight initialisation shared by every BERT model (as in BERT and transformers)."""

    def init_weights(self):
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, BertLMPredictionHead):
                nn.init.zeros_(module.bias)

    def set_gradient_checkpointing(self, enabled: bool = True):
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = enabled

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


class BertModel(BertPreTrainedModel):
    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.unpad = False  # real tokens only (unpad.set_unpad, --unpad)
        self.pack_length = None  # sequences packed into rows of this many tokens (unpad.set_pack, --pack)
        self.init_weights()

    @property
    def skips_padding(self) -> bool:
        """No padding token is computed (--unpad, --pack): the heads leave padding out of a softmax over tokens."""
        return self.unpad or self.pack_length is not None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                last_positions=None):
        """last_positions (B, Q), position 0 first in every row: only those positions of the output are wanted.
        last_hidden_state is then (B, Q, H), the full output gathered there, and the last layer runs at those
        positions only where it can (last_layer_skips_tokens). The pooler pools position 0 either way."""
        skips = last_positions is not None and self.last_layer_skips_tokens(output_hidden_states)
        # skipping: x comes out (B, Q, H), position 0 first, so the pooler pools [CLS] either way
        queries_at = last_positions if skips else None
        if self.skips_padding and attention_mask is not None and not output_hidden_states:
            from bertspeed.model import unpad
            forward = unpad.unpadded_bert_forward if self.unpad else unpad.packed_bert_forward
            out = forward(self, input_ids, attention_mask, token_type_ids, queries_at)
        else:
            x = self.embeddings(input_ids, token_type_ids)
            x, all_hidden = self.encoder(x, key_mask_of(attention_mask), output_hidden_states,
                                         last_positions=queries_at)
            out = BertModelOutput(x, self.pooler(x) if self.pooler is not None else None, all_hidden)
        return out if skips else gathered(out, last_positions)

    def last_layer_skips_tokens(self, output_hidden_states: bool = False) -> bool:
        """Whether `last_positions` runs the last layer at those positions only: not with every layer's output
        asked for, not for NEZHA (relative positions between all tokens), not when hooks measure the last layer
        (THOR: every token). Unpadded and packed forwards run it in the batch's layout (unpad.py)."""
        if output_hidden_states or self.config.is_nezha:
            return False
        return not any(measured_by_hooks(m) for m in self.encoder.layer[-1].modules())


def key_mask_of(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The (B, T) attention mask as attention's key mask (True = a real token), or None where every token is real.
    Eager mode skips an all-ones mask (SDPA is faster without one); under torch.compile the mask is always kept,
    because a branch on tensor values would break the graph. Results are the same."""
    if attention_mask is None or (not torch.compiler.is_compiling() and bool(attention_mask.all())):
        return None
    return attention_mask.bool()


def gathered(out: BertModelOutput, positions: torch.Tensor | None) -> BertModelOutput:
    """`out` with last_hidden_state at `positions` (B, Q) only (None: all)."""
    if positions is None:
        return out
    return BertModelOutput(at_positions(out.last_hidden_state, positions), out.pooler_output, out.hidden_states)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.bias = self.bias  # one tensor under both names, as in transformers

    def forward(self, x):
        return self.decoder(self.transform(x))

    def loss(self, x, labels, fused: bool):
        """(logits, mean cross-entropy) of the hidden states `x` (M, H) against `labels` (M,). With `fused`
        and a gradient to compute, the decoder and the loss run tile by tile (mlm_loss.py, faster) and the
        logits are not returned (None)."""
        if fused and torch.is_grad_enabled() and x.shape[0] > 0:
            return None, linear_cross_entropy(self.transform(x), self.decoder.weight, self.bias, labels)
        logits = self(x)  # (M, V)
        return logits, F.cross_entropy(logits.float(), labels)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = Linear(config.hidden_size, 2)


@dataclass
class PreTrainingOutput:
    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    # (B, T, V) without labels; with labels only the masked positions, (M, V)
    # in row-major order of `labels != -100`; None when training with the fused MLM loss.
    prediction_logits: torch.Tensor | None
    seq_relationship_logits: torch.Tensor  # (B, 2)
    mlm_labels: torch.Tensor | None = None  # (M,) labels of the rows of prediction_logits
    hidden_states: tuple | None = None


class BertForPreTraining(BertPreTrainedModel):
    """BERT with its masked-LM and next-sentence heads; decoder tied to word embeddings."""

    # In training (with labels and gradients) the MLM decoder and its loss run fused (mlm_loss.py) and
    # prediction_logits is None; set False to get the logits (slower). Eval always returns them.
    fused_mlm_loss = True
    # With labels, the last encoder layer runs only where the losses look ([CLS] and the labelled tokens; its
    # keys and values still from every token; BertModel.last_layer_skips_tokens says where it cannot): the
    # same losses and gradients, about 85 % of one layer's FLOPs saved at 15 % masking. False: every token.
    last_layer_at_loss_positions = True

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.init_weights()
        self.tie_weights()

    def tie_weights(self):
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                next_sentence_label=None, output_hidden_states=False, packed=None):
        if packed is not None:  # rows of several instances (bertspeed.pretrain.packing, --pack)
            from bertspeed.model.unpad import packed_pretraining_forward
            return packed_pretraining_forward(self, packed)
        positions = None
        if labels is not None and self.last_layer_at_loss_positions:
            positions, labels = loss_positions(labels)
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states, last_positions=positions)
        seq_logits = self.cls.seq_relationship(out.pooler_output)
        if labels is None:
            logits, mlm_labels, mlm_loss = self.cls.predictions(out.last_hidden_state), None, None
        else:
            # Sparse prediction: the vocab projection runs on masked positions only.
            selected = labels != IGNORE_INDEX
            mlm_labels = labels[selected]
            logits, mlm_loss = self.cls.predictions.loss(out.last_hidden_state[selected], mlm_labels,
                                                          fused=self.training and self.fused_mlm_loss)
        nsp_loss = None
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(seq_logits.float(), next_sentence_label.view(-1))
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(losses) if losses else None
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, logits, seq_logits, mlm_labels, out.hidden_states)


def loss_positions(labels: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) labels -> positions (B, Q) of [CLS] (position 0; or the True positions of `keep`) and every labelled
    token of each row, in order, and their labels (B, Q): a row with fewer fills up with position 0 labelled
    IGNORE_INDEX. The labelled rows of the result are those of `labels`, in the same order."""
    if keep is None:
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, 0] = True
    keep = keep | (labels != IGNORE_INDEX)
    counts = keep.sum(1)
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices  # kept positions first, in order
    filled = torch.arange(int(counts.max()), device=labels.device) < counts[:, None]  # (B, Q)
    positions = order[:, :filled.shape[1]].masked_fill(~filled, 0)
    return positions, labels.gather(1, positions).masked_fill(~filled, IGNORE_INDEX)

