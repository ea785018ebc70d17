"""SQuAD features and decoding: windows, answer mapping on real dev data, v2.0 null answers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertspeed.finetune import squad
from bertspeed.finetune.metrics import squad_v1_evaluate, squad_v2_evaluate
from bertspeed.model.tokenizer import BertTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "finetune"


def test_doc_windows_cover_the_document_with_stride():
    assert squad.doc_windows(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert squad.doc_windows(3, 4, 2) == [(0, 3)]
    assert squad.doc_windows(8, 4, 2) == [(0, 4), (2, 4), (4, 4)]


def test_max_context_prefers_the_most_centred_window():
    windows = [(0, 4), (2, 4), (4, 4)]
    # token 2: window 0 scores min(2, 1) = 1, window 1 min(0, 3) = 0; token 3: window 1 wins (1 vs 0)
    assert squad.max_context_flags(windows, 0) == [True, True, True, False]
    assert squad.max_context_flags(windows, 1) == [False, True, True, False]
    assert squad.max_context_flags(windows, 2) == [False, True, True, True]


def _oracle_logits(eval_features, train_features):
    """Logits that point at the training label of each window: decoding must recover the answers."""
    logits = []
    for f, labelled in zip(eval_features, train_features):
        start, end = np.zeros(len(f["input_ids"])), np.zeros(len(f["input_ids"]))
        start[labelled["start_positions"]] += 10
        end[labelled["end_positions"]] += 10
        logits.append((start, end))
    return logits


def test_features_and_decoding_recover_real_answers(vocab_file, squad_dev):
    """Small windows (many questions span several) on 300 real dev questions: labelling the gold
    span and decoding it gives back answer text that matches the ground truth."""
    tokenizer = BertTokenizer.from_vocab_file(vocab_file)
    dataset, contexts, examples = squad.read_squad(squad_dev)
    examples = examples[:300]
    kwargs = dict(max_seq_length=96, doc_stride=32, max_query_length=24)
    train_features, _ = squad.featurize(examples, contexts, tokenizer, training=True, **kwargs)
    eval_features, offsets = squad.featurize(examples, contexts, tokenizer, training=False, **kwargs)
    assert len(train_features) == len(eval_features) > 2 * len(examples)  # windowing happened
    assert max(len(f["input_ids"]) for f in eval_features) <= 96
    preds, nbest, _, _ = squad.decode(examples, contexts, eval_features, offsets,
                                      _oracle_logits(eval_features, train_features))
    ids = {e.qid for e in examples}
    dataset = [{"paragraphs": [{**p, "qas": [q for q in p["qas"] if q["id"] in ids]} for p in a["paragraphs"]]}
               for a in dataset]
    result = squad_v1_evaluate(dataset, preds)
    assert result["exact_match"] > 95.0 and result["f1"] > 96.0
    # The misses are answers that are part of a WordPiece token ('gold' in 'golden', '8' in '18'):
    # the decoded span is then the whole token, which contains the answer.
    for e in examples:
        if preds[e.qid] not in [a["text"] for a in e.answers]:
            assert any(a["text"] in preds[e.qid] for a in e.answers), (preds[e.qid], e.answers)
    first = nbest[examples[0].qid]
    assert set(first[0]) == {"text", "start_logit", "end_logit", "probability"}
    assert sum(c["probability"] for c in first) == pytest.approx(1.0)


def test_v2_null_answers_and_threshold(vocab_file):
    tokenizer = BertTokenizer.from_vocab_file(vocab_file)
    dataset, contexts, examples = squad.read_squad(FIXTURES / "squad_v2_tiny.json")
    assert [e.is_impossible for e in examples] == [False, False, True, True, False, True]
    kwargs = dict(max_seq_length=64, doc_stride=16, max_query_length=32)
    train_features, _ = squad.featurize(examples, contexts, tokenizer, training=True, **kwargs)
    eval_features, offsets = squad.featurize(examples, contexts, tokenizer, training=False, **kwargs)
    for f in train_features:  # unanswerable questions point at [CLS]
        if examples[f["_example"]].is_impossible:
            assert f["start_positions"] == f["end_positions"] == 0
    logits = _oracle_logits(eval_features, train_features)
    preds, nbest, null_odds, best_non_null = squad.decode(examples, contexts, eval_features, offsets, logits,
                                                          version_2=True)
    assert [preds[e.qid] == "" for e in examples] == [e.is_impossible for e in examples]
    assert preds["v2q1"] == "France" and preds["v2q5"] == "Computational complexity theory"
    assert all(best_non_null[q] for q in best_non_null)  # a real span is always kept for the threshold search
    assert null_odds["v2q3"] > 0 > null_odds["v2q1"]
    result = squad_v2_evaluate(dataset, preds, null_odds, best_non_null)
    assert result["exact"] == result["f1"] == 100.0 and result["NoAns_total"] == 3
    assert result["best_f1"] == 100.0
    # A threshold above every null-minus-best score answers every question with its best span.
    preds_all, *_ = squad.decode(examples, contexts, eval_features, offsets, logits, version_2=True,
                                 null_score_diff_threshold=1e9)
    assert preds_all == best_non_null and preds_all["v2q6"] != ""


def test_read_squad_names_the_bad_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "q"}]}]}]}))
    with pytest.raises(ValueError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: needs 'id' and 'question'"):
        squad.read_squad(bad)
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="not a SQuAD file"):
        squad.read_squad(tmp_path / "notjson.json")
    with pytest.raises(FileNotFoundError, match="SQuAD file not found"):
        squad.read_squad(tmp_path / "absent.json")
