"""BertConfig: the model's shape, with Hugging Face `config.json` field names."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bertspeed.training.atomic import write_json_atomic

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")
NEZHA = "nezha"
POSITION_EMBEDDING_TYPES = ("absolute", NEZHA)
DEFAULT_MAX_RELATIVE_POSITION = 64  # NEZHA-base/large and the MindSpore seed


def is_nezha_config(fields: dict) -> bool:
    """A config.json of NEZHA in any of its published spellings (transformers' Nezha*, Huawei's)."""
    return (fields.get("model_type") == NEZHA or fields.get("position_embedding_type") == NEZHA
            or bool(fields.get("use_relative_position")))


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder. Field names are those of Hugging Face's config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # "absolute" (BERT) or "nezha": NEZHA's relative positions clipped at max_relative_position,
    # no position embeddings (bertspeed.model.nezha).
    position_embedding_type: str = "absolute"
    max_relative_position: int = DEFAULT_MAX_RELATIVE_POSITION
    classifier_dropout: float | None = None
    # Task heads (Hugging Face names): label count and task type.
    num_labels: int = 2
    problem_type: str | None = None
    id2label: dict | None = None
    # Fields we do not model are kept so a config.json round-trips unchanged.
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size ({self.hidden_size}) is not a multiple of "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"BertConfig.position_embedding_type {self.position_embedding_type!r} is not one of "
                             f"{POSITION_EMBEDDING_TYPES}")
        if not isinstance(self.max_relative_position, int) or self.max_relative_position <= 0:
            raise ValueError("BertConfig.max_relative_position must be a positive integer, "
                             f"got {self.max_relative_position!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")

    @property
    def is_nezha(self) -> bool:
        return self.position_embedding_type == NEZHA

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, fields: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        if fields.get("model_type", "bert") not in ("bert", NEZHA):
            raise ValueError(f"config model_type is {fields['model_type']!r}, expected 'bert' or 'nezha'")
        if is_nezha_config(fields):
            fields = {k: v for k, v in fields.items() if k not in ("use_relative_position", "model_type")}
            fields["position_embedding_type"] = NEZHA
        kwargs = {k: v for k, v in fields.items() if k in known}
        if kwargs.get("id2label") is not None:
            kwargs["id2label"] = {int(k): v for k, v in kwargs["id2label"].items()}
            kwargs.setdefault("num_labels", len(kwargs["id2label"]))
        extra = {k: v for k, v in fields.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            fields = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"model config not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        if out["id2label"] is None:
            del out["id2label"]
        if out["problem_type"] is None:
            del out["problem_type"]
        if not self.is_nezha:
            del out["max_relative_position"]
        out.update(model_type=NEZHA if self.is_nezha else "bert",
                   architectures=out.get("architectures", ["BertForPreTraining"]))
        return dict(sorted(out.items()))

    def to_json_file(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    def num_parameters(self, with_heads: bool = True) -> int:
        """Parameter count of BertForPreTraining (decoder weight tied, so counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        positions = 0 if self.is_nezha else self.max_position_embeddings
        embeddings = (v + positions + self.type_vocab_size) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
        pooler = h * h + h
        heads = (h * h + h) + 2 * h + v + (2 * h + 2) if with_heads else 0
        return embeddings + self.num_hidden_layers * layer + pooler + heads

    def layer_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs of one encoder layer per token, matmuls only: projections, FFN, QK^T and AV."""
        h, i = self.hidden_size, self.intermediate_size
        return 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq_len * h

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), matmuls only."""
        return 3.0 * self.num_hidden_layers * self.layer_flops_per_token(seq_len)

    def pretraining_flops(self, seq_len: int, predictions: int) -> float:
        """Training FLOPs of one sequence of BertForPreTraining as its losses need them (3x forward, matmuls):
        every layer but the last on every token; the last layer's keys and values on every token and the rest
        at the `predictions` masked tokens and [CLS] only (BertForPreTraining.last_layer_at_loss_positions);
        the sparse MLM head's transform and vocabulary projection, the pooler and the NSP classifier."""
        h = self.hidden_size
        rows = predictions + 1
        earlier = (self.num_hidden_layers - 1) * seq_len * self.layer_flops_per_token(seq_len)
        keys_values = seq_len * 2 * 2 * h * h
        last = keys_values + rows * (self.layer_flops_per_token(seq_len) - 2 * 2 * h * h)
        head = 2 * predictions * (h * h + h * self.vocab_size)
        pooler_nsp = 2 * (h * h + 2 * h)
        return 3.0 * (earlier + last + head + pooler_nsp)


def _shape(layers: int, hidden: int, heads: int) -> dict:
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                intermediate_size=4 * hidden)


# Names of Google's BERT miniatures (Turc et al. 2019) plus base and large.
PRESETS = {
    "tiny": _shape(2, 128, 2),
    "mini": _shape(4, 256, 4),
    "small": _shape(4, 512, 8),
    "medium": _shape(8, 512, 8),
    "base": _shape(12, 768, 12),
    "large": _shape(24, 1024, 16),
}
