"""A linear-chain CRF over word-level tags, and BERT + CRF for NER.

The CRF scores a tag path as start[t0] + sum(emission[i, t_i]) + sum(transition[t_{i-1}, t_i]) + end[t_last];
training maximises the path's log-probability (forward algorithm), prediction takes the best path (Viterbi).
It runs on the first WordPiece of each word (`word_mask`), packed to the left of each row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bertspeed.model.heads import BertForTokenClassification


class CRF(nn.Module):
    def __init__(self, num_tags: int):
        super().__init__()
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))  # [from, to]

    def path_score(self, emissions, tags, mask):
        """emissions (B, W, L), tags (B, W), mask (B, W) with mask[:, 0] True -> (B,)."""
        rows = torch.arange(emissions.shape[0], device=emissions.device)
        score = self.start_transitions[tags[:, 0]] + emissions[rows, 0, tags[:, 0]]
        for i in range(1, emissions.shape[1]):
            step = self.transitions[tags[:, i - 1], tags[:, i]] + emissions[rows, i, tags[:, i]]
            score = score + step * mask[:, i]
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1).long()).squeeze(1)
        return score + self.end_transitions[last]

    def log_partition(self, emissions, mask):
        alpha = self.start_transitions + emissions[:, 0]  # (B, L)
        for i in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + self.transitions + emissions[:, i].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, i:i + 1], nxt, alpha)
        return torch.logsumexp(alpha + self.end_transitions, dim=1)

    def neg_log_likelihood(self, emissions, tags, mask):
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    @torch.no_grad()
    def viterbi(self, emissions, mask) -> list[list[int]]:
        score = self.start_transitions + emissions[:, 0]
        backpointers = []
        for i in range(1, emissions.shape[1]):
            best, index = (score.unsqueeze(2) + self.transitions).max(dim=1)  # over the previous tag
            backpointers.append(index)
            score = torch.where(mask[:, i:i + 1], best + emissions[:, i], score)
        score = score + self.end_transitions
        paths = []
        for b, length in enumerate(mask.sum(1).tolist()):
            tag = int(score[b].argmax())
            path = [tag]
            for i in range(length - 1, 0, -1):
                tag = int(backpointers[i - 1][b, tag])
                path.append(tag)
            paths.append(path[::-1])
        return paths


def pack_words(values, word_mask):
    """Gather word positions (B, T, ...) to the left: (B, W, ...) and a (B, W) mask of real words."""
    lengths = word_mask.sum(1)
    width = max(1, int(lengths.max()))
    order = torch.argsort((~word_mask).int(), dim=1, stable=True)[:, :width]  # word positions first, in order
    index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    packed = values.gather(1, index)
    mask = torch.arange(width, device=values.device).unsqueeze(0) < lengths.unsqueeze(1)
    return packed, mask


@dataclass
class CRFOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, T, L) emissions
    tags: list | None = None  # best word-level tag path per row (eval mode)


class BertCRFForTokenClassification(BertForTokenClassification):
    def __init__(self, config):
        super().__init__(config)
        self.crf = CRF(config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, word_mask=None):
        if word_mask is None:
            raise ValueError("BertCRFForTokenClassification needs word_mask (first WordPiece of each word)")
        word_mask = word_mask == 1
        logits = super().forward(input_ids, attention_mask, token_type_ids).logits  # (B, T, L)
        emissions, mask = pack_words(logits, word_mask)
        has_words = mask[:, 0].clone()
        mask[:, 0] = True  # a row without words is scored as one dummy word and left out of the loss
        loss = None
        if labels is not None:
            tags, _ = pack_words(labels.clamp(min=0), word_mask)
            nll = self.crf.neg_log_likelihood(emissions, tags, mask)
            loss = (nll * has_words).sum() / has_words.sum().clamp(min=1)
        paths = None
        if not self.training:
            paths = [p if h else [] for p, h in zip(self.crf.viterbi(emissions, mask), has_words.tolist())]
        return CRFOutput(loss, logits, paths)
