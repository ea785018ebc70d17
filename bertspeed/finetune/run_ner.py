"""Finetune and evaluate a BERT checkpoint for named-entity recognition (CoNLL-2003 or CLUENER JSON).

    python finetune/run_ner.py --train_file conll/train.txt --eval_file conll/dev.txt \\
        --model_dir MODEL --output_dir OUT [--test_file conll/test.txt] [--use_crf]

The format follows the extension (.json/.jsonl = CLUENER-style, otherwise CoNLL) unless --format is
given. Writes OUT/eval_results.json (entity-level precision / recall / f1, seqeval's definition),
OUT/eval_predictions.* and OUT/test_predictions.* in the input's format, OUT/metrics.jsonl, OUT/model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertspeed.finetune import ner
from bertspeed.finetune.cli import add_common_args, main_guard, start
from bertspeed.finetune.metrics import entity_scores
from bertspeed.finetune.trainer import collate_padded
from bertspeed.model.checkpoint import resolve_model_dir
from bertspeed.model.config import BertConfig
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.heads import BertForTokenClassification


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_file", help="labelled sentences to train on")
    parser.add_argument("--eval_file", required=True, help="labelled sentences to score")
    parser.add_argument("--test_file", help="sentences to label (labels, if any, are ignored)")
    parser.add_argument("--format", choices=("conll", "cluener"), help="default: from the file extension")
    parser.add_argument("--use_crf", action="store_true",
                        help="a CRF layer over the word-level tags (kept by default for a model saved with one)")
    add_common_args(parser, learning_rate=5e-5, epochs=3, batch_size=32, max_seq_length=128)
    return parser.parse_args(argv)


def model_labels(args, sentence_sets) -> list[str]:
    """Labels of the data; when only evaluating, those the finetuned model was saved with."""
    if args.train_file and args.num_train_epochs > 0:
        return ner.label_list(*sentence_sets)
    config = BertConfig.from_json_file(resolve_model_dir(args.model_dir) / "config.json")
    if not config.id2label:
        raise ValueError(f"{args.model_dir}: config.json has no id2label; train first (--train_file)")
    return [config.id2label[i] for i in range(len(config.id2label))]


def saved_with_crf(model_dir) -> bool:
    """A model finetuned with --use_crf keeps its CRF when loaded again."""
    config = BertConfig.from_json_file(resolve_model_dir(model_dir) / "config.json")
    return "BertCRFForTokenClassification" in (config.extra.get("architectures") or [])


def predict_tags(trainer, features, labels, batch_size, use_crf: bool) -> list[list[str]]:
    def extract(output, batch):
        if use_crf:
            return output.tags
        return list(output.logits.argmax(-1).cpu().numpy())
    per_row = trainer.predict(features, collate_padded, extract, batch_size,
                              [len(f["input_ids"]) for f in features])
    tags = []
    for f, row in zip(features, per_row):
        if use_crf:  # one tag per word that has a first piece, in order
            it = iter(row)
            tags.append([labels[next(it)] if p is not None else "O" for p in f["_word_starts"]])
        else:
            tags.append([labels[int(row[p])] if p is not None else "O" for p in f["_word_starts"]])
    return tags


def evaluate(args, trainer, sentences, features, labels, write_to=None) -> dict:
    """Entity-level scores of the model's tags for the labelled `sentences`; `write_to` = (path,
    format) also writes the predictions there."""
    predictions = predict_tags(trainer, features, labels, args.eval_batch_size, args.use_crf)
    results = entity_scores([s.labels for s in sentences], predictions)
    cut = sum(p is None for f in features for p in f["_word_starts"])
    results.update(eval_sentences=len(sentences), eval_words_not_encoded=cut)
    if write_to and trainer.rt.is_main:
        ner.write_predictions(write_to[0], sentences, predictions, write_to[1])
    return results


def main(argv=None):
    args = parse_args(argv)
    train = bool(args.train_file) and args.num_train_epochs > 0
    fmt = args.format or ner.detect_format(Path(args.eval_file))
    train_sentences = ner.read_sentences(args.train_file, fmt) if train else []
    eval_sentences = ner.read_sentences(args.eval_file, fmt)
    if any(s.labels is None for s in eval_sentences):
        raise ValueError(f"{args.eval_file}: every sentence needs labels to be scored")
    train_sentences = train_sentences[: args.max_train_samples] if args.max_train_samples else train_sentences
    eval_sentences = eval_sentences[: args.max_eval_samples] if args.max_eval_samples else eval_sentences
    labels = model_labels(args, [train_sentences, eval_sentences])
    label2id = {label: i for i, label in enumerate(labels)}
    args.use_crf = args.use_crf or saved_with_crf(args.model_dir)
    model_class = BertCRFForTokenClassification if args.use_crf else BertForTokenClassification
    trainer, tokenizer, vocab = start(args, model_class, num_labels=len(labels), id2label=dict(enumerate(labels)))

    def features_of(sentences, labelled=True):
        return ner.featurize(sentences, tokenizer, args.max_seq_length, label2id if labelled else None,
                             word_mask=args.use_crf)

    eval_features = features_of(eval_sentences)
    out = Path(args.output_dir)
    suffix = ".json" if fmt == "cluener" else ".txt"
    if train:
        features = features_of(train_sentences)
        trainer.train(features, collate_padded, [len(f["input_ids"]) for f in features],
                      evaluate=lambda: evaluate(args, trainer, eval_sentences, eval_features, labels),
                      main_metric="f1")
    results = evaluate(args, trainer, eval_sentences, eval_features, labels,
                       write_to=(out / f"eval_predictions{suffix}", fmt))
    if args.test_file:
        test_sentences = ner.read_sentences(args.test_file, fmt)
        test_sentences = test_sentences[: args.max_eval_samples] if args.max_eval_samples else test_sentences
        test_predictions = predict_tags(trainer, features_of(test_sentences, labelled=False), labels,
                                        args.eval_batch_size, args.use_crf)
        if trainer.rt.is_main:
            ner.write_predictions(out / f"test_predictions{suffix}", test_sentences, test_predictions, fmt)
    if train and not args.no_save_model:
        trainer.save_model(out / "model", vocab)
    trainer.finish(results)


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
