"""Google BERT TensorFlow checkpoints: TensorFlow writes a TF1-style checkpoint (tests/tf_reference.py),
bertspeed.convert reads it without TensorFlow, and our model and transformers' on the converted folder
give the hidden states and logits of Google's forward pass computed in TensorFlow. Bad files are errors
naming the file and the variable, with nothing written."""
import json
import shutil

import numpy as np
import pytest
import torch

from bertspeed.convert import convert, main
from bertspeed.model.architectures import build_model
from bertspeed.model.checkpoint import CheckpointError, read_state_dict
from bertspeed.model.config import BertConfig
from bertspeed.model.crc32c import _update, crc32c
from bertspeed.model.foreign import tf_key, tf_name
from bertspeed.model.tf_checkpoint import BundleReader

transformers = pytest.importorskip("transformers")

HF_CLASSES = {"pretraining": "BertForPreTraining", "squad": "BertForQuestionAnswering",
              "classifier": "BertForSequenceClassification", "encoder": "BertModel"}


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported only when a test needs it (it takes seconds and stays in memory)."""
    return pytest.importorskip("tensorflow", reason="tensorflow-cpu (requirements-tf.txt) is not installed: "
                                                    "no TensorFlow reference for the TF checkpoint reader")


@pytest.fixture(scope="module")
def ref(tf):
    import tf_reference
    return tf_reference


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, ref):
    """One Google-style folder per head, written once by TensorFlow."""
    root = tmp_path_factory.mktemp("tf")
    return {head: (root / head, ref.write_checkpoint(root / head, head, seed=i)) for i, head in enumerate(HF_CLASSES)}


def inputs(vocab_size: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (2, 11), generator=g)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, types, mask


def test_crc32c_matches_the_plain_loop_and_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 4, 16383, 16384, 70001):  # both sides of the numpy path's threshold
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _update(0xFFFFFFFF, data) ^ 0xFFFFFFFF, n


def test_reader_gives_the_tensors_tensorflow_saved(checkpoints, tf):
    folder, values = checkpoints["pretraining"]
    reader = BundleReader(folder / "bert_model.ckpt")
    tf_reader = tf.train.load_checkpoint(str(folder / "bert_model.ckpt"))
    assert set(reader.entries) == set(tf_reader.get_variable_to_shape_map())
    for name in reader.entries:
        assert np.array_equal(reader.tensor(name).numpy(), tf_reader.get_tensor(name)), name
    for name in values:  # every variable maps, and back
        assert tf_name(tf_key(name)[0]) == name


@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_conversion_matches_tensorflow_forward_pass(checkpoints, tmp_path, head, ref):
    folder, _ = checkpoints[head]
    message = convert(folder, tmp_path / "hf")
    assert "skipped" in message and "Adam slots" in message and "gelu_new" in message
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [HF_CLASSES[head]] and config["hidden_act"] == "gelu_new"
    ids, types, mask = inputs(len(ref.VOCAB))
    expected = ref.forward(folder / "bert_model.ckpt", ids.numpy(), types.numpy(), mask.numpy(), head)
    ours, report = build_model(BertConfig.from_json_file(tmp_path / "hf"), read_state_dict(tmp_path / "hf"), "hf")
    assert not report.initialized
    theirs = getattr(transformers, HF_CLASSES[head]).from_pretrained(tmp_path / "hf", attn_implementation="eager")
    real = mask.bool().numpy()
    with torch.no_grad():
        for model in (ours.eval(), theirs.eval()):
            if head == "pretraining":
                out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
                close(out.prediction_logits, expected["prediction_logits"], real)
                close(out.seq_relationship_logits, expected["seq_relationship_logits"])
            elif head == "squad":
                out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
                close(out.start_logits, expected["start_logits"], real)
                close(out.end_logits, expected["end_logits"], real)
            elif head == "classifier":
                close(model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits, expected["logits"])
            else:  # a bare encoder (no heads in the checkpoint)
                out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
                close(out.last_hidden_state, expected["hidden_states"][-1], real)
                close(out.pooler_output, expected["pooled"])
        encoder = getattr(ours, "bert", ours)(ids, mask, types, output_hidden_states=True)
    for mine, reference in zip(encoder.hidden_states, expected["hidden_states"], strict=True):
        close(mine, reference, real)


def close(actual, expected, real=None):
    actual = actual.double().numpy()
    if real is not None:
        actual, expected = actual[real], expected[real]
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_cased_vocab_stays_cased_and_autotokenizer_agrees(checkpoints, tmp_path):
    from bertspeed.model.tokenizer import BertTokenizer
    folder, _ = checkpoints["squad"]
    convert(folder, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["do_lower_case"] is False
    text = "The Apple pie is good. the apple pies, Paris."
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = BertTokenizer.from_vocab_file(tmp_path / "hf" / "vocab.txt", do_lower_case=False)
    assert auto(text)["input_ids"] == ours.encode(text)["input_ids"]
    assert ours.tokenize("Apple") != ours.tokenize("apple")


def copy_of(checkpoints, tmp_path, head="squad"):
    return shutil.copytree(checkpoints[head][0], tmp_path / "src")


def test_truncated_data_file_names_file_and_variable(checkpoints, tmp_path, capsys):
    src = copy_of(checkpoints, tmp_path)
    data = src / "bert_model.ckpt.data-00000-of-00001"
    entries = BundleReader(src / "bert_model.ckpt").entries
    cut = entries["bert/encoder/layer_1/output/dense/kernel"].offset + 3
    data.write_bytes(data.read_bytes()[:cut])
    weights = sorted(n for n in entries if not n.endswith(("adam_m", "adam_v", "global_step")))
    victim = next(n for n in weights if entries[n].offset + entries[n].size > cut)  # the first one read
    with pytest.raises(CheckpointError, match=f"{data}: variable '{victim}' lies at bytes .* but the file has {cut}"):
        convert(src, tmp_path / "out")
    assert main([str(src), "--output_dir", str(tmp_path / "out")]) == 2  # the command: one line, exit 2
    assert capsys.readouterr().err.startswith(f"error: src {src}: {data}: variable '{victim}'")
    assert not (tmp_path / "out").exists()


def test_flipped_data_byte_is_a_checksum_error_naming_the_variable(checkpoints, tmp_path):
    src = copy_of(checkpoints, tmp_path)
    data = src / "bert_model.ckpt.data-00000-of-00001"
    reader = BundleReader(src / "bert_model.ckpt")
    entry = reader.entries["bert/encoder/layer_1/output/dense/kernel"]
    flipped = bytearray(data.read_bytes())
    flipped[entry.offset + 5] ^= 0x40
    data.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum mismatch for variable 'bert/encoder/layer_1/output/dense/kernel'"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_that_disagrees_with_the_tensors(checkpoints, tmp_path):
    src = copy_of(checkpoints, tmp_path)
    config = json.loads((src / "bert_config.json").read_text())
    (src / "bert_config.json").write_text(json.dumps(config | {"intermediate_size": 40}))
    with pytest.raises(CheckpointError, match=r"bert_model.ckpt.index: variable 'bert/encoder/layer_0/intermediate/"
                                              r"dense/bias' has shape \(37,\)"):
        convert(src, tmp_path / "out")
    (src / "bert_config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match="missing variables bert/encoder/layer_2/attention/self/query/kernel"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_variables_and_corrupt_index_are_named(checkpoints, tmp_path, tf):
    src = copy_of(checkpoints, tmp_path)
    with tf.Graph().as_default():
        variables = {"bert/embeddings/word_embeddings": tf.compat.v1.Variable(np.zeros((3, 2), np.float32)),
                     "my_extra/weights": tf.compat.v1.Variable(np.zeros(2, np.float32))}
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(variables).save(session, str(tmp_path / "odd" / "bert_model.ckpt"))
    shutil.copy(src / "bert_config.json", tmp_path / "odd")
    with pytest.raises(CheckpointError, match="unknown variables my_extra/weights"):
        convert(tmp_path / "odd", tmp_path / "out")
    index = src / "bert_model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[40] ^= 0xFF  # inside the first data block
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{index}: checksum mismatch in the block"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_pointing_past_the_data(checkpoints, tmp_path, tf, ref):
    src = copy_of(checkpoints, tmp_path)
    index, data = src / "bert_model.ckpt.index", src / "bert_model.ckpt.data-00000-of-00001"
    ref.rewrite_index(index, lambda name, entry: None, masked_crc)  # unchanged entries: TF and we still read it
    assert np.array_equal(tf.train.load_checkpoint(str(src / "bert_model.ckpt")).get_tensor("cls/squad/output_bias"),
                          checkpoints["squad"][1]["cls/squad/output_bias"])
    convert(src, tmp_path / "ok")

    def past_the_end(name, entry):
        if name == "bert/encoder/layer_0/attention/self/key/bias":
            entry.offset = data.stat().st_size + 64
    ref.rewrite_index(index, past_the_end, masked_crc)
    with pytest.raises(CheckpointError, match=f"{data}: variable 'bert/encoder/layer_0/attention/self/key/bias' lies "
                                              "at bytes .* \\(truncated file, or an index pointing past it\\)"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def masked_crc(data: bytes) -> int:
    from bertspeed.model.crc32c import mask
    return mask(crc32c(data))


def test_predict_takes_a_google_squad_checkpoint_directly(checkpoints):
    from bertspeed.finetune import predict
    model, tokenizer = predict.load(checkpoints["squad"][0])
    assert type(model).__name__ == "BertForQuestionAnswering" and not tokenizer.do_lower_case
    settings = predict.parse_args(["--model_dir", str(checkpoints["squad"][0]), "--question", "What is good?",
                                   "--context", "The Apple pie is good."])
    [result] = predict.predict(model, tokenizer, settings)
    assert result["nbest"] and result["answer"] in "The Apple pie is good."
