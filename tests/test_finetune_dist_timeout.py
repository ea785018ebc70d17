"""A finetuning rank that hangs does not stall the job: two CPU ranks through the deepspeed launcher,
the second one SIGSTOPped part-way through training; the other rank's collective fails after
--dist_timeout and the job exits non-zero within a bound. (Pretraining's version: test_faults_ranks.py.)"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
from fault_helpers import finish, start, wait_for_step
from test_finetune_drivers import ROOT, tiny_model  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
DIST_TIMEOUT = 20
LAUNCHER_GRACE = 30  # the deepspeed launcher's wait between SIGTERM and SIGKILL of the remaining ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_process(launcher_pid: int, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children(recursive=True):
        cmdline = child.cmdline()
        if any(a.endswith("run_glue.py") for a in cmdline) and f"--local_rank={rank}" in cmdline:
            return child
    raise AssertionError(f"rank {rank} not found under the launcher {launcher_pid}")


def kill_leftovers(proc, ranks) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for rank in ranks:
        try:
            rank.kill()  # a stopped process dies of SIGKILL too
        except psutil.NoSuchProcess:
            pass


def alive(ranks) -> list[int]:
    """The pids of `ranks` still running (zombies do not count)."""
    time.sleep(1)
    running = []
    for rank in ranks:
        try:
            if rank.is_running() and rank.status() != psutil.STATUS_ZOMBIE:
                running.append(rank.pid)
        except psutil.NoSuchProcess:
            pass
    return running


def test_a_hung_rank_ends_a_two_rank_finetune_within_the_timeout(tmp_path, glue_dir, tiny_model):  # noqa: F811
    """32 MRPC pairs, batch 8 over 2 ranks, practically endless epochs: after 2 logged steps rank 1 is
    stopped; rank 0 fails in its next collective after --dist_timeout, the launcher then kills rank 1
    (SIGTERM, SIGKILL 30 s later). Bound: dist_timeout + 30 s + 60 s slack."""
    out = tmp_path / "out"
    launcher = Path(sys.executable).parent / "deepspeed"
    script = ROOT / "finetune" / "run_glue.py"
    command = [str(launcher), "--num_gpus", "2", "--master_port", str(free_port()), str(script),
               "--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(tiny_model / "hf"),
               "--output_dir", str(out), "--max_train_samples", "32", "--max_eval_samples", "16",
               "--max_seq_length", "64", "--train_batch_size", "8", "--num_train_epochs", "10000",
               "--logging_steps", "1", "--no_test_predictions", "--no_save_model",
               "--dist_timeout", str(DIST_TIMEOUT)]
    started = time.time()
    proc = start(command)
    ranks = []
    try:
        assert wait_for_step(out, proc, 2, started=started, timeout=300), "the run ended before training"
        ranks = [rank_process(proc.pid, r) for r in (0, 1)]
        os.kill(ranks[1].pid, signal.SIGSTOP)
        stopped = time.time()
        code, stderr = finish(proc, timeout=DIST_TIMEOUT + LAUNCHER_GRACE + 60)
        took = time.time() - stopped
        survivors = alive(ranks)
    finally:
        kill_leftovers(proc, ranks)
    assert code != 0 and "Timed out" in stderr, stderr[-3000:]  # gloo's collective timeout
    assert took >= DIST_TIMEOUT * 0.9, f"ended {took:.0f} s after the stop: not by the collective timeout"
    assert not survivors, f"processes left running: {survivors}"
