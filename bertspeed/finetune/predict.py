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

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from bertspeed.finetune import ner, squad
from bertspeed.finetune.cli import load_tokenizer, main_guard, resolve_precision, use_requested_kernels
from bertspeed.finetune.settings import SpanSettings, default_of, parse_settings
from bertspeed.finetune.trainer import collate_padded
from bertspeed.model.architectures import TASK_ARCHITECTURES, architecture_name, build_model, model_class_for
from bertspeed.model.checkpoint import CheckpointError
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.foreign import check_complete, open_checkpoint
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification
from bertspeed.model.unpad import set_unpad
from bertspeed.training.distributed import exit_process
from bertspeed.training.hardware import autocast
from bertspeed.training.settings import setting

MODELS = TASK_ARCHITECTURES  # architecture name -> finetuned task model (bertspeed/model/architectures.py)


@dataclass(kw_only=True)
class PredictSettings(SpanSettings):
    INPUT_FILES: ClassVar[tuple[str, ...]] = ("vocab_file", "input_file")
    model_dir: str = setting(help="a finetuned model folder (OUT/model, or OUT), or a Google TF checkpoint or "
                                  "NVIDIA .pt with a task head (SQuAD, classifier)")
    question: str | None = setting(None, help="QA: the question")
    context: str | None = setting(None, help="QA: the passage to answer from")
    sentence: str | None = setting(None, help="classification / NER: the input sentence")
    sentence_b: str | None = setting(None, help="classification: the second sentence of a pair task")
    input_file: str | None = setting(None, help="many inputs, one per line (tab-separated fields)")
    max_seq_length: int = default_of(SpanSettings, "max_seq_length", 384)


def parse_args(argv=None) -> PredictSettings:
    return parse_settings(PredictSettings, argv, __doc__)


def load(model_dir, vocab_file=None, do_lower_case=None):
    """A finetuned task model (our folder, OUT of a driver, or a foreign checkpoint with a task head such as
    a Google SQuAD/classifier TF checkpoint or NVIDIA's bert_large_qa.pt) and its tokenizer."""
    folder = Path(model_dir)
    if (folder / "model").is_dir() and not (folder / "config.json").is_file():
        folder = folder / "model"  # a driver's output directory
    source = open_checkpoint(folder)
    name = architecture_name(source.config) or model_class_for(source.config, source.state, source.source).__name__
    if name not in MODELS:
        raise ValueError(f"{source.source}: architectures {name!r} is not a finetuned task model "
                         f"({', '.join(MODELS)})")
    check_complete(source)
    model, report = build_model(source.config, source.state, source.source, MODELS[name])
    if report.initialized:
        raise CheckpointError(f"{source.source}: no weights for {', '.join(report.initialized)}: not a finetuned {name}")
    tokenizer, _ = load_tokenizer(source.folder, vocab_file, do_lower_case)
    return model.eval(), tokenizer


def read_inputs(settings, fields: int) -> list[list[str]]:
    if settings.input_file:
        path = Path(settings.input_file)
        if not path.is_file():
            raise FileNotFoundError(f"--input_file {path} not found")
        rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for n, row in enumerate(rows, start=1):
            if len(row) > fields:
                raise ValueError(f"{path}:{n}: at most {fields} tab-separated fields expected, got {len(row)}")
        return rows
    return []


@torch.no_grad()
def answer(model, tokenizer, question: str, context: str, settings) -> dict:
    example = squad.SquadExample("q", question, 0, [], False)
    features, offsets = squad.featurize([example], [context], tokenizer, settings.max_seq_length,
                                        settings.doc_stride, settings.max_query_length, training=False)
    out = model(**collate_padded(features))
    start, end = out.start_logits.float().numpy(), out.end_logits.float().numpy()
    logits = [(start[i, :len(f["input_ids"])], end[i, :len(f["input_ids"])]) for i, f in enumerate(features)]
    preds, nbest, _, _ = squad.decode([example], [context], features, offsets, logits, settings.n_best_size,
                                      settings.max_answer_length)
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
    settings = parse_args(argv)
    settings.check_paths()
    use_requested_kernels(settings)
    model, tokenizer = load(settings.model_dir, settings.vocab_file, settings.do_lower_case)
    set_unpad(model, settings.unpad)
    precision = resolve_precision(settings.precision, None, torch.device("cpu"))
    print(f"precision: {precision}", file=sys.stderr, flush=True)
    with autocast(precision.name, "cpu"):
        results = predict(model, tokenizer, settings)
    for result in results:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


def predict(model, tokenizer, settings) -> list[dict]:
    if isinstance(model, BertForQuestionAnswering):
        inputs = read_inputs(settings, 2) or [[settings.question, settings.context]]
        if any(len(row) != 2 or row[0] is None or row[1] is None for row in inputs):
            raise ValueError("a question-answering model needs --question and --context (or question<TAB>context lines)")
        results = [answer(model, tokenizer, q, c, settings) for q, c in inputs]
    elif isinstance(model, BertForSequenceClassification):
        typed = [settings.sentence] + ([settings.sentence_b] if settings.sentence_b else [])
        inputs = read_inputs(settings, 2) or ([typed] if settings.sentence else [])
        if not inputs:
            raise ValueError("a classification model needs --sentence (or --input_file)")
        pairs = [row[1] for row in inputs] if all(len(row) == 2 for row in inputs) else None
        results = classify(model, tokenizer, [row[0] for row in inputs], pairs, min(settings.max_seq_length, 512))
    else:
        inputs = read_inputs(settings, 1) or ([[settings.sentence]] if settings.sentence else [])
        if not inputs:
            raise ValueError("a token-classification model needs --sentence (or --input_file)")
        results = [tag(model, tokenizer, row[0], settings.max_seq_length) for row in inputs]
    return results


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    exit_process(entry())
