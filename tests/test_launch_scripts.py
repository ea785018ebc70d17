"""The shell scripts (pretrain/run_phase1.sh, run_phase2.sh, finetune/run_glue.sh, run_squad.sh) launch
through DeepSpeed on the hosts of HOSTFILE, else on NUM_GPUS local ranks, with LAUNCHER_ARGS passed to
the launcher. A `deepspeed` stand-in first on PATH records the command each script runs; one real
launch goes through a hostfile on this machine."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from pretrain_helpers import ROOT, VENV_BIN, ds_config, env, losses, make_shards

pytestmark = pytest.mark.timeout(300)
SCRIPTS = {  # script -> positional arguments, the Python script it launches
    "pretrain/run_phase1.sh": (["SHARDS", "OUT"], "pretrain/run_pretraining.py"),
    "pretrain/run_phase2.sh": (["SHARDS", "PHASE1", "OUT"], "pretrain/run_pretraining.py"),
    "finetune/run_glue.sh": (["MODEL", "GLUE", "MRPC", "OUT", "2"], "finetune/run_glue.py"),
    "finetune/run_squad.sh": (["MODEL", "TRAIN.json", "DEV.json", "OUT", "2"], "finetune/run_squad.py"),
}


@pytest.fixture
def recorded(tmp_path):
    """Run a script with a stand-in `deepspeed` that writes its arguments as JSON; returns them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "deepspeed"
    stub.write_text('#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n')
    stub.chmod(0o755)

    def run(script: str, args: list[str], **variables) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("HOSTFILE", "LAUNCHER_ARGS", "NUM_GPUS")}
        environ.update(PATH=f"{bin_dir}:{os.environ['PATH']}", **variables)
        proc = subprocess.run(["bash", str(ROOT / script), *args], env=environ, capture_output=True, text=True,
                              timeout=30, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])
    return run


@pytest.mark.parametrize("script", SCRIPTS)
def test_hostfile_and_launcher_args_reach_the_launcher(recorded, script):
    args, target = SCRIPTS[script]
    argv = recorded(script, args, HOSTFILE="hosts.txt", LAUNCHER_ARGS="--no_ssh --master_addr 10.0.0.1")
    launcher = argv[:argv.index(next(a for a in argv if a.endswith(target)))]
    assert launcher == ["--hostfile", "hosts.txt", "--no_ssh", "--master_addr", "10.0.0.1"]
    argv = recorded(script, args, NUM_GPUS="2")  # the pretraining scripts read NUM_GPUS from the environment
    launcher = argv[:argv.index(next(a for a in argv if a.endswith(target)))]
    assert launcher == ["--num_gpus", "2"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_still_prints_the_usage(script):
    proc = subprocess.run(["bash", str(ROOT / script), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "HOSTFILE" in proc.stdout and "LAUNCHER_ARGS" in proc.stdout


def test_phase1_through_a_hostfile_on_this_machine(tmp_path, squad_dev, vocab_file):
    """A real launch: deepspeed --hostfile with this machine as the one node (no ssh), two steps."""
    shards = make_shards(tmp_path / "shards", squad_dev, vocab_file, num_shards=1, paragraphs_per_shard=24)
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=1\n")
    environ = {**env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOSTFILE": str(hosts), "MODEL": "tiny",
               "LAUNCHER_ARGS": "--no_ssh --node_rank 0 --master_addr 127.0.0.1 --master_port 29631",
               "DS_CONFIG": str(ds_config(tmp_path / "ds.json", micro=4, accumulation=1)), "MAX_STEPS": "2",
               "CKPT_INTERVAL": "2", "VOCAB_FILE": str(vocab_file)}
    proc = subprocess.run(["bash", str(ROOT / "pretrain" / "run_phase1.sh"), str(shards), str(tmp_path / "out")],
                          env=environ, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(losses(tmp_path / "out")) == [1, 2]
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["world_size"] == 1
