"""Hugging Face's spellings of the finetuning flags (run_glue.py / run_qa.py / run_ner.py): the same
settings spelled either way give the same eval_results.json; --do_* steps run alone; the batch
meaning; TensorBoard events read back with tensorboard's EventAccumulator equal metrics.jsonl; every
new flag with a bad value is an error naming it, exit code 2, nothing written."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard_helpers import tensorboard_matches_metrics

from bertspeed.finetune import run_glue, run_ner, run_squad
from bertspeed.finetune.settings import build_parser
from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.checkpoint import save_pretrained

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "finetune"
# The same settings in both spellings: (Hugging Face's, ours).
COMMON = ["--max_steps", "3", "--max_seq_length", "64", "--max_train_samples", "16", "--max_eval_samples", "8",
          "--logging_steps", "1", "--eval_steps", "2", "--learning_rate", "1e-4"]
HF = ["--do_train", "--do_eval", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
      "--warmup_ratio", "0.2", "--report_to", "none", *COMMON]
OURS = ["--train_batch_size", "4", "--eval_batch_size", "8", "--warmup_proportion", "0.2", *COMMON]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vocab_file):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "hf"
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), folder, vocab_file=vocab_file)
    return folder


def results(out: Path) -> dict:
    return json.loads((out / "eval_results.json").read_text())


def test_glue_in_hugging_face_spelling_equals_ours_and_each_step_runs_alone(tmp_path, tiny, glue_dir, capsys):
    task = ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC")]
    hf, ours = tmp_path / "hf", tmp_path / "ours"
    run_glue.main([*task, "--model_name_or_path", str(tiny), *HF, "--report_to", "tensorboard", "--output_dir",
                   str(hf)])
    assert "batch: micro 4 per rank x accumulation 1 x world 1 = global 4 sequences per optimizer step" in \
        capsys.readouterr().out
    run_glue.main([*task, "--model_dir", str(tiny), *OURS, "--no_test_predictions", "--output_dir", str(ours)])
    assert results(hf) == results(ours) and results(hf)["eval_examples"] == 8
    assert not (hf / "submission").exists()  # no --do_predict
    assert {"train/loss", "optim/lr", "eval/acc"} <= tensorboard_matches_metrics(hf)

    predicted = tmp_path / "predict_only"  # from the finetuned folder: test predictions only
    run_glue.main([*task, "--model_name_or_path", str(hf / "model"), "--do_predict", "--max_eval_samples", "8",
                   "--max_seq_length", "64", "--output_dir", str(predicted)])
    assert (predicted / "submission" / "MRPC.tsv").is_file()
    assert not (predicted / "eval_results.json").exists() and not (predicted / "model").exists()
    evaluated = tmp_path / "eval_only"
    run_glue.main([*task, "--model_name_or_path", str(hf / "model"), "--do_eval", "--max_eval_samples", "8",
                   "--max_seq_length", "64", "--per_device_eval_batch_size", "8", "--output_dir", str(evaluated)])
    assert results(evaluated) == results(hf)  # the saved model scores as the trained one did


def test_squad_in_hugging_face_spelling_equals_ours(tmp_path, tiny, squad_dev):
    squad = ["--train_file", str(squad_dev), "--doc_stride", "32", "--max_query_length", "24"]
    hf, ours = tmp_path / "hf", tmp_path / "ours"
    run_squad.main([*squad, "--model_name_or_path", str(tiny), "--validation_file", str(squad_dev), *HF,
                    "--output_dir", str(hf)])
    run_squad.main([*squad, "--model_dir", str(tiny), "--predict_file", str(squad_dev), *OURS, "--output_dir",
                    str(ours)])
    assert results(hf) == results(ours) and set(results(hf)) >= {"exact_match", "f1"}
    assert (hf / "predictions.json").read_text() == (ours / "predictions.json").read_text()


def test_ner_in_hugging_face_spelling_equals_ours(tmp_path, tiny):
    files = ["--train_file", str(FIXTURES / "conll_train.txt")]
    hf, ours = tmp_path / "hf", tmp_path / "ours"
    run_ner.main([*files, "--model_name_or_path", str(tiny), "--validation_file", str(FIXTURES / "conll_dev.txt"),
                  *HF, "--output_dir", str(hf)])
    run_ner.main([*files, "--model_dir", str(tiny), "--eval_file", str(FIXTURES / "conll_dev.txt"), *OURS,
                  "--output_dir", str(ours)])
    assert results(hf) == results(ours) and "f1" in results(hf)


def test_batch_flags_global_and_per_device():
    base = ["--task_name", "RTE", "--data_dir", "d", "--model_dir", "m", "--output_dir", "o"]
    hf = run_glue.parse_args([*base, "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"])
    assert hf.batch_sizes(2) == {"micro": 8, "accumulation": 2, "world": 2, "global": 32}
    ours = run_glue.parse_args([*base, "--train_batch_size", "32", "--gradient_accumulation_steps", "2"])
    assert ours.batch_sizes(2) == hf.batch_sizes(2)
    both = run_glue.parse_args([*base, "--train_batch_size", "32", "--per_device_train_batch_size", "8"])
    assert both.batch_sizes(4)["global"] == 32
    with pytest.raises(ValueError, match=re.escape("--train_batch_size 32 (global) disagrees with "
                                                   "--per_device_train_batch_size 8")):
        both.batch_sizes(1)
    help_text = " ".join(build_parser(run_glue.GlueSettings).format_help().split())
    assert "GLOBAL batch per optimizer step" in help_text and "micro batch: sequences per rank" in help_text


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny, glue_dir):
    """A GLUE command line short of the flag under test, and a folder holding an earlier run's checkpoint."""
    root = tmp_path_factory.mktemp("bad flags")
    earlier = root / "earlier"
    (earlier / "global_step2").mkdir(parents=True)
    (earlier / "latest").write_text("global_step2\n")
    (root / "ds.json").write_text("{}")
    (root / "checkpoint-500").mkdir()  # Hugging Face Trainer's checkpoint folder
    (root / "checkpoint-500" / "trainer_state.json").write_text('{"global_step": 500}')
    (root / "ours-torn").mkdir()
    (root / "ours-torn" / "finetune_state.json").write_text('{"step": 3}')
    return root, ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_dir", str(tiny),
                  "--max_steps", "1", "--max_train_samples", "4", "--max_eval_samples", "4"]


@pytest.mark.parametrize("flags, message", [
    (["--max_steps", "0"], "--max_steps must be positive (or -1: off), got 0"),
    (["--save_steps", "-1"], "--save_steps must be >= 0, got -1"),
    (["--save_total_limit", "0"], "--save_total_limit must be positive, got 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be positive, got 0"),
    (["--per_device_eval_batch_size", "0"], "--eval_batch_size must be > 0, got 0"),
    (["--warmup_ratio", "1.5"], "--warmup_proportion must be in [0, 1), got 1.5"),
    (["--train_batch_size", "8", "--per_device_train_batch_size", "2"], "--train_batch_size 8 (global) disagrees"),
    (["--train_batch_size", "6", "--gradient_accumulation_steps", "4"], "--train_batch_size 6 is not a multiple"),
    (["--deepspeed", "missing.json"], "--deepspeed missing.json not found"),
    (["--deepspeed", "{root}/ds.json", "--deepspeed_config", "other.json"], "name different files"),
    (["--resume", "{root}/nowhere"], "--resume {root}/nowhere: no such checkpoint folder"),
    (["--resume", "--overwrite_output_dir"], "--resume and --overwrite_output_dir contradict"),
    (["--output_dir", "{root}/earlier"], "holds checkpoints of an earlier run (global_step2, latest): pass --resume"),
    (["--resume", "{root}/earlier/global_step2"], "no finetune_state.json, not a finetuning checkpoint"),
    (["--resume_from_checkpoint", "{root}/checkpoint-500"], "not a finetuning checkpoint (a Hugging Face Trainer"),
    (["--resume", "{root}/ours-torn"], "finetune_state.json: not a finetuning checkpoint's state (missing"),
])
def test_bad_values_of_the_new_flags_exit_2_and_write_nothing(data, flags, message, capsys):
    root, base = data
    flags = [f.replace("{root}", str(root)) for f in flags]
    out = root / "out"
    argv = [*base, "--output_dir", str(out), *flags] if "--output_dir" not in flags else [*base, *flags]
    before = sorted(p.name for p in root.rglob("*"))
    assert run_glue.entry(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.replace("{root}", str(root)) in err and err.count("\n") == 1
    assert sorted(p.name for p in root.rglob("*")) == before and not out.exists()


def test_a_bad_report_to_is_refused_by_the_parser(data, capsys):
    root, base = data
    with pytest.raises(SystemExit) as exit_info:
        run_glue.entry([*base, "--output_dir", str(root / "out"), "--report_to", "wandb"])
    assert exit_info.value.code == 2 and "--report_to: invalid choice: 'wandb'" in capsys.readouterr().err
    assert not (root / "out").exists()


@pytest.mark.parametrize("driver, argv, message", [
    (run_squad, ["--do_train", "--predict_file", "p"], "--do_train needs training data"),
    (run_squad, ["--train_file", "t"], "--predict_file is required to evaluate or predict"),
    (run_ner, ["--do_predict", "--eval_file", "e"], "--do_predict needs --test_file"),
    (run_ner, ["--do_eval", "--train_file", "t"], "--eval_file is required to evaluate"),
    (run_ner, ["--do_eval", "--eval_file", "e", "--resume"], "--resume continues training, and this run does not"),
])
def test_a_step_without_its_data_is_named(driver, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the files the flags name exist (paths are checked first), the data is missing
    (tmp_path / "m").mkdir()
    for name in ("p", "t", "e"):
        (tmp_path / name).write_text("")
    out = tmp_path / "out"
    assert driver.entry([*argv, "--model_dir", "m", "--output_dir", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_epoch_and_no_strategies(tmp_path, tiny, glue_dir):
    """--evaluation_strategy epoch / --save_strategy epoch act at each epoch end (2 steps an epoch here);
    --eval_strategy no leaves only the final evaluation, whatever --eval_steps says."""
    from bertspeed.training.metrics import read_metrics

    base = ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--model_name_or_path", str(tiny),
            "--do_train", "--do_eval", "--max_train_samples", "8", "--max_eval_samples", "4", "--max_seq_length", "32",
            "--per_device_train_batch_size", "4", "--num_train_epochs", "3", "--no_save_model"]
    by_epoch, never = tmp_path / "epoch", tmp_path / "no"
    run_glue.main([*base, "--evaluation_strategy", "epoch", "--save_strategy", "epoch", "--output_dir", str(by_epoch)])
    assert [r["step"] for r in read_metrics(by_epoch) if "eval/acc" in r] == [2, 4, 6]
    assert sorted(p.name for p in by_epoch.glob("global_step*")) == ["global_step2", "global_step4", "global_step6"]
    run_glue.main([*base, "--eval_strategy", "no", "--eval_steps", "1", "--save_steps", "1", "--save_strategy", "no",
                   "--output_dir", str(never)])
    assert [r["step"] for r in read_metrics(never) if "eval/acc" in r] == [6]
    assert not list(never.glob("global_step*"))


def test_deepspeed_flag_spellings(tmp_path):
    """--deepspeed CONFIG is --deepspeed_config; alone it is the launcher's switch; `true`/`false` in a settings
    file written when it was only a switch still parse."""
    config = tmp_path / "ds.json"
    config.write_text("{}")
    base = ["--task_name", "RTE", "--data_dir", "d", "--model_dir", "m", "--output_dir", "o"]
    assert run_glue.parse_args([*base, "--deepspeed", str(config)]).deepspeed_config == str(config)
    assert run_glue.parse_args([*base, "--deepspeed", "--deepspeed_config", str(config)]).deepspeed_config == \
        str(config)
    old = tmp_path / "old.json"
    for value, expected in ((True, ""), (False, None)):
        old.write_text(json.dumps({"deepspeed": value}))
        assert run_glue.parse_args([*base, "--settings_file", str(old)]).deepspeed == expected
