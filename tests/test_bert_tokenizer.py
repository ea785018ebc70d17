"""bertspeed/model/tokenizer.py: ids identical to transformers' BertTokenizerFast on real text."""
import json

import pytest

from bertspeed.model.tokenizer import BertTokenizer, read_vocab

transformers = pytest.importorskip("transformers")

ODD_TEXTS = ["Héllo, Wörld! Ça va?", "naïve café résumé — “quoted” ‘text’", "東京は日本の首都です。中文分词",
             "tabs\tand\nnewlines\r\n and\u00a0nbsp", "ctrl\x00chars\x07here\ufffd", "emoji 🙂 and ⚡",
             "x" * 120, "$100 (approx.) = 5% of #total & more...", "U.S.A. Mr. O'Neil's 1,000,000th",
             "", "   "]


def squad_texts(squad_dev, n=300):
    data = json.loads(squad_dev.read_text())["data"]
    texts = []
    for article in data:
        for para in article["paragraphs"]:
            texts.append(para["context"])
            texts.extend(qa["question"] for qa in para["qas"][:2])
    return texts[:n]


def reference(vocab_file, lower):
    vocab = {line.rstrip("\n"): i for i, line in enumerate(open(vocab_file, encoding="utf-8"))}
    return transformers.BertTokenizerFast(vocab=vocab, do_lower_case=lower)


@pytest.mark.parametrize("lower", [True, False])
def test_ids_equal_reference_on_real_text(vocab_file, squad_dev, lower):
    ours = BertTokenizer.from_vocab_file(vocab_file, do_lower_case=lower)
    ref = reference(vocab_file, lower)
    texts = squad_texts(squad_dev) + ODD_TEXTS
    mine = ours.encode_batch(texts, padding=False)["input_ids"]
    theirs = ref(texts)["input_ids"]
    assert mine == theirs
    assert ours.token_ids(texts[:50]) == [ref(t, add_special_tokens=False)["input_ids"] for t in texts[:50]]


def test_pairs_truncation_and_padding_equal_reference(vocab_file, squad_dev):
    ours = BertTokenizer.from_vocab_file(vocab_file)
    ref = reference(vocab_file, True)
    texts = squad_texts(squad_dev, 40)
    questions, contexts = texts[1::3], texts[0::3][: len(texts[1::3])]
    mine = ours.encode_batch(questions, contexts, max_length=64, return_tensors="pt")
    theirs = ref(questions, contexts, max_length=64, truncation="longest_first", padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert mine[key].tolist() == theirs[key].tolist(), key
    assert mine["input_ids"].shape[1] == 64


def test_special_ids_and_decode(vocab_file):
    tok = BertTokenizer.from_vocab_file(vocab_file)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.vocab_size == 30522
    enc = tok.encode("Who gave their name to Normandy?", "The Normans.")
    assert tok.decode(enc["input_ids"]) == "who gave their name to normandy? the normans."
    assert enc["token_type_ids"][-4:] == [1, 1, 1, 1]


def test_vocab_without_special_tokens_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab.txt.*\[UNK\]"):
        read_vocab(path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_vocab(tmp_path / "nope.txt")
