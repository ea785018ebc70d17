"""Bad input gives an error naming the culprit (file, dataset, field or flag) and writes nothing:
corrupt or truncated shards, wrong schema, token ids outside the vocab, sequence length beyond the
model, an empty input directory, a checkpoint of another model, invalid DeepSpeed configs, a full
disk while writing a checkpoint or a shard. (S3 errors: test_data_prep_s3.py; bad text input:
test_data_prep_pipeline.py.) Most checks call the code in-process; one goes through the CLI."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from pretrain_helpers import ROOT, ds_config, env, make_shards, tiny_model_config
from safetensors.torch import load_file

from bertspeed.model.checkpoint import CheckpointError, save_hf_folder
from bertspeed.model.config import BertConfig
from bertspeed.model.model import BertForPreTraining
from bertspeed.pretrain import checkpoint
from bertspeed.pretrain.args import PretrainArgs
from bertspeed.pretrain.data import PretrainingData, ShardError, list_shards
from bertspeed.training import runs

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def good(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("faults_input")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2, paragraphs_per_shard=24)
    return tmp, shards, tiny_model_config(tmp / "model.json"), ds_config(tmp / "ds.json", micro=4, accumulation=1)


def copy_shards(good, tmp_path):
    return shutil.copytree(good[1], tmp_path / "shards")


def read_everything(shards_dir, vocab_size=30522):
    """Open and read every row the loader would, as training does."""
    shards = list_shards(shards_dir)
    data = PretrainingData(shards, 4, 0, 1, seed=0, shuffle=False, vocab_size=vocab_size)
    try:
        for _ in range(data.rows_per_epoch // 4 + 1):
            next(data)
    finally:
        data.close()


def rewrite(path, **changes):
    with h5py.File(path) as f:
        arrays = {k: f[k][()] for k in f}
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value)


def test_truncated_and_corrupt_shards_name_the_file(good, tmp_path):
    shards = copy_shards(good, tmp_path)
    victim = shards / "shard_001.hdf5"
    for damage in ("truncate", "garbage"):
        blob = victim.read_bytes() if damage == "truncate" else b""
        victim.write_bytes(blob[:len(blob) * 2 // 3] if damage == "truncate" else np.random.bytes(4096))
        with pytest.raises(ShardError, match=f"{victim}: (not a readable HDF5 file|cannot read rows)"):
            read_everything(shards)
        shutil.copy(good[1] / victim.name, victim)
    read_everything(shards)  # the undamaged copy reads


@pytest.mark.parametrize("change, message", [
    ({"masked_lm_ids": None}, "missing dataset 'masked_lm_ids'"),
    ({"input_ids": "float"}, "dataset 'input_ids' has dtype float32"),
    ({"segment_ids": "flat"}, "dataset 'segment_ids' has 1 dims, expected 2"),
    ({"next_sentence_labels": "short"}, "datasets disagree on the number of rows"),
])
def test_wrong_schema_names_the_dataset(good, tmp_path, change, message):
    shards = copy_shards(good, tmp_path)
    victim = shards / "shard_000.hdf5"
    with h5py.File(victim) as f:
        original = {k: f[k][()] for k in f}
    (name, kind), = change.items()
    value = {None: lambda a: None, "float": lambda a: a.astype(np.float32), "flat": lambda a: a[:, 0],
             "short": lambda a: a[:-1]}[kind](original[name])
    rewrite(victim, **{name: value})
    with pytest.raises(ShardError, match=f"{victim}: {message}"):
        list_shards(shards)


def test_token_ids_outside_the_vocab(good, tmp_path):
    shards = copy_shards(good, tmp_path)
    victim = shards / "shard_001.hdf5"
    with h5py.File(victim) as f:
        ids = f["input_ids"][()]
    ids[3, 2] = 30522
    rewrite(victim, input_ids=ids)
    with pytest.raises(ShardError, match=f"{victim}: dataset 'input_ids' holds token id 30522, outside the "
                                         "model's vocab_size 30522"):
        read_everything(shards)
    with pytest.raises(ShardError, match="holds token id \\d+, outside the model's vocab_size 1000"):
        read_everything(good[1], vocab_size=1000)


def args_for(good, tmp_path, **overrides):
    tmp, shards, model, ds = good
    values = dict(input_dir=str(shards), output_dir=str(tmp_path / "out"), max_steps=4, deepspeed_config=str(ds),
                  config_file=str(model))
    return PretrainArgs(**{**values, **overrides})


def prepare_error(args):
    from bertspeed.pretrain.run_pretraining import prepare
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        prepare(args, world_size=1)
    assert not (ROOT / args.output_dir).exists()  # nothing written
    return str(info.value)


def test_sequence_length_beyond_the_model_and_mixed_lengths(good, tmp_path, squad_dev, vocab_file):
    short = tiny_model_config(tmp_path / "short.json", max_position_embeddings=32)
    message = prepare_error(args_for(good, tmp_path, config_file=str(short)))
    assert "sequence length 64 > max_position_embeddings 32" in message
    shards = copy_shards(good, tmp_path)
    make_shards(tmp_path / "other", squad_dev, vocab_file, num_shards=1, seq_len=32, paragraphs_per_shard=8)
    shutil.copy(tmp_path / "other" / "shard_000.hdf5", shards / "shard_009.hdf5")
    with pytest.raises(ShardError, match="shards have different sequence lengths \\[32, 64\\]"):
        list_shards(shards)


def test_empty_or_missing_input_dir(good, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a shard")
    assert "--input_dir" in prepare_error(args_for(good, tmp_path, input_dir=str(tmp_path / "empty")))
    assert "has no *.hdf5 shards" in prepare_error(args_for(good, tmp_path, input_dir=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match="--input_dir .*missing does not exist"):
        args_for(good, tmp_path, input_dir=str(tmp_path / "missing"))


@pytest.mark.parametrize("config, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 12},
     "batch arithmetic does not hold: train_micro_batch_size_per_gpu 4 x gradient_accumulation_steps 2 x "
     "world size 1 = 8, but train_batch_size is 12"),
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu must be a positive integer"),
    ({"train_micro_batch_size_per_gpu": 4, "scheduler": {"type": "WarmupLR"}}, "remove the 'scheduler' section"),
    ({"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "SGD", "params": {"lr": 1}}},
     "optimizer.type 'SGD' is not one of"),
    ({"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "Lamb", "params": {"lr": 0}}},
     "no positive learning rate"),
    ({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3},
      "optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}}, "LAMB under ZeRO stage 3 is refused"),
])
def test_invalid_deepspeed_config_names_the_file_and_field(good, tmp_path, config, message):
    path = tmp_path / "bad ds.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    error = prepare_error(args_for(good, tmp_path, deepspeed_config=str(path)))
    assert message in error
    assert str(path) in error or "LAMB" in message


def test_checkpoint_of_another_model_is_refused(good, tmp_path):
    tmp, shards, model, ds = good
    small_vocab = BertConfig.from_json_file(tiny_model_config(tmp_path / "v1000.json", vocab_size=1000))
    folder = save_hf_folder(tmp_path / "phase1", small_vocab, {k: v for k, v in BertForPreTraining(small_vocab).state_dict().items()
                                                                if k not in checkpoint.TIED_KEYS})
    # --init_checkpoint (phase 2) from a model with another vocab
    message = prepare_error(args_for(good, tmp_path, init_checkpoint=str(folder)))
    assert "vocab size mismatch" in message and str(folder) in message
    # --resume from a run of another model: refused before DeepSpeed loads anything
    (tmp_path / "run" / "global_step4").mkdir(parents=True)
    shutil.copy(folder / "config.json", tmp_path / "run" / "global_step4" / "config.json")
    runs.write_latest(tmp_path / "run", "global_step4")
    with pytest.raises(CheckpointError, match="does not match the model config: vocab_size 1000 in the checkpoint, "
                                              "30522 now"):
        checkpoint.load(engine=None, output_dir=tmp_path / "run", config=BertConfig.from_json_file(model))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(good, tmp_path, monkeypatch):
    config = BertConfig.from_json_file(good[2])
    state = {k: v for k, v in BertForPreTraining(config).state_dict().items() if k not in checkpoint.TIED_KEYS}
    out = tmp_path / "run"
    for tag in ("global_step2", "global_step4"):
        (out / tag).mkdir(parents=True)
    checkpoint.write_weights(out / "global_step2", config, state)
    runs.write_latest(out, "global_step2")
    before = sorted(p.name for p in out.rglob("*"))

    def partial_then_enospc(folder, *args, **kwargs):  # half a file, then the disk is full
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
        enospc()
    monkeypatch.setattr(checkpoint, "save_hf_folder", partial_then_enospc)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.write_weights(out / "global_step4", config, state)
    monkeypatch.setattr(os, "replace", enospc)  # the temporary `latest` is written, then the disk is full
    with pytest.raises(OSError, match="No space left"):
        runs.write_latest(out, "global_step4")
    monkeypatch.undo()
    assert sorted(p.name for p in out.rglob("*")) == before  # no partial file anywhere
    assert runs.read_latest(out) == "global_step2"
    loaded = load_file(out / "global_step2" / "model.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_disk_full_while_writing_a_shard(tmp_path, monkeypatch, capsys, squad_dev, vocab_file):
    from bertspeed.data_prep import create_pretraining_data
    text = tmp_path / "in.txt"
    paragraphs = [p["context"] for a in json.loads(squad_dev.read_text())["data"][:3] for p in a["paragraphs"]]
    text.write_text("\n\n".join(p.replace(". ", ".\n") for p in paragraphs))
    real = create_pretraining_data.write_shard

    def full_after_first(path, *args, **kwargs):
        if "00001" in path.name:
            path.write_bytes(b"\x89HDF partial")
            enospc()
        return real(path, *args, **kwargs)
    monkeypatch.setattr(create_pretraining_data, "write_shard", full_after_first)
    out = tmp_path / "out"
    argv = ["--input", str(text), "--vocab_file", str(vocab_file), "--output_dir", str(out), "--num_shards", "2",
            "--phases", "128:20", "--random_seed", "3"]
    assert create_pretraining_data.main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot write shard training_00001.hdf5" in err and "No space left on device" in err
    assert not list(out.rglob("training_00001.hdf5")) and not list(out.rglob("*tmp-training_00001*"))
    assert not list(out.rglob("manifest.json"))
    monkeypatch.undo()  # space freed: the rerun finishes, identical to a clean run
    assert create_pretraining_data.main(argv) == 0
    assert create_pretraining_data.main([*argv[:5], str(tmp_path / "clean"), *argv[6:]]) == 0
    a = json.loads(next(out.rglob("manifest.json")).read_text())
    b = json.loads(next((tmp_path / "clean").rglob("manifest.json")).read_text())
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


@pytest.mark.parametrize("damage", ["corrupt", "out_of_vocab"])
def test_cli_bad_shard_exits_2_naming_the_file(good, tmp_path, damage):
    """A corrupt shard is found before anything is written; token ids past the vocab when the loader
    reaches them (the loader checks every slice it reads)."""
    shards = copy_shards(good, tmp_path)
    victim = shards / "shard_001.hdf5"
    if damage == "corrupt":
        victim.write_bytes(b"definitely not HDF5")
    else:
        with h5py.File(victim) as f:
            ids = f["input_ids"][()]
        ids[0, 1] = 40000
        rewrite(victim, input_ids=ids)
    tmp, _, model, ds = good
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "pretrain" / "run_pretraining.py"), "--deepspeed_config", str(ds),
                           "--input_dir", str(shards), "--config_file", str(model), "--output_dir", str(out),
                           "--max_steps", "50"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    if damage == "corrupt":
        assert f"{victim}: not a readable HDF5 file" in proc.stderr and not out.exists()
    else:
        assert f"{victim}: dataset 'input_ids' holds token id 40000, outside the model's vocab_size 30522" in proc.stderr
