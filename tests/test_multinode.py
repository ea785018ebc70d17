"""Multi-node on one machine: two "nodes" started as on a SLURM cluster, one `deepspeed` launcher per
node (`--hostfile` with two entries, `--no_ssh --node_rank K --master_addr`), one rank each, give the
same losses and final weights as one node with two ranks; for pretraining and for a finetune driver."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from pretrain_helpers import ROOT, VENV_BIN, ds_config, env, losses, make_shards, tiny_model_config
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
STEPS = 6


def launch(hostfile, script: str, args: list[str], port: int, nodes: int) -> None:
    """nodes == 2: two launchers, one per node as `srun` would start them; nodes == 1: --num_gpus 2."""
    deepspeed = str(VENV_BIN / "deepspeed")
    if nodes == 1:
        cmds = [[deepspeed, "--num_gpus", "2", "--master_port", str(port), script, *args]]
    else:
        cmds = [[deepspeed, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(k), "--master_addr",
                 "127.0.0.1", "--master_port", str(port), script, *args] for k in range(nodes)]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, f"{p.args} exited {p.returncode}\n{out[-4000:]}"


@pytest.fixture(scope="module")
def hostfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("hosts") / "hostfile"
    path.write_text("node-a slots=1\nnode-b slots=1\n")  # names are never resolved with --no_ssh
    return path


def assert_same_tensors(a: dict, b: dict, tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=lambda m: f"{key}: {m}")


def test_pretraining_on_two_nodes_equals_one_node(tmp_path, hostfile, squad_dev, vocab_file):
    shards = make_shards(tmp_path / "shards", squad_dev, vocab_file, num_shards=2)
    model = tiny_model_config(tmp_path / "model.json")
    ds = ds_config(tmp_path / "ds.json", micro=4, accumulation=1, world=2, stage=1)
    runs = {}
    for nodes in (2, 1):
        out = tmp_path / f"nodes{nodes}"
        launch(hostfile, "pretrain/run_pretraining.py",
               ["--deepspeed_config", str(ds), "--input_dir", str(shards), "--config_file", str(model),
                "--output_dir", str(out), "--max_steps", str(STEPS), "--checkpoint_interval", str(STEPS),
                "--precision", "fp32"],  # "auto" times a GEMM probe, which a loaded machine can flip
               port=29741 + nodes, nodes=nodes)
        assert json.loads((out / "run_config.json").read_text())["world_size"] == 2
        runs[nodes] = out
    two, one = losses(runs[2]), losses(runs[1])
    assert sorted(two) == list(range(1, STEPS + 1)) and two[STEPS] < two[1]
    assert two == pytest.approx(one, rel=1e-6, abs=1e-6)
    final = f"global_step{STEPS}/model.safetensors"
    assert_same_tensors(load_file(runs[2] / final), load_file(runs[1] / final))
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["ranks_identical"] and len(summary["rank_param_checksums"]) == 2


def test_finetuning_on_two_nodes_equals_one_node(tmp_path, hostfile, glue_dir, vocab_file):
    from bertspeed.model.checkpoint import save_pretrained
    from bertspeed.model.config import BertConfig
    from bertspeed.model.model import BertForPreTraining

    torch.manual_seed(0)
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), tmp_path / "hf", vocab_file=vocab_file)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    results = {}
    for nodes in (2, 1):
        out = tmp_path / f"nodes{nodes}"
        launch(hostfile, "finetune/run_glue.py",
               ["--task_name", "STS-B", "--data_dir", str(glue_dir / "STS-B"), "--model_dir", str(tmp_path / "hf"),
                "--output_dir", str(out), "--deepspeed_config", str(config), "--max_train_samples", "32",
                "--max_eval_samples", "50", "--train_batch_size", "8", "--num_train_epochs", "1",
                "--no_test_predictions", "--logging_steps", "1", "--precision", "fp32"], port=29751 + nodes, nodes=nodes)
        results[nodes] = out
    train = {n: [r for r in map(json.loads, (results[n] / "metrics.jsonl").read_text().splitlines())
                 if "train/loss" in r] for n in results}
    assert len(train[2]) == 4 and [r["step"] for r in train[2]] == [r["step"] for r in train[1]]
    assert [r["train/loss"] for r in train[2]] == pytest.approx([r["train/loss"] for r in train[1]], rel=1e-6)
    scores = {n: json.loads((results[n] / "eval_results.json").read_text()) for n in results}
    assert scores[2] == pytest.approx(scores[1], abs=1e-6)
    assert_same_tensors(load_file(results[2] / "model" / "model.safetensors"),
                        load_file(results[1] / "model" / "model.safetensors"))
