"""Answer a question over a context, classify sentences, or tag entities with a finetuned model.

    python finetune/predict.py --model_dir OUT/model --question "Who ...?" --context "..."
    python finetune/predict.py --model_dir OUT/model --sentence "a gripping film" [--sentence_b "..."]
    python finetune/predict.py --model_dir OUT/model --input_file lines.txt   # one input per line

The task follows the model's config.json (`architectures`, written by our drivers): question
answering, sequence classification/regression, or token classification. --input_file lines are
`question<TAB>context` (QA), `sentence[<TAB>sentence_b]` (classification) or a sentence (NER).
One JSON object per input is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bertspeed.finetune import ner, squad
from bertspeed.finetune.cli import add_precision_args, load_tokenizer, main_guard, resolve_precision
from bertspeed.finetune.trainer import collate_padded
from bertspeed.model.checkpoint import from_pretrained, resolve_model_dir
from bertspeed.model.config import BertConfig
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bertspeed.training.hardware import autocast

MODELS = {cls.__name__: cls for cls in (BertForQuestionAnswering, BertForSequenceClassification,
                                        BertForTokenClassification, BertCRFForTokenClassification)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a finetuned model folder (OUT/model, or OUT)")
    parser.add_argument("--question", help="QA: the question")
    parser.add_argument("--context", help="QA: the passage to answer from")
    parser.add_argument("--sentence", help="classification / NER: the input sentence")
    parser.add_argument("--sentence_b", help="classification: the second sentence of a pair task")
    parser.add_argument("--input_file", help="many inputs, one per line (tab-separated fields)")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--n_best_size", type=int, default=20, help="span candidates searched")
    parser.add_argument("--vocab_file")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None)
    add_precision_args(parser)
    return parser.parse_args(argv)


def load(model_dir, vocab_file=None, do_lower_case=None):
    folder = Path(model_dir)
    if (folder / "model").is_dir() and not (folder / "config.json").is_file():
        folder = folder / "model"  # a driver's output directory
    folder = resolve_model_dir(folder)
    config = BertConfig.from_json_file(folder / "config.json")
    name = (config.extra.get("architectures") or [""])[0]
    if name not in MODELS:
        raise ValueError(f"{folder}/config.json: architectures {name!r} is not a finetuned task model "
                         f"({', '.join(MODELS)})")
    model, _ = from_pretrained(MODELS[name], folder)
    tokenizer, _ = load_tokenizer(folder, vocab_file, do_lower_case)
    return model.eval(), tokenizer


def read_inputs(args, fields: int) -> list[list[str]]:
    if args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise FileNotFoundError(f"--input_file {path} not found")
        rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for n, row in enumerate(rows, start=1):
            if len(row) > fields:
                raise ValueError(f"{path}:{n}: at most {fields} tab-separated fields expected, got {len(row)}")
        return rows
    return []


@torch.no_grad()
def answer(model, tokenizer, question: str, context: str, args) -> dict:
    example = squad.SquadExample("q", question, 0, [], False)
    features, offsets = squad.featurize([example], [context], tokenizer, args.max_seq_length, args.doc_stride,
                                        64, training=False)
    out = model(**collate_padded(features))
    start, end = out.start_logits.float().numpy(), out.end_logits.float().numpy()
    logits = [(start[i, :len(f["input_ids"])], end[i, :len(f["input_ids"])]) for i, f in enumerate(features)]
    preds, nbest, _, _ = squad.decode([example], [context], features, offsets, logits, args.n_best_size,
                                      args.max_answer_length)
    return {"question": question, "answer": preds["q"], "nbest": nbest["q"][:5]}


@torch.no_grad()
def classify(model, tokenizer, sentences: list[str], pairs, max_seq_length: int) -> list[dict]:
    enc = tokenizer.encode_batch(sentences, pairs, max_length=max_seq_length, return_tensors="pt")
    logits = model(**enc).logits
    if model.is_regression:
        return [{"sentence": s, "score": float(v)} for s, v in zip(sentences, logits[:, 0])]
    labels = model.config.id2label or {}
    probs = logits.softmax(-1)
    return [{"sentence": s, "label": labels.get(int(p.argmax()), int(p.argmax())), "probability": float(p.max())}
            for s, p in zip(sentences, probs)]


@torch.no_grad()
def tag(model, tokenizer, sentence: str, max_seq_length: int) -> dict:
    words = sentence.split()
    crf = isinstance(model, BertCRFForTokenClassification)
    feature = ner.featurize([ner.Sentence(words, None)], tokenizer, max_seq_length, None, word_mask=crf)[0]
    out = model(**collate_padded([feature]))
    labels = model.config.id2label
    if crf:
        it = iter(out.tags[0])
        tags = [labels[next(it)] if p is not None else "O" for p in feature["_word_starts"]]
    else:
        best = out.logits[0].argmax(-1)
        tags = [labels[int(best[p])] if p is not None else "O" for p in feature["_word_starts"]]
    return {"sentence": sentence, "tags": list(zip(words, tags))}


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer = load(args.model_dir, args.vocab_file, args.do_lower_case)
    precision = resolve_precision(args.precision, None, torch.device("cpu"))
    print(f"precision: {precision}", file=sys.stderr, flush=True)
    with autocast(precision.name, "cpu"):
        results = predict(model, tokenizer, args)
    for result in results:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


def predict(model, tokenizer, args) -> list[dict]:
    if isinstance(model, BertForQuestionAnswering):
        inputs = read_inputs(args, 2) or [[args.question, args.context]]
        if any(len(row) != 2 or row[0] is None or row[1] is None for row in inputs):
            raise ValueError("a question-answering model needs --question and --context (or question<TAB>context lines)")
        results = [answer(model, tokenizer, q, c, args) for q, c in inputs]
    elif isinstance(model, BertForSequenceClassification):
        inputs = read_inputs(args, 2) or ([[args.sentence] + ([args.sentence_b] if args.sentence_b else [])]
                                          if args.sentence else [])
        if not inputs:
            raise ValueError("a classification model needs --sentence (or --input_file)")
        pairs = [row[1] for row in inputs] if all(len(row) == 2 for row in inputs) else None
        results = classify(model, tokenizer, [row[0] for row in inputs], pairs, min(args.max_seq_length, 512))
    else:
        inputs = read_inputs(args, 1) or ([[args.sentence]] if args.sentence else [])
        if not inputs:
            raise ValueError("a token-classification model needs --sentence (or --input_file)")
        results = [tag(model, tokenizer, row[0], args.max_seq_length) for row in inputs]
    return results


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
