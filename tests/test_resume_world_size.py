"""Resume on another world size or ZeRO stage (issue 19): a checkpoint of step 2 resumed 2 -> 1 and
1 -> 2 ranks at ZeRO 1 and 2 (also 2 -> 0, and THOR 1 -> 2) gives, at steps 3 and 4, the losses of the
uninterrupted runs on 1 and on 2 ranks to 1e-6, with dropout on (its masks are drawn per global
micro-batch); a different global batch or model is refused naming the difference."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from pretrain_helpers import ds_config, losses, make_shards, run_pretraining, tiny_model_config

from bertspeed.model.checkpoint import CheckpointError
from bertspeed.model.config import BertConfig
from bertspeed.pretrain.checkpoint import check_config
from bertspeed.training.runs import write_latest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
STEPS, MICRO, GLOBAL = 4, 4, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, squad_dev, vocab_file):
    tmp = tmp_path_factory.mktemp("world size")
    shards = make_shards(tmp / "shards", squad_dev, vocab_file, num_shards=2, paragraphs_per_shard=48)
    return tmp, shards, tiny_model_config(tmp / "model.json")


def args_for(setup, name, stage, world, global_batch=GLOBAL):
    tmp, shards, model = setup
    ds = ds_config(tmp / f"{name}.json", micro=MICRO, accumulation=global_batch // (MICRO * world), world=world,
                   stage=stage, lr=0.02)
    return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
            "--output_dir", str(tmp / name), "--max_steps", str(STEPS), "--checkpoint_interval", "2",
            "--warmup_steps", "2", "--precision", "fp32"]


def launch(args, world, port=29671):
    """world 1: one plain process; 2: two ranks through the deepspeed launcher."""
    return run_pretraining(args, ranks=0 if world == 1 else world, port=port)


@pytest.fixture(scope="module")
def references(setup):
    """Uninterrupted runs: 2 ranks at ZeRO 1, 1 rank at ZeRO 2, the same global batch of 16."""
    launch(args_for(setup, "two_ranks_z1", 1, 2), 2)
    launch(args_for(setup, "one_rank_z2", 2, 1), 1)
    return {2: losses(setup[0] / "two_ranks_z1"), 1: losses(setup[0] / "one_rank_z2")}


def resume_from_step2(setup, source, name, stage, world, port=29672):
    """A copy of `source` whose latest checkpoint is step 2, resumed to step 4 with `world` ranks at `stage`."""
    tmp = setup[0]
    shutil.copytree(tmp / source, tmp / name)
    write_latest(tmp / name, "global_step2")
    proc = launch([*args_for(setup, name, stage, world), "--resume"], world, port)
    assert "re-partitioning" in proc.stdout
    assert json.loads((tmp / name / "run_config.json").read_text())["resumed_from_step"] == 2
    return losses(tmp / name)


def assert_losses_equal(got, references):
    assert sorted(got) == list(range(1, STEPS + 1))
    for world, reference in references.items():
        for step in range(3, STEPS + 1):
            assert got[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), (world, step)


def test_uninterrupted_runs_agree_across_world_sizes(references):
    assert references[1][STEPS] < references[1][1]
    assert_losses_equal(references[2], {1: references[1]})


@pytest.mark.parametrize("stage", [1, 2, 0])
def test_two_ranks_to_one(setup, references, stage):
    assert_losses_equal(resume_from_step2(setup, "two_ranks_z1", f"to_one_z{stage}", stage, 1), references)


@pytest.mark.parametrize("stage", [2, 1])
def test_one_rank_to_two(setup, references, stage):
    got = resume_from_step2(setup, "one_rank_z2", f"to_two_z{stage}", stage, 2, port=29673 + stage)
    assert_losses_equal(got, references)


def test_another_global_batch_is_refused(setup, references):
    tmp = setup[0]
    shutil.copytree(tmp / "two_ranks_z1", tmp / "batch32")
    proc = run_pretraining([*args_for(setup, "batch32", 1, 1, global_batch=32), "--resume"], ranks=0, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "global batch of 16" in proc.stderr and "this run's is 32" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_another_model_is_refused(setup, references):
    folder = setup[0] / "two_ranks_z1" / "global_step2"
    other = dataclasses.replace(BertConfig.from_json_file(setup[2]), hidden_size=128)
    with pytest.raises(CheckpointError, match="hidden_size 64 in the checkpoint, 128 now"):
        check_config(folder, other)


def test_thor_one_rank_to_two(setup):
    """THOR (ZeRO 0: its momentum and inverses are not partitioned) resumed 1 -> 2 ranks; its factors are
    averaged over micro-batches and ranks alike, so the losses equal the 1-rank run's."""
    tmp, shards, model = setup

    def thor_args(name, world):
        ds = ds_config(tmp / f"{name}.json", micro=MICRO, accumulation=GLOBAL // (MICRO * world), world=world,
                       optimizer="THOR", clipping=0.0)
        config = json.loads(ds.read_text())
        config["optimizer"]["params"] = {"lr": 2e-3, "damping": 0.05, "damping_min": 0.01, "frequency": 2,
                                         "split_dim": 32}
        ds.write_text(json.dumps(config))
        return ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
                "--output_dir", str(tmp / name), "--max_steps", str(STEPS), "--checkpoint_interval", "2",
                "--warmup_steps", "1", "--precision", "fp32"]

    launch(thor_args("thor_one", 1), 1)
    shutil.copytree(tmp / "thor_one", tmp / "thor_two")
    write_latest(tmp / "thor_two", "global_step2")
    launch([*thor_args("thor_two", 2), "--resume"], 2, port=29676)
    assert json.loads((tmp / "thor_two" / "run_config.json").read_text())["optimizer"] == "thor"
    assert_losses_equal(losses(tmp / "thor_two"), {1: losses(tmp / "thor_one")})
