"""bertspeed's shared core: config, model, task heads, tokenizer, checkpoint import/export."""
import importlib

_EXPORTS = {
    "PRESETS": "bertspeed.model.config", "BertConfig": "bertspeed.model.config",
    "BertForQuestionAnswering": "bertspeed.model.heads", "BertForSequenceClassification": "bertspeed.model.heads",
    "BertForTokenClassification": "bertspeed.model.heads", "BertCRFForTokenClassification": "bertspeed.model.crf",
    "ARCHITECTURES": "bertspeed.model.architectures",
    "IGNORE_INDEX": "bertspeed.model.model", "BertForPreTraining": "bertspeed.model.model", "BertModel": "bertspeed.model.model",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    # Lazy, so torch-free users (data_prep imports bertspeed.model.tokenizer) do not pay torch's import.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bertspeed.model' has no attribute {name!r}")
