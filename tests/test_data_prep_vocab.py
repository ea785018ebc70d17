"""Vocab training: special tokens, size, CJK split, ids identical to BertTokenizerFast with that vocab."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bertspeed.data_prep.create_pretraining_data import main as create_main
from bertspeed.data_prep.fast_tokenizer import FastWordPiece
from bertspeed.data_prep.vocab import main as vocab_main

CHINESE = ["北京是中华人民共和国的首都，也是全国的政治中心。", "上海是中国最大的城市之一。",
           "我们今天学习自然语言处理。", "中文文本没有空格，所以每个汉字单独成为一个词元。"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, squad_dev):
    data = json.loads(squad_dev.read_text(encoding="utf-8"))["data"]
    path = tmp_path_factory.mktemp("vocab") / "text.txt"
    docs = ["\n".join(p["context"].replace(". ", ".\n").splitlines()) for a in data[:20] for p in a["paragraphs"]]
    docs += ["\n".join(CHINESE)] * 30
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


@pytest.mark.parametrize("lower", [True, False])
def test_trained_vocab_matches_reference_tokenizer(tmp_path, corpus, lower):
    vocab = tmp_path / "vocab.txt"
    flag = "--do_lower_case" if lower else "--no-do_lower_case"
    assert vocab_main(["--input", str(corpus), "--output", str(vocab), "--vocab_size", "3000", flag]) == 0
    tokens = vocab.read_text(encoding="utf-8").split("\n")[:-1]
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 1000 < len(tokens) <= 3000 and len(set(tokens)) == len(tokens)
    assert any(t.startswith("##") for t in tokens)
    assert ("The" in tokens) != lower
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast(vocab=str(vocab), do_lower_case=lower)
    fast = FastWordPiece.from_vocab_file(vocab, do_lower_case=lower)
    lines = corpus.read_text(encoding="utf-8").split("\n")[:400] + CHINESE
    assert [fast.token_ids(t) for t in lines] == ref(lines, add_special_tokens=False)["input_ids"]
    pieces = ref.convert_ids_to_tokens(fast.token_ids(CHINESE[1]))
    assert pieces[:4] == ["上", "海", "是", "中"]  # CJK characters split one by one


def test_chinese_corpus_end_to_end(tmp_path, corpus):
    vocab = tmp_path / "vocab.txt"
    assert vocab_main(["--input", str(corpus), "--output", str(vocab), "--vocab_size", "2000"]) == 0
    zh = tmp_path / "zh.txt"
    zh.write_text("\n\n".join("\n".join(CHINESE[i:] + CHINESE[:i]) for i in range(4)) * 10, encoding="utf-8")
    out = tmp_path / "out"
    assert create_main(["--input", str(zh), "--vocab_file", str(vocab), "--output_dir", str(out),
                        "--max_seq_length", "64", "--max_predictions_per_seq", "10"]) == 0
    import h5py
    with h5py.File(out / "training_00000.hdf5") as f:
        ids = f["input_ids"][()]
    assert len(ids) > 10 and not (ids == 1).any()  # no [UNK]: every character is in the vocab
    assert np.isin(ids[:, 0], [2]).all()


def test_max_bytes_limits_training_text(tmp_path, corpus):
    small, full = tmp_path / "small.txt", tmp_path / "full.txt"
    assert vocab_main(["--input", str(corpus), "--output", str(small), "--vocab_size", "3000",
                       "--max_bytes", "20000"]) == 0
    assert vocab_main(["--input", str(corpus), "--output", str(full), "--vocab_size", "3000"]) == 0
    assert len(small.read_text().split()) < len(full.read_text().split())


def test_empty_input(tmp_path, capsys):
    (tmp_path / "e.txt").write_text("\n\n")
    assert vocab_main(["--input", str(tmp_path / "e.txt"), "--output", str(tmp_path / "v.txt")]) == 2
    assert "no text" in capsys.readouterr().err and not (tmp_path / "v.txt").exists()


def test_bad_vocab_size_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        vocab_main(["--input", str(tmp_path), "--output", str(tmp_path / "v.txt"), "--vocab_size", "5"])
    assert info.value.code == 2 and "--vocab_size must exceed 5" in capsys.readouterr().err
