"""Every command, every path or number it takes, given something wrong: a missing file, a binary file,
a file where a folder is expected and the reverse, an output where nothing can be written, a number
out of range. Each must end with exit code 2 and one error line naming the flag and the culprit, no
traceback, and nothing written. The commands run in-process through `bertspeed COMMAND` (the same
entry as `python -m bertspeed COMMAND`), one case per test, against one shared workspace."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pretrain_helpers import ds_config, make_shards, tiny_model_config

from bertspeed import cli

pytestmark = pytest.mark.timeout(120)
UNWRITABLE = "/proc/bertspeed-sweep/out"  # no one, root included, can create anything under /proc

def case(name: str, argv: list[str], flag: str, culprit: str):
    return pytest.param(argv, flag, culprit, id=name)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file, squad_dev):
    root = tmp_path_factory.mktemp("sweep")
    shutil.copy(vocab_file, root / "vocab.txt")
    (root / "binary.bin").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 8)
    (root / "a_file.txt").write_text("The cat sat.\nIt was warm.\n")
    (root / "a_folder").mkdir()
    (root / "text").mkdir()
    (root / "text" / "doc.txt").write_text("The cat sat on the mat.\nIt was warm.\n\nA dog ran.\nIt barked.\n" * 20)
    (root / "train.conll").write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\n")
    make_shards(root / "shards", squad_dev, vocab_file, num_shards=1, paragraphs_per_shard=8)
    tiny_model_config(root / "model.json")
    ds_config(root / "ds.json")
    return root


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run(argv: list[str], capfd) -> tuple[object, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - a traceback in a real run
        code = f"raised {type(e).__name__}: {e}"
    return code, capfd.readouterr().err


def fill(items, values: dict) -> list[str]:
    return [item.format(**values) for item in items]


def check(ws, capfd, argv, flag, culprit, values):
    before = snapshot(ws)
    code, err = run(fill(argv, values), capfd)
    culprit = culprit.format(**values)
    assert code == 2, f"exit {code}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if "error:" in line or line.startswith("error")]
    assert len(errors) == 1, err[-2000:]
    assert flag in errors[0] and culprit in errors[0], errors[0]
    assert snapshot(ws) == before, "something was written"


def paths(ws, tmp_name: str, minilm=None) -> dict:
    values = {name: str(ws / name) for name in ("vocab.txt", "binary.bin", "a_file.txt", "a_folder", "text",
                                                 "shards", "model.json", "ds.json", "train.conll")}
    values = {k.replace(".", "_"): v for k, v in values.items()}
    values.update(missing=str(ws / "missing"), out=str(ws / f"out_{tmp_name}"), unwritable=UNWRITABLE,
                  minilm=str(minilm) if minilm else "")
    return values


EXTRACT = ["extract", "--input", "{text}", "--output_dir", "{out}"]
VOCAB = ["vocab", "--input", "{text}", "--output", "{out}/vocab.txt", "--vocab_size", "100"]
CREATE = ["create-data", "--input", "{text}", "--vocab_file", "{vocab_txt}", "--output_dir", "{out}"]
PRETRAIN = ["pretrain", "--input_dir", "{shards}", "--output_dir", "{out}", "--max_steps", "2",
            "--config_file", "{model_json}", "--deepspeed_config", "{ds_json}"]
PRETRAIN_FROM = [*PRETRAIN[:-4], *PRETRAIN[-2:]]  # no --config_file: the --init_checkpoint's


def replace(base: list[str], flag: str, value: str) -> list[str]:
    out = list(base)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def bad(name: str, base: list[str], flag: str, value: str):
    """`base` with `flag` set to (or given as) `value`: the error names both."""
    return case(name, replace(base, flag, value), flag, value)


DATA_AND_PRETRAIN = [
    bad("extract-input-missing", EXTRACT, "--input", "{missing}"),
    bad("extract-input-binary", EXTRACT, "--input", "{binary_bin}"),
    bad("extract-output-is-file", EXTRACT, "--output_dir", "{a_file_txt}"),
    bad("extract-output-unwritable", EXTRACT, "--output_dir", "{unwritable}"),
    bad("extract-punkt-binary", EXTRACT, "--punkt_model", "{binary_bin}"),
    bad("extract-punkt-folder", EXTRACT, "--punkt_model", "{a_folder}"),
    bad("extract-num-shards-0", EXTRACT, "--num_shards", "0"),
    bad("vocab-input-missing", VOCAB, "--input", "{missing}"),
    bad("vocab-input-binary", VOCAB, "--input", "{binary_bin}"),
    bad("vocab-output-is-folder", VOCAB, "--output", "{a_folder}"),
    case("vocab-output-unwritable", replace(VOCAB, "--output", "{unwritable}/vocab.txt"), "--output", "{unwritable}"),
    bad("vocab-size-0", VOCAB, "--vocab_size", "0"),
    bad("create-input-missing", CREATE, "--input", "{missing}"),
    bad("create-input-binary", CREATE, "--input", "{binary_bin}"),
    bad("create-vocab-missing", CREATE, "--vocab_file", "{missing}"),
    bad("create-vocab-binary", CREATE, "--vocab_file", "{binary_bin}"),
    bad("create-vocab-folder", CREATE, "--vocab_file", "{a_folder}"),
    bad("create-output-is-file", CREATE, "--output_dir", "{a_file_txt}"),
    bad("create-output-unwritable", CREATE, "--output_dir", "{unwritable}"),
    bad("create-output-file-is-folder", CREATE[:-2], "--output_file", "{a_folder}"),
    bad("create-work-dir-is-file", CREATE, "--work_dir", "{a_file_txt}"),
    bad("create-seq-len-0", CREATE, "--max_seq_length", "0"),
    bad("create-max-pred-negative", CREATE, "--max_predictions_per_seq", "-1"),
    bad("create-mlm-prob-2", CREATE, "--masked_lm_prob", "2"),
    bad("create-workers-0", CREATE, "--workers", "0"),
    bad("pretrain-input-missing", PRETRAIN, "--input_dir", "{missing}"),
    bad("pretrain-input-is-file", PRETRAIN, "--input_dir", "{a_file_txt}"),
    bad("pretrain-ds-missing", PRETRAIN, "--deepspeed_config", "{missing}"),
    bad("pretrain-ds-binary", PRETRAIN, "--deepspeed_config", "{binary_bin}"),
    bad("pretrain-ds-folder", PRETRAIN, "--deepspeed_config", "{a_folder}"),
    bad("pretrain-config-binary", PRETRAIN, "--config_file", "{binary_bin}"),
    bad("pretrain-config-missing", PRETRAIN, "--config_file", "{missing}"),
    bad("pretrain-vocab-binary", PRETRAIN, "--vocab_file", "{binary_bin}"),
    bad("pretrain-output-is-file", PRETRAIN, "--output_dir", "{a_file_txt}"),
    bad("pretrain-output-unwritable", PRETRAIN, "--output_dir", "{unwritable}"),
    bad("pretrain-init-missing", PRETRAIN_FROM, "--init_checkpoint", "{missing}"),
    bad("pretrain-init-is-file", PRETRAIN_FROM, "--init_checkpoint", "{binary_bin}"),
    bad("pretrain-eval-dir-is-file", PRETRAIN, "--eval_dir", "{a_file_txt}"),
    bad("pretrain-eval-dir-missing", PRETRAIN, "--eval_dir", "{missing}"),
    bad("pretrain-max-steps-negative", PRETRAIN, "--max_steps", "-1"),
    bad("pretrain-lr-negative", PRETRAIN, "--learning_rate", "-1"),
    bad("pretrain-warmup-2", PRETRAIN, "--warmup_proportion", "2"),
    bad("pretrain-batch-0", PRETRAIN, "--train_batch_size", "0"),
    bad("pretrain-accumulation-0", PRETRAIN, "--gradient_accumulation_steps", "0"),
    bad("pretrain-settings-binary", PRETRAIN, "--settings_file", "{binary_bin}"),
    case("check-config-missing", ["check-config", "{missing}"], "files", "{missing}"),
    case("check-config-binary", ["check-config", "{binary_bin}"], "files", "{binary_bin}"),
    case("plot-run-missing", ["plot", "{missing}", "--output", "{out}/curves.png"], "run_dirs", "{missing}"),
    case("plot-output-unwritable", ["plot", "{shards}", "--output", "{unwritable}/curves.png"], "--output",
         "{unwritable}"),
    case("report-missing", ["report", "{missing}"], "demo_dir", "{missing}"),
]


@pytest.mark.parametrize("argv, flag, culprit", DATA_AND_PRETRAIN)
def test_data_prep_and_pretraining(ws, capfd, request, argv, flag, culprit):
    check(ws, capfd, argv, flag, culprit, paths(ws, request.node.callspec.id))


# Finetuning (--do_eval is the eval path), convert/export and predict, from the real MiniLM checkpoint.
GLUE = ["glue", "--task_name", "MRPC", "--data_dir", "{glue}", "--model_dir", "{minilm}", "--output_dir", "{out}",
        "--do_eval", "--max_eval_samples", "4"]
SQUAD = ["squad", "--predict_file", "{squad}", "--model_dir", "{minilm}", "--output_dir", "{out}", "--do_eval",
         "--max_eval_samples", "2"]
NER = ["ner", "--eval_file", "{train_conll}", "--model_dir", "{minilm}", "--output_dir", "{out}", "--do_eval"]
CONVERT = ["convert", "{minilm}", "--output_dir", "{out}"]
PREDICT = ["predict", "--model_dir", "{minilm}", "--sentence", "a fine day"]
EVALUATE = ["evaluate", "--model", "{minilm}", "--eval_dir", "{shards}"]

FINETUNE_CONVERT_PREDICT = [
    bad("glue-model-missing", GLUE, "--model_dir", "{missing}"),
    bad("glue-model-is-file", GLUE, "--model_dir", "{a_file_txt}"),
    bad("glue-data-missing", GLUE, "--data_dir", "{missing}"),
    bad("glue-data-is-file", GLUE, "--data_dir", "{a_file_txt}"),
    bad("glue-output-is-file", GLUE, "--output_dir", "{a_file_txt}"),
    bad("glue-output-unwritable", GLUE, "--output_dir", "{unwritable}"),
    bad("glue-vocab-binary", GLUE, "--vocab_file", "{binary_bin}"),
    bad("glue-seq-len-0", GLUE, "--max_seq_length", "0"),
    bad("glue-lr-negative", GLUE, "--learning_rate", "-1"),
    bad("glue-ds-binary", GLUE, "--deepspeed_config", "{binary_bin}"),
    bad("squad-predict-missing", SQUAD, "--predict_file", "{missing}"),
    bad("squad-predict-binary", SQUAD, "--predict_file", "{binary_bin}"),
    bad("squad-predict-folder", SQUAD, "--predict_file", "{a_folder}"),
    bad("squad-doc-stride-0", SQUAD, "--doc_stride", "0"),
    bad("squad-output-unwritable", SQUAD, "--output_dir", "{unwritable}"),
    bad("ner-eval-missing", NER, "--eval_file", "{missing}"),
    bad("ner-eval-binary", NER, "--eval_file", "{binary_bin}"),
    bad("ner-eval-folder", NER, "--eval_file", "{a_folder}"),
    case("convert-src-missing", replace(CONVERT, "convert", "{missing}"), "src", "{missing}"),
    case("convert-src-binary", replace(CONVERT, "convert", "{binary_bin}"), "src", "{binary_bin}"),
    bad("convert-output-is-file", CONVERT, "--output_dir", "{a_file_txt}"),
    bad("convert-output-unwritable", CONVERT, "--output_dir", "{unwritable}"),
    bad("convert-vocab-binary", CONVERT, "--vocab_file", "{binary_bin}"),
    bad("export-output-is-file", ["export", *CONVERT[1:]], "--output_dir", "{a_file_txt}"),
    bad("predict-model-missing", PREDICT, "--model_dir", "{missing}"),
    bad("predict-model-is-file", PREDICT, "--model_dir", "{a_file_txt}"),
    bad("predict-seq-len-0", PREDICT, "--max_seq_length", "0"),
    bad("evaluate-model-missing", EVALUATE, "--model", "{missing}"),
    bad("evaluate-model-is-text-file", EVALUATE, "--model", "{a_file_txt}"),
    bad("evaluate-eval-dir-is-file", EVALUATE, "--eval_dir", "{a_file_txt}"),
    case("evaluate-output-unwritable", replace(EVALUATE, "--output_file", "{unwritable}/scores.json"), "--output_file",
         "{unwritable}"),
    bad("evaluate-samples-0", EVALUATE, "--eval_samples", "0"),
]


@pytest.mark.parametrize("argv, flag, culprit", FINETUNE_CONVERT_PREDICT)
def test_finetuning_convert_and_predict(ws, capfd, request, minilm_dir, glue_dir, squad_dev, argv, flag, culprit):
    values = paths(ws, request.node.callspec.id, minilm_dir)
    values.update(glue=str(glue_dir / "MRPC"), squad=str(squad_dev))
    check(ws, capfd, argv, flag, culprit, values)
