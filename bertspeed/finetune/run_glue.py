"""Finetune and evaluate a BERT checkpoint on a GLUE task (all nine, glue_data layout).

    python finetune/run_glue.py --task_name RTE --data_dir GLUE_DIR/RTE --model_dir MODEL --output_dir OUT
    python finetune/run_glue.py --task_name RTE --data_dir GLUE_DIR/RTE --model_name_or_path MODEL \\
        --do_train --do_eval --per_device_train_batch_size 32 --output_dir OUT      # Hugging Face's spelling
    deepspeed --num_gpus 2 finetune/run_glue.py ... --deepspeed_config ds_configs/<x>.json

Writes OUT/eval_results.json (mcc / acc / f1 / pearson / spearmanr, as the task reports; MNLI's
mismatched scores end in _mm), OUT/metrics.jsonl, dev predictions (OUT/dev_predictions.tsv), GLUE
submission files for the test set (OUT/submission/<Task>.tsv) and the finetuned model (OUT/model).
--do_train / --do_eval (dev set) / --do_predict (test set) run only the steps given.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from bertspeed.finetune import glue
from bertspeed.finetune.batches import collate_padded
from bertspeed.finetune.cli import main_guard, start
from bertspeed.finetune.metrics import glue_metrics
from bertspeed.finetune.settings import FinetuneSettings, default_of, parse_settings
from bertspeed.model.heads import BertForSequenceClassification
from bertspeed.training.distributed import exit_process
from bertspeed.training.settings import setting


@dataclass(kw_only=True)
class GlueSettings(FinetuneSettings):
    INPUT_DIRS: ClassVar[tuple[str, ...]] = ("data_dir",)
    task_name: str = setting(help=f"one of {', '.join(glue.TASKS)}")
    data_dir: str = setting(help="the task's folder: train.tsv, dev.tsv, test.tsv")
    no_test_predictions: bool = setting(False, help="skip the test-set submission file")
    learning_rate: float = default_of(FinetuneSettings, "learning_rate", 2e-5)  # 3 epochs, batch 32, 128 tokens


def parse_args(argv=None) -> GlueSettings:
    return parse_settings(GlueSettings, argv, __doc__)


def predict_labels(trainer, features, batch_size: int, regression: bool) -> np.ndarray:
    """Class ids (argmax) or regression scores of `features`, in their order (also used by run_classify)."""
    def extract(output, batch):
        logits = output.logits.float().cpu().numpy()
        return list(logits[:, 0] if regression else logits.argmax(-1))
    lengths = [len(f["input_ids"]) for f in features]
    return np.array(trainer.predict(features, collate_padded, extract, batch_size, lengths))


def main(argv=None):
    settings = parse_args(argv)
    settings.check_paths()
    task = glue.get_task(settings.task_name)
    data_dir = Path(settings.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data_dir {data_dir} is not a directory")
    train, do_eval, do_predict = settings.steps(has_train_data=True)
    train_examples = glue.read_examples(task, data_dir / "train.tsv") if train else []
    dev_sets = [glue.read_examples(task, data_dir / name) for name in task.dev_files] if do_eval else []
    if settings.max_train_samples:
        train_examples = train_examples[: settings.max_train_samples]
    if settings.max_eval_samples:
        dev_sets = [examples[: settings.max_eval_samples] for examples in dev_sets]

    num_labels = 1 if task.is_regression else len(task.labels)
    problem_type = "regression" if task.is_regression else "single_label_classification"
    id2label = None if task.is_regression else dict(enumerate(task.labels))
    trainer, tokenizer, vocab = start(settings, BertForSequenceClassification, train, num_labels=num_labels,
                                      problem_type=problem_type, id2label=id2label)

    dev = [(name, examples, glue.featurize(examples, tokenizer, settings.max_seq_length))
           for name, examples in zip(task.dev_files, dev_sets)]
    if train:
        features = glue.featurize(train_examples, tokenizer, settings.max_seq_length)
        trainer.train(features, collate_padded, [len(f["input_ids"]) for f in features],
                      evaluate=(lambda: evaluate(settings, task, trainer, dev)) if dev else None)

    results = evaluate(settings, task, trainer, dev, write_predictions=True) if do_eval else None
    if do_predict and not settings.no_test_predictions:
        write_test_predictions(settings, task, trainer, tokenizer)
    if not settings.no_save_model and train:
        trainer.save_model(Path(settings.output_dir) / "model", vocab, tokenizer.do_lower_case)
    trainer.finish(results)


def evaluate(settings, task, trainer, dev, write_predictions=False) -> dict:
    """Scores on the dev set(s) `dev` ([(file name, examples, features)]; MNLI's mismatched scores
    end in _mm), and with `write_predictions` OUT/<dev file>_predictions.tsv."""
    results = {}
    for name, examples, features in dev:
        preds = predict_labels(trainer, features, settings.eval_batch_size, task.is_regression)
        scores = glue_metrics(task.metric_name, preds, [e.label for e in examples])
        if write_predictions and trainer.rt.is_main:
            glue.write_submission(Path(settings.output_dir) / f"{Path(name).stem}_predictions.tsv", task, examples,
                                  preds, decimals=7)
        suffix = "_mm" if "mismatched" in name else ""
        results.update({f"{k}{suffix}": v for k, v in scores.items()})
        results[f"eval_examples{suffix}"] = len(examples)
    return results


def write_test_predictions(settings, task, trainer, tokenizer):
    data_dir = Path(settings.data_dir)
    files = [(data_dir / t, s) for t, s in zip(task.test_files, task.submission_files)]
    diagnostic = data_dir.parent / "diagnostic" / "diagnostic.tsv"
    if task.name == "MNLI" and diagnostic.is_file():
        files.append((diagnostic, "AX.tsv"))  # GLUE's diagnostic set is scored with the MNLI model
    out_dir = Path(settings.output_dir) / "submission"
    for test_file, submission in files:
        if not test_file.is_file():
            if trainer.rt.is_main:
                print(f"no {test_file}: skipping test predictions for {submission}")
            continue
        columns = (1, 2) if submission == "AX.tsv" else task.test_columns
        examples = glue.read_examples(dataclasses.replace(task, test_columns=columns), test_file, test=True)
        examples = examples[: settings.max_eval_samples] if settings.max_eval_samples else examples
        preds = predict_labels(trainer, glue.featurize(examples, tokenizer, settings.max_seq_length),
                               settings.eval_batch_size, task.is_regression)
        if trainer.rt.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            glue.write_submission(out_dir / submission, task, examples, preds)


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    exit_process(entry())
