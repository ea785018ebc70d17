"""bertspeed's shared core: config, model, task heads, tokenizer, checkpoint import/export."""
import importlib

_EXPORTS = {
    "PRESETS": "bert.config", "BertConfig": "bert.config",
    "BertForQuestionAnswering": "bert.heads", "BertForSequenceClassification": "bert.heads",
    "BertForTokenClassification": "bert.heads",
    "IGNORE_INDEX": "bert.model", "BertForPreTraining": "bert.model", "BertModel": "bert.model",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    # Lazy, so torch-free users (data_prep imports bert.tokenizer) do not pay torch's import.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bert' has no attribute {name!r}")
