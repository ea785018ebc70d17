"""Finetune and evaluate a BERT checkpoint for named-entity recognition (CoNLL-2003 or CLUENER JSON).

    python finetune/run_ner.py --train_file conll/train.txt --eval_file conll/dev.txt \\
        --model_dir MODEL --output_dir OUT [--test_file conll/test.txt] [--use_crf]
    python finetune/run_ner.py --model_name_or_path MODEL --train_file conll/train.txt \\
        --validation_file conll/dev.txt --do_train --do_eval --output_dir OUT   # Hugging Face's spelling

The format follows the extension (.json/.jsonl = CLUENER-style, otherwise CoNLL) unless --format is
given. Writes OUT/eval_results.json (entity-level precision / recall / f1, seqeval's definition),
OUT/eval_predictions.* and OUT/test_predictions.* in the input's format, OUT/metrics.jsonl, OUT/model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bertspeed.finetune import ner
from bertspeed.finetune.batches import collate_padded
from bertspeed.finetune.cli import main_guard, start
from bertspeed.finetune.metrics import entity_scores
from bertspeed.finetune.settings import FinetuneSettings, parse_settings
from bertspeed.model.architectures import architecture_name
from bertspeed.model.checkpoint import resolve_model_dir
from bertspeed.model.config import BertConfig
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.heads import BertForTokenClassification
from bertspeed.training.distributed import exit_process
from bertspeed.training.settings import setting


@dataclass(kw_only=True)
class NerSettings(FinetuneSettings):  # the common defaults: lr 5e-5, 3 epochs, batch 32, 128 tokens
    INPUT_FILES: ClassVar[tuple[str, ...]] = (*FinetuneSettings.INPUT_FILES, "train_file", "eval_file", "test_file",
                                              "label_file")
    train_file: str | None = setting(None, help="labelled sentences to train on")
    eval_file: str | None = setting(None, help="labelled sentences to score (required unless --do_train / "
                                               "--do_predict without --do_eval)", aliases=("--validation_file",))
    test_file: str | None = setting(None, help="sentences to label (labels, if any, are ignored)")
    format: str | None = setting(None, help="conll, cluener, msra (character per line) or msra_xml (the MindSpore "
                                            "seed's XML) (default: from the file extension)", choices=ner.FORMATS)
    label_file: str | None = setting(None, help="the labels, one per line: entity types (the MindSpore seed's "
                                                "label2id list: O + S/B/M/E of each) or whole tags (default: those "
                                                "of the training data)")
    class_filter: list[str] | None = setting(None, help="keep only these entity types (or seed XML element names "
                                                        "such as NAMEX); others are tagged O")
    use_crf: bool = setting(False, help="a CRF layer over the word-level tags (kept by default for a model "
                                        "saved with one)")

    def __post_init__(self):
        super().__post_init__()
        if self.format is not None and self.format not in ner.FORMATS:
            raise ValueError(f"--format must be one of {', '.join(ner.FORMATS)}, got {self.format!r}")


def parse_args(argv=None) -> NerSettings:
    return parse_settings(NerSettings, argv, __doc__)


def model_labels(settings, sentence_sets, train: bool) -> list[str]:
    """Labels of the data; when not training, those the finetuned model was saved with."""
    if settings.label_file:
        return ner.read_label_file(settings.label_file)
    if train:
        return ner.label_list(*sentence_sets)
    config = BertConfig.from_json_file(resolve_model_dir(settings.model_dir) / "config.json")
    if not config.id2label:
        raise ValueError(f"{settings.model_dir}: config.json has no id2label; train first (--train_file)")
    return [config.id2label[i] for i in range(len(config.id2label))]


def saved_with_crf(model_dir) -> bool:
    """A model finetuned with --use_crf keeps its CRF when loaded again."""
    config = BertConfig.from_json_file(resolve_model_dir(model_dir) / "config.json")
    return architecture_name(config) == BertCRFForTokenClassification.__name__


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


def evaluate(settings, trainer, sentences, features, labels, write_to=None) -> dict:
    """Entity-level scores of the model's tags for the labelled `sentences`; `write_to` = (path,
    format) also writes the predictions there."""
    predictions = predict_tags(trainer, features, labels, settings.eval_batch_size, settings.use_crf)
    results = entity_scores([s.labels for s in sentences], predictions)
    cut = sum(p is None for f in features for p in f["_word_starts"])
    results.update(eval_sentences=len(sentences), eval_words_not_encoded=cut)
    if write_to and trainer.rt.is_main:
        ner.write_predictions(write_to[0], sentences, predictions, write_to[1])
    return results


def main(argv=None):
    settings = parse_args(argv)
    settings.check_paths()
    train, do_eval, do_predict = settings.steps(has_train_data=bool(settings.train_file))
    do_predict = do_predict and bool(settings.test_file)
    if settings.do_predict and not settings.test_file:
        raise ValueError("--do_predict needs --test_file")
    if do_eval and not settings.eval_file:
        raise ValueError("--eval_file is required to evaluate (or give only --do_train / --do_predict)")
    files = [f for f in (settings.eval_file, settings.train_file, settings.test_file) if f]
    fmt = settings.format or (ner.detect_format(Path(files[0])) if files else None)
    train_sentences = ner.read_sentences(settings.train_file, fmt, settings.class_filter) if train else []
    eval_sentences = ner.read_sentences(settings.eval_file, fmt, settings.class_filter) if do_eval else []
    if any(s.labels is None for s in eval_sentences):
        raise ValueError(f"{settings.eval_file}: every sentence needs labels to be scored")
    train_sentences = train_sentences[: settings.max_train_samples] if settings.max_train_samples else train_sentences
    eval_sentences = eval_sentences[: settings.max_eval_samples] if settings.max_eval_samples else eval_sentences
    labels = model_labels(settings, [train_sentences, eval_sentences], train)
    label2id = {label: i for i, label in enumerate(labels)}
    if saved_with_crf(settings.model_dir):
        settings = dataclasses.replace(settings, use_crf=True)
    model_class = BertCRFForTokenClassification if settings.use_crf else BertForTokenClassification
    trainer, tokenizer, vocab = start(settings, model_class, train, num_labels=len(labels),
                                      id2label=dict(enumerate(labels)))

    def features_of(sentences, labelled=True):
        return ner.featurize(sentences, tokenizer, settings.max_seq_length, label2id if labelled else None,
                             word_mask=settings.use_crf)

    eval_features = features_of(eval_sentences)
    out = Path(settings.output_dir)
    suffix = ".json" if fmt == "cluener" else ".txt"
    if train:
        features = features_of(train_sentences)
        evaluate_now = (lambda: evaluate(settings, trainer, eval_sentences, eval_features, labels)) if do_eval else None
        trainer.train(features, collate_padded, [len(f["input_ids"]) for f in features], evaluate=evaluate_now,
                      main_metric="f1")
    results = evaluate(settings, trainer, eval_sentences, eval_features, labels,
                       write_to=(out / f"eval_predictions{suffix}", fmt)) if do_eval else None
    if do_predict:
        test_sentences = ner.read_sentences(settings.test_file, fmt)
        test_sentences = test_sentences[: settings.max_eval_samples] if settings.max_eval_samples else test_sentences
        test_predictions = predict_tags(trainer, features_of(test_sentences, labelled=False), labels,
                                        settings.eval_batch_size, settings.use_crf)
        if trainer.rt.is_main:
            ner.write_predictions(out / f"test_predictions{suffix}", test_sentences, test_predictions, fmt)
    if train and not settings.no_save_model:
        trainer.save_model(out / "model", vocab, tokenizer.do_lower_case)
    trainer.finish(results)


def entry(argv=None) -> int:
    """The command: main() with bad input reported as `error: ...` and exit code 2."""
    return main_guard(main, argv)


if __name__ == "__main__":
    exit_process(entry())
