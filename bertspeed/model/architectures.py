"""The one table from architecture name (config.json's `architectures`) to model class, and the check that a
checkpoint's heads fit the class it is loaded into.

The class comes from config.json's `architectures` when it names one (our drivers and `save_pretrained` write
it from the class); otherwise it is guessed from the checkpoint's keys. A checkpoint whose head keys do not fit
the chosen class (CRF keys into a model without a CRF, a token-level classifier without the pooler a sequence
classifier needs, MLM heads into a bare encoder) is a CheckpointError naming the keys.
"""
from __future__ import annotations

from bertspeed.model.checkpoint import (
    ENCODER_PREFIX,
    TIED_KEYS,
    CheckpointError,
    is_encoder_key,
    load_weights,
    normalize_keys,
)
from bertspeed.model.config import BertConfig
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bertspeed.model.model import BertForPreTraining, BertModel

ARCHITECTURES = {cls.__name__: cls for cls in (
    BertModel, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertCRFForTokenClassification)}
# The finetuned task models (what finetune/predict.py serves).
TASK_ARCHITECTURES = {name: ARCHITECTURES[name] for name in (
    "BertForQuestionAnswering", "BertForSequenceClassification", "BertForTokenClassification",
    "BertCRFForTokenClassification")}


def architecture_name(config: BertConfig) -> str | None:
    """The first name in config.json's `architectures`, or None without one."""
    names = config.extra.get("architectures") or []
    return names[0] if names else None


def class_named(name: str, source: str):
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{source}: config.json's architectures {name!r} is not one we can build "
                              f"({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def _has_head(keys, prefix: str) -> bool:
    return any(k.removeprefix(ENCODER_PREFIX).startswith(prefix) for k in keys)


def class_from_keys(keys):
    """The model whose heads the checkpoint's keys suggest (for a config.json without `architectures`)."""
    if _has_head(keys, "cls.predictions"):
        return BertForPreTraining
    if _has_head(keys, "qa_outputs."):
        return BertForQuestionAnswering
    if _has_head(keys, "crf."):
        return BertCRFForTokenClassification
    if _has_head(keys, "classifier."):  # a sequence classifier has a pooler, a token classifier has none
        return BertForSequenceClassification if _has_head(keys, "pooler.") else BertForTokenClassification
    return BertModel


def model_class_for(config: BertConfig, keys, source: str):
    """The class config.json names, else the one the keys suggest."""
    name = architecture_name(config)
    return class_named(name, source) if name else class_from_keys(keys)


def _is_pooler_key(key: str) -> bool:
    return key.removeprefix(ENCODER_PREFIX).startswith("pooler.")


def check_heads(model, state, source: str) -> None:
    """A CheckpointError naming the keys when `state`'s heads belong to another architecture than `model`'s:
    head keys the model has no place for, or a task head without the rest of the heads the model needs."""
    name = type(model).__name__
    target = set(model.state_dict())
    keys = set(normalize_keys(state, target))
    # An unused pooler is no error: older transformers saved one with token-classification and QA models.
    foreign = sorted(k for k in keys - target if not (is_encoder_key(k) or _is_pooler_key(k)))
    if foreign:
        raise CheckpointError(f"{source}: keys {', '.join(foreign)} do not fit {name} (heads of another "
                              "architecture: check config.json's architectures)")
    heads = {k for k in target - set(TIED_KEYS) if not is_encoder_key(k)}
    task_heads = sorted(keys & {k for k in heads if not _is_pooler_key(k)})
    missing = sorted(heads - keys)
    if task_heads and missing:
        raise CheckpointError(f"{source}: holds {', '.join(task_heads)} but not {', '.join(missing)}, which "
                              f"{name} needs (heads of another architecture: check config.json's architectures)")


def build_model(config: BertConfig, state, source: str, model_class=None):
    """`model_class` (default: the one config.json names, else the keys suggest) loaded with `state` after
    checking its heads fit. Returns (model, LoadReport)."""
    model = (model_class or model_class_for(config, state, source))(config)
    check_heads(model, state, source)
    return model, load_weights(model, state, source)
