"""NVIDIA DeepLearningExamples' run_pretraining.py flags: aliases, the batch and precision flags that
override the DeepSpeed JSON (with a note), no-op flags (a note), refused flags, conflicts between two
spellings (an error naming both), and NVIDIA's README command line running end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from deepspeed.accelerator import get_accelerator
from pretrain_helpers import ROOT, ds_config, env, losses, make_shards, run_pretraining, tiny_model_config

from bertspeed.pretrain.args import BatchSizes, parse_args
from bertspeed.pretrain.nvidia import batch_override, loss_scale_override

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def required(tmp_path) -> list[str]:
    (tmp_path / "shards").mkdir()
    return ["--input_dir", str(tmp_path / "shards"), "--output_dir", str(tmp_path / "out"), "--max_steps", "5",
            "--model_preset", "tiny", "--deepspeed_config", str(ds_config(tmp_path / "ds.json"))]


def test_aliases_set_our_settings(required, capsys):
    args = parse_args([*required, "--num_steps_per_checkpoint=7", "--log_freq", "3", "--checkpoint_activations",
                       "--resume_from_checkpoint", "--amp", "--disable_progress_bar"])
    assert (args.checkpoint_interval, args.log_interval, args.gradient_checkpointing, args.resume) == (7, 3, True, True)
    assert (args.precision, args.fp16, args.disable_progress_bar) == ("fp16", True, True)
    # The same value under both spellings is no conflict.
    assert parse_args([*required, "--log_freq", "3", "--log_interval", "3"]).log_interval == 3
    assert "note" not in capsys.readouterr().out


def test_no_op_flags_print_a_note(required, capsys):
    args = parse_args([*required, "--bert_model", "bert-large-uncased", "--do_train", "--json-summary", "x.json",
                       "--allreduce_post_accumulation", "--use_env", "--num_train_epochs", "1", "--resume_step", "-1"])
    out = capsys.readouterr().out
    for flag in ("--bert_model", "--do_train", "--json-summary", "--allreduce_post_accumulation", "--use_env"):
        assert f"note: NVIDIA's {flag}: " in out, flag
    assert "--resume_step" not in out and args.max_steps == 5  # --max_steps ends the run, as in NVIDIA's script


@pytest.mark.parametrize("extra, message", [
    (["--num_steps_per_checkpoint", "7", "--checkpoint_interval", "8"],
     "--num_steps_per_checkpoint 7 and --checkpoint_interval 8 set the same setting (checkpoint_interval)"),
    (["--log_interval=2", "--log_freq=5"], "--log_interval 2 and --log_freq 5 set the same setting"),
    (["--fp16", "--precision", "bf16"], "--fp16 and --precision bf16 disagree"),
    (["--tensorboard", "--report_to", "none"], "--tensorboard and --report_to none disagree"),
    (["--skip_checkpoint"], "--skip_checkpoint cannot be honoured"),
    (["--resume_step", "12"], "--resume_step 12 cannot be honoured"),
    (["--steps_this_run", "2"], "--steps_this_run 2 cannot be honoured (it must equal --max_steps 5)"),
    (["--phase2"], "--phase2 needs --init_checkpoint"),
    (["--train_batch_size", "0"], "--train_batch_size must be positive, got 0"),
    (["--gradient_accumulation_steps", "-2"], "--gradient_accumulation_steps must be positive, got -2"),
    (["--loss_scale", "-1"], "--loss_scale must be >= 0 (0: dynamic), got -1.0"),
    (["--init_loss_scale", "1000"], "--init_loss_scale must be a power of 2, got 1000"),
    (["--max_seq_length", "0"], "--max_seq_length must be positive, got 0"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0, got nan"),
    (["--report_to", "wandb"], "argument --report_to: invalid choice: 'wandb'"),
    (["--log_freq", "often"], "argument --log_interval/--log_freq: invalid int value: 'often'"),
])
def test_bad_values_and_conflicts_exit_2_naming_both(required, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        parse_args([*required, *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_deepspeed_config_needs_the_nvidia_batch(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    base = ["--input_dir", str(tmp_path / "shards"), "--output_dir", str(tmp_path / "out"), "--max_steps", "5",
            "--model_preset", "tiny"]
    with pytest.raises(SystemExit):
        parse_args(base)
    assert "--deepspeed_config is required (or NVIDIA's --train_batch_size" in capsys.readouterr().err
    assert parse_args([*base, "--train_batch_size", "8"]).deepspeed_config is None


class Flags:
    def __init__(self, train_batch_size=None, gradient_accumulation_steps=None, loss_scale=None,
                 init_loss_scale=None):
        self.train_batch_size, self.gradient_accumulation_steps = train_batch_size, gradient_accumulation_steps
        self.loss_scale, self.init_loss_scale = loss_scale, init_loss_scale


@pytest.mark.parametrize("flags, world, expected", [
    (Flags(), 2, (4, 2, 16)),                                   # the JSON's own
    (Flags(12, 3), 2, (4, 3, 24)),                              # NVIDIA: micro = train_batch_size / accumulation
    (Flags(train_batch_size=16), 1, (8, 2, 16)),                # the JSON's accumulation
    (Flags(gradient_accumulation_steps=5), 2, (4, 5, 40)),      # the JSON's micro-batch
])
def test_batch_flags_override_the_json_with_a_note(capsys, flags, world, expected):
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 8 * world}
    out = batch_override(config, flags, world, "--deepspeed_config ds.json", BatchSizes(4, 2, world))
    keys = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
    assert tuple(out[k] for k in keys) == expected
    printed = capsys.readouterr().out
    overridden = flags.train_batch_size is not None or flags.gradient_accumulation_steps is not None
    assert ("NVIDIA's batch flags override --deepspeed_config ds.json" in printed) == overridden
    with pytest.raises(ValueError, match="--train_batch_size 10 is not divisible by --gradient_accumulation_steps "
                                         "gradient_accumulation_steps 4"):
        batch_override(config, Flags(10, 4), 1, "ds.json", None)
    with pytest.raises(ValueError, match="--train_batch_size 9 is not divisible by ds.json's"):
        batch_override(config, Flags(9), 1, "ds.json", BatchSizes(4, 2, 1))


def test_loss_scale_flags_fill_the_fp16_section(capsys):
    config = {"fp16": {"enabled": True, "initial_scale_power": 12, "loss_scale_window": 100}}
    out = loss_scale_override(config, Flags(loss_scale=0.0, init_loss_scale=2 ** 20), "fp16", "ds.json")
    assert out["fp16"] == {"enabled": True, "initial_scale_power": 20, "loss_scale_window": 100, "loss_scale": 0.0}
    assert loss_scale_override(config, Flags(loss_scale=128.0), "fp32", "ds.json") is config
    assert "--loss_scale ignored: the precision is fp32" in capsys.readouterr().out


def run_with_fp16_allowed(args: list[str]) -> subprocess.CompletedProcess:
    """run_pretraining.py with DeepSpeed's CPU accelerator told that fp16 is supported (it refuses fp16
    without oneDNN fp16 kernels; the training code is the same), as tests/test_faults_fp16.py does."""
    shim = ("import runpy, sys; from deepspeed.accelerator import get_accelerator; "
            "get_accelerator().is_fp16_supported = lambda: True; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", shim, str(ROOT / "pretrain" / "run_pretraining.py"), *args],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_nvidia_readme_command_line_runs(tmp_path, squad_dev, vocab_file):
    """NVIDIA's README phase-1 command (scripts/run_pretraining.sh) with the paths swapped, a tiny model,
    a batch of 8 in 2 micro-batches instead of 65536/128, and 3 steps instead of 7038."""
    shards = make_shards(tmp_path / "hdf5_seq_128", squad_dev, vocab_file, num_shards=1, seq_len=128, max_pred=20,
                         paragraphs_per_shard=40)
    config = tiny_model_config(tmp_path / "bert_config.json")
    out = tmp_path / "results" / "checkpoints"
    line = (f"--input_dir={shards} --output_dir={out} --config_file={config} --bert_model=bert-large-uncased "
            "--train_batch_size=8 --max_seq_length=128 --max_predictions_per_seq=20 --max_steps=3 "
            "--warmup_proportion=0.2843 --num_steps_per_checkpoint=2 --learning_rate=6e-3 --seed=12439 --fp16 "
            "--gradient_accumulation_steps=2 --allreduce_post_accumulation --allreduce_post_accumulation_fp16 "
            f"--do_train --json-summary {tmp_path / 'results' / 'dllogger.json'}").split()
    proc = run_with_fp16_allowed(line)
    assert "no --deepspeed_config: using the built-in DeepSpeed config" in proc.stdout
    assert "train_micro_batch_size_per_gpu 4, gradient_accumulation_steps 2, train_batch_size 8" in proc.stdout
    assert "note: NVIDIA's --allreduce_post_accumulation_fp16: ignored" in proc.stdout
    run = json.loads((out / "run_config.json").read_text())
    assert run["batch"] == {"micro": 4, "accumulation": 2, "global": 8}
    assert run["precision"]["precision"] == "fp16" and run["deepspeed_config"]["fp16"]["enabled"] is True
    assert run["args"]["checkpoint_interval"] == 2 and run["args"]["seed"] == 12439
    assert sorted(p.name for p in out.glob("global_step*")) == ["global_step2", "global_step3"]
    assert sorted(losses(out)) == [1, 2, 3] and not (tmp_path / "results" / "dllogger.json").exists()
    assert "optim/loss_scale" in json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # Where DeepSpeed refuses fp16 (this CPU), the run stops before writing anything, naming the flag.
    other = [*line[:1], f"--output_dir={tmp_path / 'other'}", *line[2:]]
    proc = run_pretraining(other, ranks=0, check=False)
    if get_accelerator().is_fp16_supported():
        assert proc.returncode == 0
    else:
        assert proc.returncode == 2 and not (tmp_path / "other").exists() and "Traceback" not in proc.stderr
        assert "--fp16 asks for fp16, which DeepSpeed does not support on this device" in proc.stderr


def test_max_seq_length_must_match_the_shards(tmp_path, squad_dev, vocab_file):
    from bertspeed.pretrain.run_pretraining import prepare

    shards = make_shards(tmp_path / "shards", squad_dev, vocab_file, num_shards=1, paragraphs_per_shard=8)
    args = parse_args(["--input_dir", str(shards), "--output_dir", str(tmp_path / "out"), "--max_steps", "3",
                       "--config_file", str(tiny_model_config(tmp_path / "c.json")), "--train_batch_size", "4",
                       "--learning_rate", "1e-3", "--max_seq_length", "128"])
    with pytest.raises(ValueError, match=f"--max_seq_length 128 disagrees with the shards in --input_dir {shards}, "
                                         "whose sequence length is 64"):
        prepare(args, world_size=1)
    assert not (tmp_path / "out").exists()
