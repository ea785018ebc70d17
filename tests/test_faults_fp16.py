"""fp16 with NaN injected into the loss (BERTSPEED_FAULT_NAN_STEPS, a test-only hook of
pretrain/trainer.py): the step is skipped and the loss scale backs off; after --max_bad_steps bad
steps in a row, or an overflow with the loss scale at its floor, the run exits 3 with a clear
message and a checkpoint of the last good state, which resumes.

DeepSpeed's CPU accelerator reports fp16 unsupported unless oneDNN has fp16 kernels (no AMX-FP16
here), and refuses fp16 on that flag alone; the loss-scaling code under test is device independent,
so the runs below set the flag to True first (and nothing else)."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from fault_helpers import SCRIPT, finish, latest_step, start
from pretrain_helpers import losses, make_shards, tiny_model_config
from safetensors.torch import load_file

pytestmark = pytest.mark.timeout(600)
FP16_ON_CPU = ("import runpy, sys; from deepspeed.accelerator import get_accelerator; "
               "get_accelerator().is_fp16_supported = lambda: True; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("faults_fp16")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2, paragraphs_per_shard=48)
    return tmp, shards, tiny_model_config(tmp / "model.json")


def fp16_run(setup, name, steps, nan_steps, initial_scale_power=12, max_bad_steps=3, resume=False):
    tmp, shards, model = setup
    ds = tmp / f"{name}.json"
    ds.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-3, "weight_decay": 0.01}},
        "fp16": {"enabled": True, "initial_scale_power": initial_scale_power, "loss_scale_window": 1000,
                 "hysteresis": 1, "min_loss_scale": 1}}))
    args = ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp / name), "--max_steps", str(steps), "--checkpoint_interval", "2",
            "--keep_checkpoints", "100", "--max_bad_steps", str(max_bad_steps), "--warmup_steps", "0"]
    proc = start([sys.executable, "-c", FP16_ON_CPU, SCRIPT, *args, *(["--resume"] if resume else [])],
                 {"BERTSPEED_FAULT_NAN_STEPS": ",".join(map(str, nan_steps))})
    code, stderr = finish(proc, timeout=300)
    return tmp / name, code, stderr


def weights(out, step):
    return load_file(out / f"global_step{step}" / "model.safetensors")


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_steps_are_skipped_then_too_many_stop_with_the_last_good_state(setup):
    out, code, stderr = fp16_run(setup, "bad_run", steps=20, nan_steps=[3, 4, 7, 8, 9, 10])
    assert code == 3, stderr[-3000:]
    assert "3 bad steps in a row" in stderr and "up to step 9" in stderr
    assert "last good checkpoint: global_step9" in stderr
    scale = losses(out, "optim/loss_scale")
    skipped = losses(out, "optim/skipped_steps")
    # each NaN step is skipped and halves the scale; a good step leaves it (window 1000)
    assert [scale[s] for s in range(1, 10)] == [4096, 4096, 2048, 1024, 1024, 1024, 512, 256, 128]
    assert [skipped[s] for s in range(1, 10)] == [0, 0, 1, 2, 2, 2, 3, 4, 5]
    assert all(losses(out)[s] is None for s in (3, 4, 7, 8, 9))  # non-finite: null
    # two skipped steps (3, 4) recovered: training went on; 7-9 changed nothing before the stop
    assert not same(weights(out, 6), weights(out, 2))
    assert same(weights(out, 9), weights(out, 6))
    assert latest_step(out) == 9 and not (out / "global_step10").exists()
    # the checkpoint of the last good state resumes (with the NaN source gone)
    _, code, stderr = fp16_run(setup, "bad_run", steps=11, nan_steps=[], resume=True)
    assert code == 0, stderr[-3000:]
    assert latest_step(out) == 11 and all(isinstance(losses(out)[s], float) for s in (10, 11))


def test_overflow_at_the_loss_scale_floor_stops_the_run(setup):
    out, code, stderr = fp16_run(setup, "floor", steps=20, nan_steps=range(3, 21), initial_scale_power=2,
                                 max_bad_steps=0)  # 0: no limit on bad steps; only the floor stops it
    assert code == 3, stderr[-3000:]
    assert "step 4 overflowed and the fp16 loss scale is at its floor (1, fp16.min_loss_scale)" in stderr
    assert "Traceback" not in stderr
    assert latest_step(out) == 4 and same(weights(out, 4), weights(out, 2))
