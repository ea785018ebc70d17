"""run_pretraining.py's flags: generated from PretrainArgs, plus DeepSpeed's and the launcher's own;
command line > --settings_file > defaults; bad values exit 2 naming the flag."""
from __future__ import annotations

import json

import pytest
from pretrain_helpers import ds_config

from bertspeed.pretrain.args import PretrainArgs, build_parser, parse_args
from bertspeed.training.settings import as_dict


@pytest.fixture
def required(tmp_path) -> list[str]:
    (tmp_path / "shards").mkdir()
    return ["--input_dir", str(tmp_path / "shards"), "--output_dir", str(tmp_path / "out"), "--max_steps", "5",
            "--model_preset", "tiny"]


def test_defaults_and_launcher_flags(tmp_path, required):
    ds = ds_config(tmp_path / "ds.json")
    args = parse_args(["--local_rank=1", *required, "--deepspeed", "--deepspeed_config", str(ds), "--fused_kernels"])
    assert (args.deepspeed_config, args.local_rank, args.max_steps, args.fused_kernels) == (str(ds), 1, 5, True)
    assert (args.warmup_proportion, args.precision, args.checkpoint_interval, args.optimizer) == (0.01, "auto", 1000, None)
    assert args.num_warmup_steps == 0 and not args.resume and not args.compile
    recorded = as_dict(args)  # run_config.json's "args"
    assert json.loads(json.dumps(recorded)) == recorded and recorded["fused_kernels"] is True


def test_settings_file_under_the_command_line(tmp_path, required):
    ds = ds_config(tmp_path / "ds.json")
    file = tmp_path / "phase1.json"
    file.write_text(json.dumps({"deepspeed_config": str(ds), "max_steps": 7, "learning_rate": 0.01,
                                "warmup_steps": 2, "whole_word_mask": True}))
    args = parse_args(["--settings_file", str(file), *required])
    assert (args.deepspeed_config, args.max_steps, args.learning_rate, args.num_warmup_steps) == (str(ds), 5, 0.01, 2)
    assert args.whole_word_mask


@pytest.mark.parametrize("extra, message", [
    ([], "--deepspeed_config is required"),
    (["--deepspeed_config", "DS", "--max_steps", "0"], "--max_steps must be positive, got 0"),
    (["--deepspeed_config", "DS", "--warmup_proportion", "1.5"], "--warmup_proportion must be in [0, 1), got 1.5"),
    (["--deepspeed_config", "DS", "--optimizer", "sgd"], "--optimizer must be one of"),
    (["--deepspeed_config", "DS", "--precision", "fp8"], "--precision must be one of auto"),
    (["--deepspeed_config", "DS", "--config_file", "c.json"], "give exactly one of --config_file and --model_preset"),
    (["--deepspeed_config", "missing.json"], "--deepspeed_config missing.json does not exist"),
    (["--deepspeed_config", "DS", "--unpad", "--pack"], "give only one of --unpad and --pack"),
    (["--deepspeed_config", "DS", "--max_steps", "many"], "argument --max_steps: invalid int value: 'many'"),
])
def test_bad_values_exit_2_naming_the_flag(tmp_path, required, capsys, extra, message):
    ds = str(ds_config(tmp_path / "ds.json"))
    with pytest.raises(SystemExit) as info:
        parse_args([*required, *[ds if x == "DS" else x for x in extra]])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_report_to_tensorboard_and_its_old_switch(tmp_path, required):
    ds = str(ds_config(tmp_path / "ds.json"))
    assert not parse_args([*required, "--deepspeed_config", ds]).use_tensorboard
    for flags in (["--report_to", "tensorboard"], ["--tensorboard"]):
        assert parse_args([*required, "--deepspeed_config", ds, *flags]).use_tensorboard
    assert not parse_args([*required, "--deepspeed_config", ds, "--report_to", "none"]).use_tensorboard


def test_help_lists_every_field_with_its_text():
    text = " ".join(build_parser().format_help().split())
    names = [name for name in PretrainArgs.__dataclass_fields__ if name != "deepspeed_config"]
    for name in names:
        assert f"--{name}" in text, name
    for phrase in ("--deepspeed_config DEEPSPEED_CONFIG", "--deepspeed ", "--settings_file FILE.json",
                   "folder of training HDF5 shards (ours or NVIDIA's schema) (required)",
                   "keep the newest K checkpoint folders (default: 3)",
                   "use bertspeed's fused LayerNorm/softmax CUDA kernels"):
        assert phrase in text, phrase


def test_fused_kernels_only_when_asked(tmp_path, required):
    from bertspeed.model import layers
    from bertspeed.model.config import BertConfig
    from bertspeed.pretrain.run_pretraining import build_model

    ds = str(ds_config(tmp_path / "ds.json"))
    config = BertConfig.preset("tiny", vocab_size=100)
    try:
        build_model(parse_args([*required, "--deepspeed_config", ds]), config)
        assert not layers.fused_kernels_enabled()
        build_model(parse_args([*required, "--deepspeed_config", ds, "--fused_kernels"]), config)
        assert layers.fused_kernels_enabled()
    finally:
        layers.use_fused_kernels(False)
