"""MSRA NER input: character-per-line and the MindSpore seed's XML, its label list and class filter;
entity-level scores equal seqeval's on the seed's S_/B_/M_/E_ tags."""
import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from bertspeed.finetune import ner
from bertspeed.finetune.metrics import entity_scores

XML = """<?xml version="1.0" encoding="utf-8"?>
<DOC>
<SENTENCE><w>新华社</w><w><NAMEX TYPE="LOCATION">北京</NAMEX></w><w><TIMEX TYPE="DATE">一月</TIMEX></w><w>电</w></SENTENCE>
<SENTENCE><w><NAMEX TYPE="PERSON">江泽民</NAMEX></w><w>会见</w><w><NAMEX TYPE="ORGANIZATION">世贸组织</NAMEX></w><w><NAMEX TYPE="PERSON">李</NAMEX></w></SENTENCE>
</DOC>
"""


def test_seed_xml_tags_and_class_filter(tmp_path):
    path = tmp_path / "msra.xml"
    path.write_text(XML, encoding="utf-8")
    first, second = ner.read_sentences(path)
    assert "".join(first.words) == "新华社北京一月电"
    assert first.labels == ["O"] * 3 + ["B-LOCATION", "E-LOCATION", "B-DATE", "E-DATE", "O"]
    assert second.labels == ["B-PERSON", "I-PERSON", "E-PERSON", "O", "O",
                             "B-ORGANIZATION", "I-ORGANIZATION", "I-ORGANIZATION", "E-ORGANIZATION", "S-PERSON"]
    filtered = ner.read_sentences(path, class_filter=["NAMEX"])  # the seed filters by element name
    assert filtered[0].labels[5:7] == ["O", "O"] and filtered[0].labels[3] == "B-LOCATION"
    by_type = ner.read_sentences(path, class_filter=["PERSON"])
    assert by_type[1].labels[5] == "O" and by_type[1].labels[9] == "S-PERSON"


def test_char_per_line_and_errors(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("江 B_PER\n泽 M_PER\n民 E_PER\n在 O\n北 B-LOC\n京 I-LOC\n\n好 S_ORG\n", encoding="utf-8")
    sentences = ner.read_sentences(path, "msra")
    assert [len(s.words) for s in sentences] == [6, 1]
    assert sentences[0].labels[:3] == ["B-PER", "I-PER", "E-PER"] and sentences[1].labels == ["S-ORG"]
    filtered = ner.read_sentences(path, "msra", class_filter=["LOC"])
    assert filtered[0].labels == ["O", "O", "O", "O", "B-LOC", "I-LOC"]
    path.write_text("江 B-PER extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="train.txt:1: expected 'character tag'"):
        ner.read_sentences(path, "msra")


def test_seed_label_file(tmp_path):
    types = tmp_path / "label2id.txt"
    types.write_text("PER\nLOC\n", encoding="utf-8")
    assert ner.read_label_file(types) == ["O", "S-PER", "B-PER", "I-PER", "E-PER", "S-LOC", "B-LOC", "I-LOC", "E-LOC"]
    tags = tmp_path / "tags.txt"
    tags.write_text("O\nB-PER\nI-PER\n", encoding="utf-8")
    assert ner.read_label_file(tags) == ["O", "B-PER", "I-PER"]


@pytest.mark.parametrize("tags", [["O", "S-", "B-", "I-", "E-"], ["O", "B-", "I-"]])
def test_entity_scores_equal_seqeval(tags):
    rng = random.Random(0)
    kinds = ["PER", "LOC", "ORG"]

    def sequence(n):
        return [t if t == "O" else t + rng.choice(kinds) for t in (rng.choice(tags) for _ in range(n))]

    true = [sequence(rng.randint(1, 30)) for _ in range(200)]
    pred = [[t if rng.random() < 0.8 else rng.choice(seq) for t in seq] for seq in true]
    ours = entity_scores(true, pred)
    assert ours["f1"] == pytest.approx(f1_score(true, pred), abs=1e-12)
    assert ours["precision"] == pytest.approx(precision_score(true, pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(true, pred), abs=1e-12)
    assert 0.3 < ours["f1"] < 0.95
