"""bertspeed/model/checkpoint.py and `python -m bertspeed.convert`: Hugging Face folders in and out."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertspeed.model import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel
from bertspeed.model.checkpoint import (
    CheckpointError,
    from_pretrained,
    read_state_dict,
    resolve_model_dir,
    save_pretrained,
)

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)


@pytest.fixture
def hf_folder(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(transformers.BertConfig(**TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                          + [f"w{i}" for i in range(94)]) + "\n")
    return tmp_path / "hf"


def rewrite_weights(folder, transform):
    state = load_file(folder / "model.safetensors")
    save_file(transform(state), folder / "model.safetensors")


def test_round_trip_is_bitwise(hf_folder, tmp_path):
    model, report = from_pretrained(BertForPreTraining, hf_folder)
    assert not report.initialized
    save_pretrained(model, tmp_path / "out", vocab_file=hf_folder / "vocab.txt")
    back = transformers.BertForPreTraining.from_pretrained(tmp_path / "out")
    original = transformers.BertForPreTraining.from_pretrained(hf_folder)
    for (k1, v1), (k2, v2) in zip(original.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    assert (tmp_path / "out" / "vocab.txt").read_text() == (hf_folder / "vocab.txt").read_text()


def test_export_loads_unchanged_and_gives_same_outputs(hf_folder, tmp_path):
    torch.manual_seed(3)
    ours = BertForPreTraining(BertConfig(**TINY)).eval()
    save_pretrained(ours, tmp_path / "out")
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 99, (2, 9))
    torch.testing.assert_close(hf(input_ids=ids).prediction_logits, ours(ids).prediction_logits)
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()


def test_legacy_names_no_prefix_and_missing_decoder_bias(hf_folder):
    def legacy(state):
        out = {}
        for k, v in state.items():
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            if k.startswith("cls.") or k == "cls.predictions.decoder.bias":
                continue
            out[k.removeprefix("bert.")] = v
        return out
    reference = load_file(hf_folder / "model.safetensors")
    rewrite_weights(hf_folder, legacy)
    model, report = from_pretrained(BertForPreTraining, hf_folder)
    assert "cls.predictions.bias" in report.initialized and "cls.seq_relationship.weight" in report.initialized
    torch.testing.assert_close(model.state_dict()["bert.encoder.layer.1.output.LayerNorm.weight"],
                               reference["bert.encoder.layer.1.output.LayerNorm.weight"])
    encoder, _ = from_pretrained(BertModel, hf_folder)
    torch.testing.assert_close(encoder.state_dict()["embeddings.LayerNorm.bias"],
                               reference["bert.embeddings.LayerNorm.bias"])


def test_decoder_bias_only_under_decoder_name(hf_folder):
    def rename(state):
        state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias")
        return state
    bias = load_file(hf_folder / "model.safetensors")["cls.predictions.bias"]
    rewrite_weights(hf_folder, rename)
    model, report = from_pretrained(BertForPreTraining, hf_folder)
    assert torch.equal(model.cls.predictions.bias.detach(), bias) and not report.initialized


def test_pytorch_model_bin_weights_only(hf_folder):
    state = load_file(hf_folder / "model.safetensors")
    torch.save(state, hf_folder / "pytorch_model.bin")
    (hf_folder / "model.safetensors").unlink()
    model, _ = from_pretrained(BertForPreTraining, hf_folder)
    assert torch.equal(model.bert.pooler.dense.weight.detach(), state["bert.pooler.dense.weight"])


def test_pickled_objects_are_refused(hf_folder, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))
    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        read_state_dict(tmp_path / "pytorch_model.bin")


def test_heads_reported_when_created_or_unused(hf_folder):
    model, report = from_pretrained(BertForSequenceClassification, hf_folder, num_labels=3)
    assert report.initialized == ["classifier.weight", "classifier.bias"]
    assert "cls.seq_relationship.weight" in report.unused
    assert "newly initialised" in report.summary()


def test_mismatches_name_the_key(hf_folder):
    with pytest.raises(CheckpointError, match="vocab size mismatch.*word_embeddings.*99 rows.*vocab_size 100"):
        from_pretrained(BertForPreTraining, hf_folder, vocab_size=100)
    with pytest.raises(CheckpointError, match="intermediate.dense.weight.*shape"):
        from_pretrained(BertForPreTraining, hf_folder, intermediate_size=40)
    rewrite_weights(hf_folder, lambda s: {k: v for k, v in s.items() if "layer.1.attention.self.key.bias" not in k})
    with pytest.raises(CheckpointError, match="missing key 'bert.encoder.layer.1.attention.self.key.bias'"):
        from_pretrained(BertForPreTraining, hf_folder)


def test_run_directory_resolves_latest(hf_folder, tmp_path):
    run = tmp_path / "run"
    model, _ = from_pretrained(BertForPreTraining, hf_folder)
    save_pretrained(model, run / "global_step7")
    (run / "latest").write_text("global_step7\n")
    assert resolve_model_dir(run) == run / "global_step7"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights file"):
        resolve_model_dir(tmp_path / "empty")


def test_convert_cli(hf_folder, tmp_path):
    out = tmp_path / "converted"
    done = subprocess.run([sys.executable, "-m", "bertspeed.convert", str(hf_folder), "--output_dir", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    assert (out / "vocab.txt").exists()
    transformers.BertForPreTraining.from_pretrained(out)
    bad = subprocess.run([sys.executable, "-m", "bertspeed.convert", str(tmp_path / "missing"), "--output_dir",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode != 0 and "missing" in bad.stderr and not (tmp_path / "x").exists()


def test_minilm_hidden_states_match_transformers(minilm_dir):
    from bertspeed.model.tokenizer import BertTokenizer
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    ours, report = from_pretrained(BertModel, minilm_dir)
    assert not report.initialized, report.summary()
    ours.eval()
    tok = BertTokenizer.from_vocab_file(minilm_dir / "vocab.txt")
    enc = tok.encode_batch(["The Normans were the people who in the 10th and 11th centuries gave their name "
                            "to Normandy, a region in France.", "Who gave their name to Normandy?"],
                           return_tensors="pt")
    ref = hf(**enc, output_hidden_states=True)
    out = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], output_hidden_states=True)
    real = enc["attention_mask"].bool()
    assert len(out.hidden_states) == len(ref.hidden_states) == 7
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_head_of_another_shape_is_recreated_and_reported(hf_folder, tmp_path):
    three, _ = from_pretrained(BertForSequenceClassification, hf_folder, num_labels=3)
    save_pretrained(three, tmp_path / "mnli_like")
    two, report = from_pretrained(BertForSequenceClassification, tmp_path / "mnli_like", num_labels=2)
    assert report.initialized == ["classifier.weight (shape (3, 32) in the checkpoint)",
                                  "classifier.bias (shape (3,) in the checkpoint)"]
    torch.testing.assert_close(two.bert.pooler.dense.weight, three.bert.pooler.dense.weight)
    assert oct((tmp_path / "mnli_like").stat().st_mode & 0o777) == "0o755"
