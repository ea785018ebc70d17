"""NVIDIA DeepLearningExamples `.pt` checkpoints: {"model": state_dict with `dense_act` names (and DDP's
`module.` prefix), "optimizer", "master params", "files", "data_loader": a pickled object}. The converter
takes the weights without executing the object, and the result computes what transformers computes with the
same weights loaded by name."""
import collections
import json
import os

import pytest
import torch

from bertspeed.convert import convert
from bertspeed.model.checkpoint import CheckpointError
from bertspeed.model.restricted_pickle import restricted_load

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)]  # 45: NVIDIA pads to 48
CONFIG = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu", hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, initializer_range=0.02)
DENSE_ACT = ("intermediate.dense.", "pooler.dense.", "transform.dense.")  # NVIDIA's fused bias+gelu/tanh layers


class Payload:
    """Stands for the pickled DataLoader: unpickling it runs a command, unless it is never executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def reference_model(model_class: str, seed: int):
    """transformers' model with NVIDIA's padded vocabulary (48 rows) and non-trivial weights."""
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(transformers.BertConfig(**CONFIG | {"vocab_size": 48}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def nvidia_names(state, prefix: str) -> collections.OrderedDict:
    renamed = collections.OrderedDict()
    for key, value in state.items():
        for name in DENSE_ACT:
            key = key.replace(name, name.replace("dense.", "dense_act."))
        renamed[prefix + key] = value.clone()
    return renamed


def write_nvidia(folder, model, prefix: str, extras: dict):
    folder.mkdir()
    (folder / "bert_config.json").write_text(json.dumps(CONFIG))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    torch.save({"model": nvidia_names(model.state_dict(), prefix), **extras}, folder / "ckpt_8601.pt")
    return folder / "ckpt_8601.pt"


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(VOCAB), (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def test_pretraining_checkpoint_with_optimizer_files_and_a_pickled_object(tmp_path):
    reference = reference_model("BertForPreTraining", seed=0)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    reference(input_ids=batch()[0]).prediction_logits.sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    marker = tmp_path / "PWNED"
    path = write_nvidia(tmp_path / "nv", reference, "module.", {
        "optimizer": optimizer.state_dict(), "master params": list(reference.parameters()),
        "files": [3, "wiki_shard_0.hdf5", "wiki_shard_1.hdf5"], "epoch": 2, "data_loader": Payload(marker)})
    with pytest.raises(CheckpointError, match="ckpt_8601.pt: refused"):
        from bertspeed.model.checkpoint import read_state_dict
        read_state_dict(path)  # the plain reader stays weights_only
    message = convert(path, tmp_path / "hf")
    assert not marker.exists()
    assert "objects not loaded (never executed): posix.system" in message
    assert "skipped optimizer, master params, files, epoch, data_loader" in message
    assert "padded to 48 rows" in message
    ours = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.vocab_size == len(VOCAB)
    ids, mask = batch()
    with torch.no_grad():
        expected, got = reference(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got.prediction_logits[real], expected.prediction_logits[real][:, :len(VOCAB)])
    torch.testing.assert_close(got.seq_relationship_logits, expected.seq_relationship_logits)


def test_squad_checkpoint_without_prefix(tmp_path):
    reference = reference_model("BertForQuestionAnswering", seed=1)
    path = write_nvidia(tmp_path / "qa", reference, "", {})
    message = convert(path, tmp_path / "hf")
    assert "wrote BertForQuestionAnswering" in message and "never executed" not in message
    ours = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    ids, mask = batch()
    with torch.no_grad():
        expected, got = reference(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got.start_logits[mask.bool()], expected.start_logits[mask.bool()])
    torch.testing.assert_close(got.end_logits[mask.bool()], expected.end_logits[mask.bool()])


def test_restricted_loader_keeps_data_and_replaces_the_rest(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.nn.Parameter(torch.arange(6.0).view(2, 3)), "h": torch.ones(2, dtype=torch.float16),
                "files": ["a"], "obj": Payload(marker), "dtype": torch.bfloat16}, tmp_path / "x.pt")
    torch.save({"obj": Payload(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    obj, replaced = restricted_load(tmp_path / "x.pt")
    assert replaced == ["posix.system"] and not marker.exists()
    assert torch.equal(obj["w"], torch.arange(6.0).view(2, 3)) and obj["h"].dtype == torch.float16
    assert obj["files"] == ["a"] and obj["dtype"] is torch.bfloat16 and "not loaded" in repr(obj["obj"])
    assert restricted_load(tmp_path / "legacy.pt")[1] == ["posix.system"] and not marker.exists()


def test_a_file_without_tensors_is_an_error(tmp_path):
    (tmp_path / "bert_config.json").write_text(json.dumps(CONFIG))
    torch.save({"epoch": 3, "files": ["a"]}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="ckpt.pt: no state dict of tensors .*epoch, files"):
        convert(tmp_path / "ckpt.pt", tmp_path / "hf")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: cannot read as a PyTorch checkpoint"):
        convert(tmp_path / "junk.pt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
