"""Casing and special tokens travel with every model folder we write (tokenizer_config.json,
special_tokens_map.json): a cased checkpoint stays cased through convert -> finetune -> predict,
transformers.AutoTokenizer on each folder gives our ids, and a casing that contradicts the vocab is warned
about."""
import collections
import json

import pytest
import torch

from bertspeed.convert import convert
from bertspeed.finetune import predict, run_squad
from bertspeed.finetune.cli import load_tokenizer
from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import export_state_dict, save_pretrained
from bertspeed.model.tokenizer import BertTokenizer
from bertspeed.pretrain.checkpoint import write_weights

transformers = pytest.importorskip("transformers")

CASED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Apple", "apple", "The", "the", "pie", "is", "good", "What",
         "what", "?", ".", "A", "a", "##s", "Ca", "##fé", "caf", "##e", "Paris", "paris", "in", "sold"]
TEXT = "The Apple pie is sold in Paris. What is good? the apple pies, Café."


def nvidia_style_checkpoint(folder, vocab):
    """A .pt state dict (NVIDIA layout) with bert_config.json and a vocab, and no tokenizer_config.json."""
    folder.mkdir()
    config = dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=24, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**config))
    torch.save({"model": collections.OrderedDict(model.state_dict())}, folder / "model.pt")
    (folder / "bert_config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder / "model.pt"


def assert_autotokenizer_agrees(folder, text=TEXT):
    ours, _ = load_tokenizer(folder)
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    assert auto(text)["input_ids"] == ours.encode(text)["input_ids"], folder
    assert auto("Apple", "apple pie")["token_type_ids"] == ours.encode("Apple", "apple pie")["token_type_ids"]
    return ours


def test_cased_checkpoint_stays_cased_through_convert_finetune_predict(tmp_path):
    convert(nvidia_style_checkpoint(tmp_path / "nv", CASED), tmp_path / "hf")
    files = {name: json.loads((tmp_path / "hf" / name).read_text())
             for name in ("tokenizer_config.json", "special_tokens_map.json")}
    assert files["tokenizer_config.json"]["do_lower_case"] is False
    assert files["special_tokens_map.json"] == {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                                "cls_token": "[CLS]", "mask_token": "[MASK]"}
    assert assert_autotokenizer_agrees(tmp_path / "hf").tokenize("Apple") == ["Apple"]
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": TEXT, "qas": [
        {"id": "q1", "question": "What is sold in Paris?", "answers": [{"text": "The Apple pie", "answer_start": 0}]},
        {"id": "q2", "question": "What is good?", "answers": [{"text": "the apple pies", "answer_start": TEXT.index("the apple pies")}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    run_squad.main(["--model_dir", str(tmp_path / "hf"), "--train_file", str(tmp_path / "squad.json"),
                    "--predict_file", str(tmp_path / "squad.json"), "--output_dir", str(tmp_path / "out"),
                    "--max_steps", "1", "--train_batch_size", "2", "--max_seq_length", "48", "--doc_stride", "16"])
    assert json.loads((tmp_path / "out" / "model" / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert_autotokenizer_agrees(tmp_path / "out" / "model")
    model, tokenizer = predict.load(tmp_path / "out")
    assert not tokenizer.do_lower_case and tokenizer.tokenize("Apple") != tokenizer.tokenize("apple")


def test_on_the_fly_conversion_of_a_foreign_checkpoint(tmp_path):
    """The drivers take the .pt itself (its bert_config.json and vocab.txt beside it)."""
    checkpoint = nvidia_style_checkpoint(tmp_path / "nv", CASED)
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": TEXT, "qas": [
        {"id": "q1", "question": "What is good?", "answers": [{"text": "the apple pies", "answer_start": TEXT.index("the apple pies")}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    run_squad.main(["--model_dir", str(checkpoint), "--train_file", str(tmp_path / "squad.json"), "--predict_file",
                    str(tmp_path / "squad.json"), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                    "--max_seq_length", "48", "--doc_stride", "16"])
    written = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert written["architectures"] == ["BertForQuestionAnswering"]
    model, tokenizer = predict.load(tmp_path / "out")
    assert not tokenizer.do_lower_case


def test_uncased_folders_and_pretraining_checkpoints_carry_their_casing(tmp_path, vocab_file):
    model = BertForPreTraining(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=24))
    save_pretrained(model, tmp_path / "hf", vocab_file=vocab_file)
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert_autotokenizer_agrees(tmp_path / "hf", "Café Déjà Vu in the APPLE store, 2024's 東京 prices!")
    (tmp_path / "ckpt").mkdir()
    write_weights(tmp_path / "ckpt", model.config, export_state_dict(model), vocab_file)
    assert json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert_autotokenizer_agrees(tmp_path / "ckpt", "Café Déjà Vu in the APPLE store")


def test_a_casing_that_contradicts_the_vocab_is_warned_about(tmp_path, vocab_file):
    (tmp_path / "cased").mkdir()
    (tmp_path / "cased" / "vocab.txt").write_text("\n".join(CASED) + "\n")
    with pytest.warns(UserWarning, match="do_lower_case is true .* is a cased vocab \\('Apple', 'The', 'What'"):
        tokenizer, _ = load_tokenizer(tmp_path / "cased", do_lower_case=True)
    assert tokenizer.tokenize("Apple") == tokenizer.tokenize("apple")  # the flag wins
    assert not BertTokenizer.from_vocab_file(tmp_path / "cased" / "vocab.txt").do_lower_case  # data prep's loader
    with pytest.warns(UserWarning, match="is a cased vocab"):
        BertTokenizer.from_vocab_file(tmp_path / "cased" / "vocab.txt", do_lower_case=True)
    (tmp_path / "uncased").mkdir()
    (tmp_path / "uncased" / "vocab.txt").write_bytes(vocab_file.read_bytes())
    (tmp_path / "uncased" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    with pytest.warns(UserWarning, match="tokenizer_config.json\\) but .* has no capitalised tokens"):
        load_tokenizer(tmp_path / "uncased")
    assert BertTokenizer.from_vocab_file(vocab_file).do_lower_case
    (tmp_path / "uncased" / "tokenizer_config.json").write_text('{"do_lower_case": true, "strip_accents": false}')
    with pytest.warns(UserWarning, match="strip_accents False .* are not applied"):
        load_tokenizer(tmp_path / "uncased")
