"""Task heads: sequence classification/regression, span QA, token classification.

Attribute names and losses follow transformers' BERT task models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertspeed.model.config import BertConfig
from bertspeed.model.model import IGNORE_INDEX, BertModel, BertPreTrainedModel


@dataclass
class TaskOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


@dataclass
class SpanOutput:
    loss: torch.Tensor | None
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)


def _dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout
    return nn.Dropout(config.hidden_dropout_prob if p is None else p)


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> labels; regression when num_labels == 1 (STS-B)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    @property
    def is_regression(self) -> bool:
        return self.config.problem_type == "regression" or self.num_labels == 1

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        cls = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)  # the last layer at [CLS]
        pooled = self.bert(input_ids, attention_mask, token_type_ids, last_positions=cls).pooler_output
        logits = self.classifier(self.dropout(pooled)).float()  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.is_regression:
                loss = F.mse_loss(logits.view(-1), labels.view(-1).float())
            else:
                loss = F.cross_entropy(logits, labels.view(-1))
        return TaskOutput(loss, logits)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Start/end logits over the tokens (SQuAD)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None,
                start_positions=None, end_positions=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        start, end = self.qa_outputs(hidden).float().unbind(dim=-1)  # (B, T) each
        if self.bert.skips_padding and attention_mask is not None:
            # --unpad / --pack compute no padding token: padding takes no part in the softmax (the padded
            # model's numbers for each sequence run without padding).
            pad = ~attention_mask.bool()
            start, end = start.masked_fill(pad, -torch.inf), end.masked_fill(pad, -torch.inf)
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start.shape[1]  # positions outside the sequence are ignored, as in transformers
            s, e = start_positions.view(-1).clamp(0, T), end_positions.view(-1).clamp(0, T)
            loss = (F.cross_entropy(start, s, ignore_index=T) + F.cross_entropy(end, e, ignore_index=T)) / 2
        return SpanOutput(loss, start, end)


class BertForTokenClassification(BertPreTrainedModel):
    """A label per token (NER); labels of -100 (sub-tokens, padding) take no part in the loss."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(hidden)).float()  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1), ignore_index=IGNORE_INDEX)
        return TaskOutput(loss, logits)
