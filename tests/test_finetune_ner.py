"""NER data (CoNLL, CLUENER JSON), first-sub-token labelling, and the CRF against brute force."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from bertspeed.finetune import ner
from bertspeed.model.crf import CRF, pack_words
from bertspeed.model.tokenizer import BertTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "finetune"


def test_conll_reader():
    sentences = ner.read_sentences(FIXTURES / "conll_train.txt")
    assert len(sentences) == 10  # -DOCSTART- is not a sentence
    assert sentences[1].words == ["Peter", "Blackburn"] and sentences[1].labels == ["B-PER", "I-PER"]
    assert ner.label_list(sentences) == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG",
                                         "I-PER"]


def test_cluener_reader_spans_to_tags():
    [first, *_] = ner.read_sentences(FIXTURES / "cluener_train.json")
    assert "".join(first.words).startswith("浙商银行企业信贷部叶老桂")
    assert first.labels[:4] == ["B-company"] + ["I-company"] * 3
    assert first.labels[9:12] == ["B-name", "I-name", "I-name"] and first.labels[12] == "O"
    test = ner.read_sentences(FIXTURES / "cluener_test.json")
    assert test[0].labels is None and test[1].guid == "1"


def test_cluener_round_trip(tmp_path):
    sentences = ner.read_sentences(FIXTURES / "cluener_dev.json")
    ner.write_predictions(tmp_path / "p.json", sentences, [s.labels for s in sentences], "cluener")
    again = ner.read_sentences(tmp_path / "p.json")
    assert [s.labels for s in again] == [s.labels for s in sentences]


def test_reader_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.json").write_text('{"text": "北京欢迎你", "label": {"address": {"上海": [[0, 1]]}}}\n')
    with pytest.raises(ValueError, match=r"bad.json:1: label address span \[0, 1\] is '北京', not '上海'"):
        ner.read_sentences(tmp_path / "bad.json")
    (tmp_path / "bad.txt").write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected 'token ... label' columns"):
        ner.read_sentences(tmp_path / "bad.txt")


def test_first_subtoken_labelling(vocab_file):
    tokenizer = BertTokenizer.from_vocab_file(vocab_file)
    sentence = ner.Sentence(["Zwingmann", "said", "\u200b", "hello"], ["B-PER", "O", "O", "B-MISC"])
    label2id = {"O": 0, "B-PER": 1, "B-MISC": 2}
    [feature] = ner.featurize([sentence], tokenizer, 128, label2id, word_mask=True)
    pieces = tokenizer.token_ids(["Zwingmann"])[0]
    assert len(pieces) > 1  # a word of several WordPieces
    n = len(pieces)
    assert feature["labels"] == [-100, 1] + [-100] * (n - 1) + [0, 2, -100]
    assert feature["_word_starts"] == [1, 1 + n, None, 2 + n]  # a zero-width word has no piece
    assert [i for i, m in enumerate(feature["word_mask"]) if m] == [1, 1 + n, 2 + n]
    [cut] = ner.featurize([sentence], tokenizer, n + 3, label2id)  # room for the first word and one more
    assert cut["_word_starts"] == [1, 1 + n, None, None] and len(cut["input_ids"]) == n + 3


def _path_score(crf, emissions, tags):
    """Independent score of one tag path, written out term by term."""
    score = crf.start_transitions[tags[0]] + emissions[0, tags[0]]
    for i in range(1, len(tags)):
        score = score + crf.transitions[tags[i - 1], tags[i]] + emissions[i, tags[i]]
    return score + crf.end_transitions[tags[-1]]


def test_crf_against_brute_force():
    torch.manual_seed(0)
    crf = CRF(3)
    emissions = torch.randn(3, 4, 3)
    lengths = [4, 2, 1]
    mask = torch.arange(4).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    tags = torch.randint(0, 3, (3, 4))
    with torch.no_grad():
        log_z = crf.log_partition(emissions, mask)
        nll = crf.neg_log_likelihood(emissions, tags, mask)
        best = crf.viterbi(emissions, mask)
        for b, n in enumerate(lengths):
            paths = list(itertools.product(range(3), repeat=n))
            scores = torch.stack([_path_score(crf, emissions[b], p) for p in paths])
            assert log_z[b] == pytest.approx(float(torch.logsumexp(scores, 0)), abs=1e-5)
            assert nll[b] == pytest.approx(float(log_z[b] - _path_score(crf, emissions[b], tags[b, :n].tolist())),
                                           abs=1e-5)
            assert best[b] == list(paths[int(scores.argmax())])


def test_pack_words_moves_word_positions_left():
    values = torch.arange(12).view(2, 6)
    word_mask = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]]).bool()
    packed, mask = pack_words(values, word_mask)
    assert packed[0].tolist() == [1, 3, 4] and packed[1, 0].item() == 8
    assert mask.tolist() == [[True, True, True], [True, False, False]]
