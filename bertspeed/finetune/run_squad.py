"""Finetune and evaluate a BERT checkpoint on SQuAD v1.1 or v2.0.

    python finetune/run_squad.py --train_file train-v1.1.json --predict_file dev-v1.1.json \\
        --model_dir MODEL --output_dir OUT [--version_2_with_negative]
    deepspeed --num_gpus 8 finetune/run_squad.py ... --deepspeed_config ds_configs/<x>.json
    python finetune/run_squad.py --model_name_or_path MODEL --train_file train-v1.1.json \\
        --validation_file dev-v1.1.json --do_train --do_predict --per_device_train_batch_size 8 \\
        --deepspeed ds.json --output_dir OUT                                       # Hugging Face's spelling

Writes OUT/predictions.json and OUT/nbest_predictions.json (official formats), for v2.0 also
OUT/null_odds.json (no-answer score minus best answer score, per question), OUT/eval_results.json
(exact_match and f1 as the official evaluation scripts compute them; v2.0 adds the HasAns/NoAns
split and the best no-answer threshold on this file), OUT/metrics.jsonl and the model in OUT/model.
Without --train_file (or with --num_train_epochs 0) the model is evaluated as loaded. --do_eval and
--do_predict both mean: predict and score --predict_file; --do_train alone only trains.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bertspeed.finetune import squad
from bertspeed.finetune.batches import collate_padded
from bertspeed.finetune.cli import main_guard, start
from bertspeed.finetune.metrics import squad_v1_evaluate, squad_v2_evaluate
from bertspeed.finetune.settings import FinetuneSettings, SpanSettings, default_of, parse_settings
from bertspeed.model.heads import BertForQuestionAnswering
from bertspeed.training.atomic import write_json_atomic
from bertspeed.training.distributed import exit_process
from bertspeed.training.settings import setting


@dataclass(kw_only=True)
class SquadSettings(SpanSettings, FinetuneSettings):
    INPUT_FILES: ClassVar[tuple[str, ...]] = (*FinetuneSettings.INPUT_FILES, "train_file", "predict_file")
    train_file: str | None = setting(None, help="SQuAD-format JSON to train on")
    predict_file: str | None = setting(None, help="SQuAD-format JSON to predict and score (required unless only "
                                                  "--do_train)", aliases=("--validation_file",))
    version_2_with_negative: bool = setting(False, help="SQuAD v2.0: questions may have no answer")
    null_score_diff_threshold: float = setting(
        0.0, help="v2.0: answer '' when null score - best span score exceeds this")
    learning_rate: float = default_of(FinetuneSettings, "learning_rate", 3e-5)  # batch 32
    num_train_epochs: float = default_of(FinetuneSettings, "num_train_epochs", 2.0)
    max_seq_length: int = default_of(FinetuneSettings, "max_seq_length", 384)


def parse_args(argv=None) -> SquadSettings:
    return parse_settings(SquadSettings, argv, __doc__)


def main(argv=None):
    settings = parse_args(argv)
    settings.check_paths()
    train, do_eval, do_predict = settings.steps(has_train_data=bool(settings.train_file))
    scored = do_eval or do_predict  # both mean: predict and score --predict_file
    if scored and not settings.predict_file:
        raise ValueError("--predict_file is required to evaluate or predict (or give only --do_train)")
    trainer, tokenizer, vocab = start(settings, BertForQuestionAnswering, train)
    windows = dict(max_seq_length=settings.max_seq_length, doc_stride=settings.doc_stride,
                   max_query_length=settings.max_query_length)
    dev = load_dev(settings, tokenizer, windows) if scored else None
    if train:
        _, contexts, examples = squad.read_squad(settings.train_file)
        examples = examples[: settings.max_train_samples] if settings.max_train_samples else examples
        if not settings.version_2_with_negative and any(e.is_impossible for e in examples):
            raise ValueError(f"{settings.train_file} has unanswerable questions: pass --version_2_with_negative")
        features, _ = squad.featurize(examples, contexts, tokenizer, training=True, **windows)
        skipped = sum(1 for e in examples if not e.is_impossible and not squad.answer_is_aligned(e, contexts))
        if trainer.rt.is_main:
            print(f"train: {len(examples)} questions -> {len(features)} features "
                  f"({skipped} questions skipped: answer_start does not point at the answer text)")
        trainer.train(features, collate_padded, [len(f["input_ids"]) for f in features],
                      evaluate=(lambda: evaluate(settings, trainer, dev)) if dev else None, main_metric="f1")

    results = evaluate(settings, trainer, dev, write_predictions=True) if scored else None
    if train and not settings.no_save_model:
        trainer.save_model(Path(settings.output_dir) / "model", vocab, tokenizer.do_lower_case)
    trainer.finish(results)


def load_dev(settings, tokenizer, windows) -> dict:
    """The --predict_file questions (first --max_eval_samples) and their features."""
    dataset, contexts, examples = squad.read_squad(settings.predict_file)
    if settings.max_eval_samples:
        examples = examples[: settings.max_eval_samples]
        dataset = _restrict(dataset, {e.qid for e in examples})
    features, ctx_offsets = squad.featurize(examples, contexts, tokenizer, training=False, **windows)
    return dict(dataset=dataset, contexts=contexts, examples=examples, features=features, ctx_offsets=ctx_offsets)


def _extract(output, batch):
    lengths = batch["attention_mask"].sum(1).tolist()
    start, end = output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()
    return [(start[i, :n], end[i, :n]) for i, n in enumerate(lengths)]


def evaluate(settings, trainer, dev: dict, write_predictions=False) -> dict:
    """Predict and score `dev` (from load_dev); with `write_predictions` also OUT/predictions.json,
    OUT/nbest_predictions.json and, for v2.0, OUT/null_odds.json."""
    features = dev["features"]
    logits = trainer.predict(features, collate_padded, _extract, settings.eval_batch_size,
                             [len(f["input_ids"]) for f in features])
    predictions, nbest, null_odds, best_non_null = squad.decode(
        dev["examples"], dev["contexts"], features, dev["ctx_offsets"], logits, settings.n_best_size,
        settings.max_answer_length, settings.version_2_with_negative, settings.null_score_diff_threshold)
    results = score(dev["dataset"], predictions, null_odds, best_non_null, settings.version_2_with_negative)
    if write_predictions and trainer.rt.is_main:
        out = Path(settings.output_dir)
        write_json_atomic(out / "predictions.json", predictions, ensure_ascii=False)
        write_json_atomic(out / "nbest_predictions.json", nbest, ensure_ascii=False)
        if settings.version_2_with_negative:
            write_json_atomic(out / "null_odds.json", null_odds, ensure_ascii=False)
    return results


def score(dataset, predictions, null_odds, best_non_null, version_2: bool) -> dict:
    if not version_2:
        return squad_v1_evaluate(dataset, predictions)
    results = squad_v2_evaluate(dataset, predictions, na_probs=null_odds, threshold_predictions=best_non_null)
    results["exact_match"] = results["exact"]
    return results


def _restrict(dataset, qids):
    """The dataset with only the given questions (for --max_eval_samples)."""
    out = []
    for article in dataset:
        paragraphs = [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in qids]} for p in article["paragraphs"]]
        out.append({**article, "paragraphs": [p for p in paragraphs if p["qas"]]})
    return out


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    exit_process(entry())
