"""Preemption however the signal arrives, on a 2-rank run through the deepspeed launcher: SIGTERM to
the `deepspeed` launcher process alone (as a container runtime sends it to PID 1), to the whole
process group (as a scheduler does), and to one rank. Each gives a checkpoint of the step the ranks
stopped at, exit 143 (the ranks'; the launcher's own where it outlives them), no process left running,
and the stops are chained with --resume: every loss equals an uninterrupted run's bit for bit. The
same with `bertspeed supervise` in front of the launcher, signalled alone."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from pretrain_helpers import ROOT, VENV_BIN, ds_config, env, losses, make_shards, run_pretraining, tiny_model_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
STEPS = 40
SCRIPT = str(ROOT / "pretrain" / "run_pretraining.py")


def group_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session (the test starts each run in a session of its own)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            out.append(f"{pid} {Path(f'/proc/{pid}/wchan').read_text()} {args}")
        except OSError:
            pass
    return out


def rank_pid(sid: int, local_rank: int) -> int:
    for pid in group_members(sid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if SCRIPT.encode() in cmdline and f"--local_rank={local_rank}".encode() in cmdline:
            return pid
    raise AssertionError(f"rank {local_rank} not found in session {sid}")


class Run:
    """The deepspeed launcher with 2 ranks in a session of its own; all output in one file."""

    def __init__(self, args: list[str], port: int, supervised: bool = False, script: str = SCRIPT):
        self.log = tempfile.TemporaryFile("w+")
        cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port), script, *args]
        if supervised:
            cmd = [str(VENV_BIN / "python"), "-m", "bertspeed.training.supervise", "--", *cmd]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=self.log, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

    def wait_for_step(self, out: Path, step: int, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            config = out / "run_config.json"
            if config.exists() and config.stat().st_mtime >= self.started and max(losses(out), default=0) >= step:
                return
            time.sleep(0.01)
        raise AssertionError(f"step {step} not reached (exit {self.proc.poll()}):\n{self.output()[-3000:]}")

    def finish(self, timeout: float = 150) -> tuple[int, str]:
        """The launcher's exit code and the output, once every process of the group has ended."""
        deadline = time.time() + timeout
        try:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"launcher still running after {timeout} s; group "
                                     f"{describe(group_members(self.proc.pid))}\n{self.output()[-5000:]}") from None
            while group_members(self.proc.pid) and time.time() < deadline:
                time.sleep(0.1)
            left = group_members(self.proc.pid)
            assert not left, f"processes left running: {left}\n{self.output()[-3000:]}"
        finally:
            for pid in group_members(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
        return self.proc.returncode, self.output()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("launcher")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2, paragraphs_per_shard=48)
    model = tiny_model_config(tmp / "model.json")
    ds = ds_config(tmp / "ds.json", micro=4, accumulation=1, world=2, stage=1)
    return tmp, shards, model, ds


def run_args(setup, name: str) -> list[str]:
    tmp, shards, model, ds = setup
    return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp / name), "--max_steps", str(STEPS), "--checkpoint_interval", "1000",
            "--keep_checkpoints", "10", "--warmup_steps", "2", "--precision", "fp32"]  # not a timing probe's choice


def assert_stopped_with_checkpoint(out: Path, after: int, output: str) -> int:
    """The ranks stopped at step `after` or later, with a checkpoint of exactly that step."""
    stopped = max(losses(out))
    assert after <= stopped < STEPS, (after, stopped)
    assert (out / "latest").read_text().strip() == f"global_step{stopped}", output[-3000:]
    for rank in (0, 1):
        assert (out / f"global_step{stopped}" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert f"stopping at step {stopped} (" in output and "exit 143" in output, output[-3000:]
    return stopped


def test_sigterm_to_launcher_group_one_rank_or_supervisor_checkpoints_and_resumes_exactly(setup):
    reference = setup[0] / "reference"
    run_pretraining(run_args(setup, "reference"), ranks=2, port=29761)
    out, args = setup[0] / "chained", run_args(setup, "chained")

    # 1. the launcher process alone: DeepSpeed's runner dies at once (no handler); the ranks notice
    run = Run(args, port=29762)
    run.wait_for_step(out, 3)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, output = run.finish()
    assert code == -signal.SIGTERM  # the shell's 143: it was killed by the signal
    stopped = assert_stopped_with_checkpoint(out, 3, output)
    assert "launcher process" in output and "exits with return code = 143" in output  # the ranks' exit

    # 2. the process group: the ranks' handlers (and the per-node launcher forwarding it again)
    run = Run([*args, "--resume"], port=29763)
    run.wait_for_step(out, stopped + 3)
    os.killpg(run.proc.pid, signal.SIGTERM)
    code, output = run.finish()
    assert code == -signal.SIGTERM
    stopped = assert_stopped_with_checkpoint(out, stopped + 3, output)
    assert "(SIGTERM)" in output

    # 3. one rank: the others learn it through the per-step all-reduce; the launcher exits 143
    run = Run([*args, "--resume"], port=29764)
    run.wait_for_step(out, stopped + 3)
    os.kill(rank_pid(run.proc.pid, 1), signal.SIGTERM)
    code, output = run.finish()
    assert code == 143, output[-3000:]
    stopped = assert_stopped_with_checkpoint(out, stopped + 3, output)
    assert "another rank was signalled" in output

    # 4. the supervisor (bertspeed supervise) alone, as PID 1 of a container gets it: it stays until all exited
    run = Run([*args, "--resume"], port=29765, supervised=True)
    run.wait_for_step(out, stopped + 3)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, output = run.finish()
    assert code == 143, output[-3000:]
    stopped = assert_stopped_with_checkpoint(out, stopped + 3, output)
    assert "launcher process" in output

    got, want = losses(out), losses(reference)
    assert sorted(got) == list(range(1, stopped + 1))
    assert got == {step: want[step] for step in got}  # the steps after each resume, bit for bit


RANK_PROGRAM = """
import os, sys, time
from bertspeed.training.signals import StopOnSignal, launcher_ancestors
stop = StopOnSignal()
print(" ".join(map(str, launcher_ancestors())), flush=True)
sys.stdin.readline()  # the test kills the launcher, then writes a line
deadline = time.time() + 30
while not stop.agreed("cpu") and time.time() < deadline:
    time.sleep(0.01)
print(stop.flag, stop.reason, flush=True)
"""


def test_a_rank_notices_its_launchers_exit(tmp_path):
    """A "runner" named like DeepSpeed's starts a per-node "launcher" (named like torchrun) that starts a
    "rank": the rank lists both as its launchers and, once the runner alone is SIGKILLed (the launcher
    lives on, as DeepSpeed's does), stops as on SIGTERM. Under pytest (no launcher) nothing is watched."""
    spawn = "import subprocess, sys\nsubprocess.run([sys.executable, *sys.argv[1:]])\n"
    for name in ("deepspeed", "torchrun"):
        (tmp_path / name).write_text(spawn)
    cmd = [str(VENV_BIN / "python"), str(tmp_path / "deepspeed"), str(tmp_path / "torchrun"), "-c", RANK_PROGRAM]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        ancestors = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(ancestors) == 2 and ancestors[1] == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == f"True launcher process {proc.pid} exited"
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    from bertspeed.training.signals import launcher_ancestors

    assert launcher_ancestors() == []


ORPHAN_MAKER = """
import os, signal, subprocess, sys, time
# a "rank" that ignores SIGTERM and outlives its "launcher", which dies on SIGTERM
subprocess.Popen([sys.executable, "-c", "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('rank', os.getpid(), flush=True); time.sleep(120)"])
time.sleep(120)
"""


def test_supervise_adopts_orphans_and_kills_them_after_the_grace_period():
    """The launcher dies at once on SIGTERM; its orphaned child ignores SIGTERM. The supervisor adopts it,
    SIGKILLs it --grace_seconds after the signal and only then exits; exit codes pass through otherwise."""
    supervise = [str(VENV_BIN / "python"), "-m", "bertspeed.training.supervise"]
    assert subprocess.run([*supervise, "--", "sh", "-c", "exit 3"], cwd=ROOT, env=env()).returncode == 3
    proc = subprocess.Popen([*supervise, "--grace_seconds", "2", "--", str(VENV_BIN / "python"), "-c", ORPHAN_MAKER],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    rank = None
    try:
        word, rank = proc.stdout.readline().split()
        assert word == "rank" and Path(f"/proc/{rank}").exists()
        os.kill(proc.pid, signal.SIGTERM)
        started = time.time()
        code = proc.wait(timeout=30)
        assert 2 <= time.time() - started < 20
        assert code == 1  # signalled, but a process had to be killed: no clean 143
        assert "SIGTERM: stopping the job" in proc.stderr.read()
        assert not Path(f"/proc/{rank}").exists()  # killed and reaped by the supervisor
    finally:
        for pid in [proc.pid, *group_members(proc.pid), *([int(rank)] if rank else [])]:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def test_finetuning_stops_with_a_checkpoint_when_its_launcher_alone_is_signalled(tmp_path, glue_dir, vocab_file):
    """The same launcher watch serves the finetune drivers: run_glue.py on 2 ranks, SIGTERM to `deepspeed` alone."""
    from bertspeed.model.checkpoint import save_pretrained
    from bertspeed.model.config import BertConfig
    from bertspeed.model.model import BertForPreTraining

    torch.manual_seed(0)
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), tmp_path / "hf", vocab_file=vocab_file)
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 1}}')
    out = tmp_path / "out"
    run = Run(["--task_name", "STS-B", "--data_dir", str(glue_dir / "STS-B"), "--model_dir", str(tmp_path / "hf"),
               "--output_dir", str(out), "--deepspeed_config", str(tmp_path / "ds.json"), "--max_train_samples", "32",
               "--max_eval_samples", "16", "--train_batch_size", "8", "--num_train_epochs", "50", "--logging_steps", "1",
               "--no_test_predictions", "--precision", "fp32"], port=29767, script=str(ROOT / "finetune" / "run_glue.py"))
    run.wait_for_step(out, 3)
    os.kill(run.proc.pid, signal.SIGTERM)
    code, output = run.finish()
    assert code == -signal.SIGTERM
    stopped = max(losses(out))
    assert 3 <= stopped < 200 and (out / "latest").read_text().strip() == f"global_step{stopped}", output[-3000:]
    assert "launcher process" in output and f"stopped by a signal at step {stopped}" in output
    assert "exits with return code = 143" in output


@pytest.mark.parametrize("pidfds", [True, False])
def test_launcher_watch_sees_an_exit_with_or_without_pidfds(monkeypatch, pidfds):
    """With pidfds, and without them (kernels before 5.3, seccomp: /proc and the start time instead, zombies
    counted as exited), a watched process is reported once it has exited, and not before."""
    import errno

    from bertspeed.training.signals import LauncherWatch

    if not pidfds:
        def no_pidfd(pid):
            raise OSError(errno.ENOSYS, "pidfd_open not implemented")
        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    child = subprocess.Popen(["sleep", "60"])
    try:
        watch = LauncherWatch([child.pid], deathsig=False)
        assert watch.gone() == []
        child.kill()
        time.sleep(0.2)  # not yet reaped: a zombie
        assert watch.gone() == [child.pid]
        child.wait()
        assert watch.gone() == [child.pid]
        watch.close()
    finally:
        child.kill()
        child.wait()


def test_a_signal_during_the_all_reduce_stops_every_rank_at_the_same_step(monkeypatch):
    """SIGTERM handled just after this rank's contribution to the all-reduce: the other ranks saw 0, so this
    step must not stop here either (it stops at the next one with all of them), or it would wait in the
    checkpoint's barrier while they run the next step (seen as a 30 s hang and no checkpoint)."""
    import torch.distributed as dist

    from bertspeed.training.signals import StopOnSignal

    stop = StopOnSignal(watch_launcher=False)
    try:
        def all_reduce_then_signal(tensor, op=None):  # every rank contributed 0; the signal lands now
            stop._handle(signal.SIGTERM, None)

        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
        monkeypatch.setattr(dist, "all_reduce", all_reduce_then_signal)
        assert stop.agreed("cpu") is False and stop.flag  # this step goes on; the flag waits
        monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: None)
        assert stop.agreed("cpu") is True  # the next step: every rank sees it
    finally:
        stop.flag = False
        stop.restore()
