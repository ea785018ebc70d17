"""Finetune and evaluate a BERT checkpoint on SQuAD v1.1 or v2.0.

    python finetune/run_squad.py --train_file train-v1.1.json --predict_file dev-v1.1.json \\
        --model_dir MODEL --output_dir OUT [--version_2_with_negative]
    deepspeed --num_gpus 8 finetune/run_squad.py ... --deepspeed_config ds_configs/<x>.json

Writes OUT/predictions.json and OUT/nbest_predictions.json (official formats), for v2.0 also
OUT/null_odds.json (no-answer score minus best answer score, per question), OUT/eval_results.json
(exact_match and f1 as the official evaluation scripts compute them; v2.0 adds the HasAns/NoAns
split and the best no-answer threshold on this file), OUT/metrics.jsonl and the model in OUT/model.
Without --train_file (or with --num_train_epochs 0) the model is evaluated as loaded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.finetune import squad
from bertspeed.finetune.cli import add_common_args, main_guard, start
from bertspeed.finetune.metrics import squad_v1_evaluate, squad_v2_evaluate
from bertspeed.finetune.trainer import collate_padded
from bertspeed.model.heads import BertForQuestionAnswering
from bertspeed.training.atomic import write_json_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", help="SQuAD-format JSON to train on")
    parser.add_argument("--predict_file", required=True, help="SQuAD-format JSON to predict and score")
    parser.add_argument("--version_2_with_negative", action="store_true", help="SQuAD v2.0: questions may have no answer")
    parser.add_argument("--doc_stride", type=int, default=128, help="tokens between context window starts")
    parser.add_argument("--max_query_length", type=int, default=64, help="question tokens kept")
    parser.add_argument("--n_best_size", type=int, default=20, help="candidates kept per question")
    parser.add_argument("--max_answer_length", type=int, default=30, help="longest answer, in tokens")
    parser.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                        help="v2.0: answer '' when null score - best span score exceeds this")
    add_common_args(parser, learning_rate=3e-5, epochs=2, batch_size=32, max_seq_length=384)
    args = parser.parse_args(argv)
    for flag in ("doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    train = args.train_file and args.num_train_epochs > 0
    trainer, tokenizer, vocab = start(args, BertForQuestionAnswering)
    windows = dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                   max_query_length=args.max_query_length)
    dev = load_dev(args, tokenizer, windows)
    if train:
        _, contexts, examples = squad.read_squad(args.train_file)
        examples = examples[: args.max_train_samples] if args.max_train_samples else examples
        if args.version_2_with_negative is False and any(e.is_impossible for e in examples):
            raise ValueError(f"{args.train_file} has unanswerable questions: pass --version_2_with_negative")
        features, _ = squad.featurize(examples, contexts, tokenizer, training=True, **windows)
        skipped = sum(1 for e in examples if not e.is_impossible and not squad.answer_is_aligned(e, contexts))
        if trainer.rt.is_main:
            print(f"train: {len(examples)} questions -> {len(features)} features "
                  f"({skipped} questions skipped: answer_start does not point at the answer text)")
        trainer.train(features, collate_padded, [len(f["input_ids"]) for f in features],
                      evaluate=lambda: evaluate(args, trainer, dev), main_metric="f1")

    results = evaluate(args, trainer, dev, write_predictions=True)
    if train and not args.no_save_model:
        trainer.save_model(Path(args.output_dir) / "model", vocab)
    trainer.finish(results)


def load_dev(args, tokenizer, windows) -> dict:
    """The --predict_file questions (first --max_eval_samples) and their features."""
    dataset, contexts, examples = squad.read_squad(args.predict_file)
    if args.max_eval_samples:
        examples = examples[: args.max_eval_samples]
        dataset = _restrict(dataset, {e.qid for e in examples})
    features, ctx_offsets = squad.featurize(examples, contexts, tokenizer, training=False, **windows)
    return dict(dataset=dataset, contexts=contexts, examples=examples, features=features, ctx_offsets=ctx_offsets)


def _extract(output, batch):
    lengths = batch["attention_mask"].sum(1).tolist()
    start, end = output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()
    return [(start[i, :n], end[i, :n]) for i, n in enumerate(lengths)]


def evaluate(args, trainer, dev: dict, write_predictions=False) -> dict:
    """Predict and score `dev` (from load_dev); with `write_predictions` also OUT/predictions.json,
    OUT/nbest_predictions.json and, for v2.0, OUT/null_odds.json."""
    features = dev["features"]
    logits = trainer.predict(features, collate_padded, _extract, args.eval_batch_size,
                             [len(f["input_ids"]) for f in features])
    predictions, nbest, null_odds, best_non_null = squad.decode(
        dev["examples"], dev["contexts"], features, dev["ctx_offsets"], logits, args.n_best_size,
        args.max_answer_length, args.version_2_with_negative, args.null_score_diff_threshold)
    results = score(dev["dataset"], predictions, null_odds, best_non_null, args.version_2_with_negative)
    if write_predictions and trainer.rt.is_main:
        out = Path(args.output_dir)
        write_json_atomic(out / "predictions.json", predictions, ensure_ascii=False)
        write_json_atomic(out / "nbest_predictions.json", nbest, ensure_ascii=False)
        if args.version_2_with_negative:
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
    sys.exit(entry())
