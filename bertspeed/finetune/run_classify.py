"""Finetune and evaluate on your own labelled data: classification (any label set) or regression.

    python finetune/run_classify.py --train_file train.json --validation_file dev.json --test_file test.json \\
        --model_dir MODEL --output_dir OUT                       # CLUE TNEWS / IFLYTEK JSON lines as they are
    python finetune/run_classify.py --train_file tickets.csv --validation_file dev.csv --text_fields subject body \\
        --label_field queue --label_list billing tech sales --model_dir MODEL --output_dir OUT
    deepspeed --num_gpus 2 finetune/run_classify.py ... --deepspeed_config ds_configs/<x>.json

Files are TSV, CSV (a header row names the columns) or JSON lines, by extension. One or two text fields
(a pair is encoded as BERT's sentence pair); by default the first of sentence1+sentence2, text_a+text_b,
sentence, text. Labels come from --label_list or, sorted, from the training file; a label outside the set
is an error naming file, line and field. Writes OUT/eval_results.json (acc, macro_f1, mcc; pearson and
spearmanr for --task_type regression), OUT/eval_predictions.jsonl and OUT/test_predictions.jsonl
(`{"id": ..., "label": ...}` per line, CLUE's submission format), OUT/metrics.jsonl and OUT/model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bertspeed.finetune import labelled
from bertspeed.finetune.cli import main_guard, start
from bertspeed.finetune.glue import featurize
from bertspeed.finetune.metrics import classification_metrics
from bertspeed.finetune.run_glue import predict_labels
from bertspeed.finetune.settings import FinetuneSettings, default_of, parse_settings
from bertspeed.finetune.trainer import collate_padded
from bertspeed.model.heads import BertForSequenceClassification
from bertspeed.training.atomic import open_atomic
from bertspeed.training.distributed import exit_process
from bertspeed.training.settings import setting

TASK_TYPES = ("classification", "regression")


@dataclass(kw_only=True)
class ClassifySettings(FinetuneSettings):
    INPUT_FILES: ClassVar[tuple[str, ...]] = (*FinetuneSettings.INPUT_FILES, "train_file", "validation_file",
                                              "test_file")
    train_file: str | None = setting(None, help="labelled training data (.tsv, .csv, .jsonl/.json JSON lines)")
    validation_file: str | None = setting(None, help="labelled data to score", aliases=("--eval_file",))
    test_file: str | None = setting(None, help="data to label (its labels, if any, are not read)")
    text_fields: list[str] | None = setting(None, help="one or two text field names (default: the first of "
                                                       "sentence1 sentence2 / text_a text_b / sentence / text)")
    label_field: str = setting("label", help="the label field's name")
    label_list: list[str] | None = setting(None, help="the labels, in id order (default: the training labels, sorted)")
    task_type: str = setting("classification", help="classification (accuracy, macro-F1, MCC) or regression "
                                                    "(Pearson, Spearman)", choices=TASK_TYPES)
    learning_rate: float = default_of(FinetuneSettings, "learning_rate", 2e-5)

    def __post_init__(self):
        super().__post_init__()
        if not (self.train_file or self.validation_file or self.test_file):
            raise ValueError("give at least one of --train_file, --validation_file, --test_file")
        if self.task_type == "regression" and self.label_list:
            raise ValueError("--label_list is for classification, not --task_type regression")

    @property
    def regression(self) -> bool:
        return self.task_type == "regression"


def parse_args(argv=None) -> ClassifySettings:
    return parse_settings(ClassifySettings, argv, __doc__)


def read(settings, path, labelled_file=True):
    label_field = settings.label_field if labelled_file else None
    return labelled.read_examples(path, settings.text_fields, label_field, settings.regression)


def label_set(settings, train, model_dir) -> list[str] | None:
    """The label names: --label_list, the training labels, or (evaluation only) the model's id2label."""
    if settings.regression:
        return None
    if settings.label_list or train:
        return labelled.label_names(train, settings.label_list)
    from bertspeed.model.checkpoint import resolve_model_dir
    from bertspeed.model.config import BertConfig
    config = BertConfig.from_json_file(resolve_model_dir(model_dir))
    if not config.id2label:
        raise ValueError(f"{model_dir}: config.json has no id2label; give --label_list or --train_file")
    return [config.id2label[i] for i in range(len(config.id2label))]


def main(argv=None):
    settings = parse_args(argv)
    settings.check_paths()
    train, do_eval, do_predict = settings.steps(has_train_data=bool(settings.train_file))
    do_eval, do_predict = do_eval and bool(settings.validation_file), do_predict and bool(settings.test_file)
    train_examples = read(settings, settings.train_file) if train else []
    eval_examples = read(settings, settings.validation_file) if do_eval else []
    if settings.max_train_samples:
        train_examples = train_examples[: settings.max_train_samples]
    if settings.max_eval_samples:
        eval_examples = eval_examples[: settings.max_eval_samples]
    names = label_set(settings, train_examples, settings.model_dir)
    if names is not None:
        for examples, path in ((train_examples, settings.train_file), (eval_examples, settings.validation_file)):
            source = "--label_list" if settings.label_list else f"the labels of {settings.train_file}"
            labelled.index_labels(examples, names, path, settings.label_field, source)
    config = ({"num_labels": 1, "problem_type": "regression"} if names is None else
              {"num_labels": len(names), "problem_type": "single_label_classification",
               "id2label": dict(enumerate(names))})
    trainer, tokenizer, vocab = start(settings, BertForSequenceClassification, train, **config)
    eval_features = featurize(eval_examples, tokenizer, settings.max_seq_length) if eval_examples else []

    def evaluate(write=False):
        predictions = predict_labels(trainer, eval_features, settings.eval_batch_size, settings.regression)
        if write and trainer.rt.is_main:
            write_predictions(Path(settings.output_dir) / "eval_predictions.jsonl", eval_examples, predictions, names)
        scores = classification_metrics(predictions, [e.label for e in eval_examples], settings.regression)
        return {**scores, "eval_examples": len(eval_examples)}

    if train:
        features = featurize(train_examples, tokenizer, settings.max_seq_length)
        trainer.train(features, collate_padded, [len(f["input_ids"]) for f in features],
                      evaluate=evaluate if eval_examples else None)
    results = evaluate(write=True) if eval_examples else None
    if do_predict:
        test_examples = read(settings, settings.test_file, labelled_file=False)
        test_examples = test_examples[: settings.max_eval_samples] if settings.max_eval_samples else test_examples
        predictions = predict_labels(trainer, featurize(test_examples, tokenizer, settings.max_seq_length),
                                     settings.eval_batch_size, settings.regression)
        if trainer.rt.is_main:
            write_predictions(Path(settings.output_dir) / "test_predictions.jsonl", test_examples, predictions, names)
    if not settings.no_save_model and train:
        trainer.save_model(Path(settings.output_dir) / "model", vocab, tokenizer.do_lower_case)
    trainer.finish(results)


def write_predictions(path: Path, examples, predictions, names) -> None:
    with open_atomic(path) as f:
        for example, prediction in zip(examples, predictions):
            label = float(prediction) if names is None else names[int(prediction)]
            f.write(json.dumps({"id": example.guid, "label": label}, ensure_ascii=False) + "\n")


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    exit_process(entry())
