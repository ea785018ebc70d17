"""Two CPU ranks through the deepspeed launcher: a rank that dies or hangs makes the whole job exit
non-zero within a bounded time, never a hang. (Two-rank SIGKILL + resume: test_pretrain_zero.py.)"""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from fault_helpers import command, finish, start, wait_for_step
from pretrain_helpers import ds_config, make_shards, tiny_model_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DIST_TIMEOUT = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("faults_ranks")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2, paragraphs_per_shard=48)
    model = tiny_model_config(tmp / "model.json")
    ds = ds_config(tmp / "ds.json", micro=4, accumulation=1, world=2, stage=1, optimizer="AdamW", clipping=0.0)
    return tmp, shards, model, ds


def run_args(setup, name, steps):
    tmp, shards, model, ds = setup
    return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp / name), "--max_steps", str(steps), "--checkpoint_interval", "4",
            "--dist_timeout", str(DIST_TIMEOUT), "--warmup_steps", "2"]


def rank_process(launcher_pid: int, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children(recursive=True):
        cmdline = child.cmdline()
        if any(a.endswith("run_pretraining.py") for a in cmdline) and f"--local_rank={rank}" in cmdline:
            return child
    raise AssertionError(f"rank {rank} not found under the launcher {launcher_pid}")


def assert_no_survivors(pids):
    time.sleep(1)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left running: {alive}"


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_a_dead_or_hung_rank_ends_the_job_within_a_bound(setup, fault):
    """SIGKILL: the launcher sees the exit and terminates the other rank. SIGSTOP (a hung rank): the
    other rank's collective times out after --dist_timeout, it exits non-zero, the launcher then
    kills the stopped rank (SIGTERM, SIGKILL 30 s later). Bound: dist_timeout + 30 s + 60 s slack."""
    out = setup[0] / fault
    proc = start(command(run_args(setup, fault, steps=100000), ranks=2, port=29711 if fault == "sigkill" else 29712))
    try:
        assert wait_for_step(out, proc, 3, started=0)
        ranks = [rank_process(proc.pid, r) for r in (0, 1)]
        os.kill(ranks[1].pid, signal.SIGKILL if fault == "sigkill" else signal.SIGSTOP)
        code, stderr = finish(proc, timeout=DIST_TIMEOUT + 30 + 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0, stderr[-3000:]
    assert_no_survivors([p.pid for p in ranks])

