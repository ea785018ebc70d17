"""Precision by capability: the bf16 probe, the auto rule, explicit choices and their warnings, and the
drivers (pretraining, finetuning, demo, bench) following the probe when it is forced either way."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from bertspeed.training import hardware
from bertspeed.training.hardware import (
    FORCE_BF16_ENV,
    choose_precision,
    cpu_flags,
    ds_config_precision,
    host_label,
    isa_label,
    probe_bf16,
    with_precision,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bf16(monkeypatch):
    """Force the capability probe: bf16("0") no native bf16, bf16("1") native."""
    def force(value: str):
        monkeypatch.setenv(FORCE_BF16_ENV, value)
        probe_bf16.cache_clear()
    yield force
    probe_bf16.cache_clear()


@pytest.mark.parametrize("config, expected", [
    ({}, None), ({"bf16": {"enabled": True}}, "bf16"), ({"fp16": {"enabled": True, "loss_scale": 0}}, "fp16"),
    ({"bf16": {"enabled": False}}, "fp32"), ({"fp16": {"initial_scale_power": 16}}, "fp32"),
    ({"bf16": {"enabled": "auto"}}, None), ({"bf16": {"enabled": "auto"}, "fp16": {"enabled": False}}, "fp32"),
])
def test_deepspeed_config_sections_decide_as_deepspeed_reads_them(config, expected):
    assert ds_config_precision(config) == expected


@pytest.mark.parametrize("config, message", [
    ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "both enabled"),
    ({"bf16": True}, "'bf16' must be an object"), ({"fp16": {"enabled": "yes"}}, "'fp16' must be an object"),
])
def test_bad_precision_sections_are_errors_naming_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        ds_config_precision(config)


def test_auto_follows_the_probe(bf16):
    bf16("0")
    choice = choose_precision("auto", {}, "cpu")
    assert (choice.name, choice.source) == ("fp32", "auto") and FORCE_BF16_ENV in choice.reason
    bf16("1")
    assert choose_precision("auto", None, "cpu").name == "bf16"
    assert choose_precision("auto", {"bf16": {"enabled": "auto"}}, "cpu").name == "bf16"


def test_explicit_choices_win_and_slow_ones_warn_with_the_measured_speed(bf16, capsys):
    bf16("1")
    assert choose_precision("auto", {"bf16": {"enabled": False}}, "cpu").name == "fp32"  # the config wins over auto
    assert choose_precision("fp32", {"bf16": {"enabled": True}}, "cpu").name == "fp32"  # the flag wins over the config
    assert "--precision fp32 overrides bf16" in capsys.readouterr().out
    bf16("0")
    choice = choose_precision("auto", {"bf16": {"enabled": True}}, "cpu", config_name="--deepspeed_config x.json")
    assert (choice.name, choice.source) == ("bf16", "--deepspeed_config x.json")
    warning = capsys.readouterr().err
    assert "--deepspeed_config x.json asks for bf16" in warning and "a bf16 GEMM ran" in warning
    assert " than fp32" in warning or "fp32's speed" in warning
    choose_precision("fp16", None, "cpu")
    assert "no fast fp16 math" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--precision must be one of"):
        choose_precision("half")


def test_with_precision_keeps_loss_scale_settings():
    config = with_precision({"fp16": {"enabled": False, "initial_scale_power": 12}, "bf16": {"enabled": "auto"}}, "fp16")
    assert config["fp16"] == {"enabled": True, "initial_scale_power": 12} and config["bf16"] == {"enabled": False}


def test_unforced_probe_agrees_with_onednn(monkeypatch):
    monkeypatch.delenv(FORCE_BF16_ENV, raising=False)
    probe_bf16.cache_clear()
    probe = probe_bf16("cpu")
    probe_bf16.cache_clear()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not probe.native and "oneDNN reports no native bf16" in probe.reason
    assert probe.speedup > 0 and (not probe.native or probe.speedup >= hardware.MIN_BF16_SPEEDUP)


@pytest.mark.parametrize("cpuinfo, isa", [
    ("model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n",
     "AMX-BF16"),
    ("model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n", "AVX2"),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\n", "ARM SVE+BF16+ASIMD"),
])
def test_host_label_names_cpu_isa_threads_and_precision(monkeypatch, cpuinfo, isa):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: cpuinfo)
    assert isa_label(cpu_flags()) == isa
    label = host_label(hardware.host_info("fp32"))
    assert label.endswith(f"{isa}, {torch.get_num_threads()} threads, fp32")
    if "model name" in cpuinfo:
        assert label.startswith(cpuinfo.split(": ")[1].split("\n")[0])


# ------------------------------------------------------------- the drivers follow the probe

def _load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_bf16_rows_only_where_native(bf16):
    bench = _load_bench()
    bf16("0")
    assert not any("bf16" in name for name in bench.default_configs())
    bf16("1")
    assert bench.default_configs() == bench.ALL


def test_demo_plans_with_the_probed_precision(bf16, tmp_path):
    from bertspeed.pretrain.demo import load_plan
    for forced, expected in (("0", "fp32"), ("1", "bf16")):
        bf16(forced)
        plan = load_plan(tmp_path / forced, 2.0, "auto")
        assert plan["precision"]["precision"] == expected and plan["host"]["precision"] == expected


def test_pretraining_picks_precision_from_the_probe(bf16, tmp_path, squad_dev, vocab_file):
    from pretrain_helpers import ds_config, make_shards, tiny_model_config

    from bertspeed.pretrain.args import PretrainArgs
    from bertspeed.pretrain.run_pretraining import prepare
    shards = make_shards(tmp_path / "shards", squad_dev, vocab_file, 1, paragraphs_per_shard=8)
    args = dict(input_dir=str(shards), output_dir=str(tmp_path / "out"), max_steps=2,
                deepspeed_config=str(ds_config(tmp_path / "ds.json")), config_file=str(tiny_model_config(tmp_path / "c.json")))
    for forced, expected in (("0", "fp32"), ("1", "bf16")):
        bf16(forced)
        setup = prepare(PretrainArgs(**args), world_size=1)
        assert setup["precision"].name == expected
        assert setup["ds_config"]["bf16"]["enabled"] == (expected == "bf16") and not setup["ds_config"]["fp16"]["enabled"]
    assert prepare(PretrainArgs(**args, precision="fp32"), world_size=1)["ds_config"]["bf16"]["enabled"] is False


def test_finetuning_picks_precision_from_the_probe(bf16, tmp_path, glue_dir, minilm_dir):
    from bertspeed.finetune import run_glue
    for forced, expected in (("0", "fp32"), ("1", "bf16")):
        bf16(forced)
        out = tmp_path / forced
        run_glue.main(["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(minilm_dir), "--output_dir", str(out), "--num_train_epochs", "0",
                       "--max_eval_samples", "8", "--max_seq_length", "32", "--no_save_model", "--no_test_predictions"])
        run_config = json.loads((out / "run_config.json").read_text())
        assert run_config["precision"]["precision"] == expected and run_config["precision"]["source"] == "auto"
        assert run_config["host"]["precision"] == expected


def test_finetuning_fp16_without_deepspeed_trains_with_a_grad_scaler(tmp_path, glue_dir, minilm_dir, capsys):
    """The plain-PyTorch fp16 path (autocast + GradScaler), as on a GPU without DeepSpeed; CPU autocast runs it."""
    from bertspeed.finetune import run_glue
    out = tmp_path / "fp16"
    run_glue.main(["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(minilm_dir),
                   "--output_dir", str(out), "--fp16", "--num_train_epochs", "1", "--max_train_samples", "32", "--max_eval_samples", "8",
                   "--train_batch_size", "8", "--max_seq_length", "32", "--logging_steps", "1",
                   "--no_save_model", "--no_test_predictions"])
    assert "no fast fp16 math" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    norms = [r["optim/grad_norm"] for r in records if "train/loss" in r]
    # the norm is taken after the scaler unscaled the gradients (scaled ones would be ~65536x larger)
    assert len(norms) == 4 and all(0 < n < 100 for n in norms)
    assert json.loads((out / "run_config.json").read_text())["precision"]["precision"] == "fp16"
