"""bertspeed's shared core: config, model, task heads, tokenizer, checkpoint import/export."""
from bert.config import PRESETS, BertConfig
from bert.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bert.model import IGNORE_INDEX, BertForPreTraining, BertModel, positions_to_labels

__all__ = [
    "PRESETS", "BertConfig", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
    "BertForQuestionAnswering", "BertForTokenClassification", "IGNORE_INDEX", "positions_to_labels",
]
