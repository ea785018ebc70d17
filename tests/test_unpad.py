"""Unpadded and packed forwards give the padded model's losses and gradients (fp32, 1e-5) on real data; packed
finetuning also its predictions and scores (SQuAD windows, a GLUE task), through the drivers' --pack too."""
from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from pretrain_helpers import ds_config, losses, make_shards, run_pretraining, tiny_model_config

from bertspeed.finetune import glue, predict, run_glue, run_squad, squad
from bertspeed.finetune.batches import collate_padded
from bertspeed.finetune.metrics import glue_metrics
from bertspeed.model.checkpoint import save_pretrained
from bertspeed.model.config import BertConfig
from bertspeed.model.crf import BertCRFForTokenClassification
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification
from bertspeed.model.layers import use_fused_kernels
from bertspeed.model.model import BertForPreTraining
from bertspeed.model.packing import plan_packing
from bertspeed.model.tokenizer import BertTokenizer
from bertspeed.model.unpad import set_pack, set_unpad
from bertspeed.pretrain.data import PretrainingData, list_shards
from bertspeed.pretrain.packing import pack_batch

TOL = 1e-5


def tiny_config(**changes) -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=512, **changes)


def loss_and_grads(model, run):
    model.zero_grad()
    out = run()
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b):
    loss_a, grads_a = a
    loss_b, grads_b = b
    torch.testing.assert_close(loss_b.loss, loss_a.loss, atol=TOL, rtol=TOL)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=TOL, rtol=TOL, msg=name)


@pytest.fixture(scope="module")
def squad_dev_set(vocab_file, squad_dev):
    """The tokenizer and SQuAD v1.1 dev (dataset, contexts, questions), read once."""
    return BertTokenizer.from_vocab_file(vocab_file), *squad.read_squad(squad_dev)


def squad_features(squad_dev_set, count: int, training: bool = True):
    """The first `count` questions and their windows at seq 384 (only their contexts tokenized)."""
    tokenizer, dataset, contexts, examples = squad_dev_set
    examples = examples[:count]
    contexts = contexts[: max(e.context_id for e in examples) + 1]
    features, offsets = squad.featurize(examples, contexts, tokenizer, max_seq_length=384, doc_stride=128,
                                        max_query_length=64, training=training)
    return dataset, contexts, examples, features, offsets


def each_window_alone(model, features):
    """The padded model on each window alone (no padding): outputs, and gradients of the mean loss."""
    model.zero_grad()
    alone = []
    for f in features:
        out = model(**collate_padded([f]))
        (out.loss / len(features)).backward()
        alone.append(out)
    return alone, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_windows_match(alone, grads_alone, out, grads):
    """QA: the mean loss, gradients and each window's logits equal those of the window run alone."""
    torch.testing.assert_close(out.loss, torch.stack([o.loss for o in alone]).mean(), atol=TOL, rtol=TOL)
    assert grads.keys() == grads_alone.keys()
    for name, expected in grads_alone.items():
        torch.testing.assert_close(grads[name], expected, atol=TOL, rtol=TOL, msg=name)
    for i, one in enumerate(alone):
        n = one.start_logits.shape[1]
        torch.testing.assert_close(out.start_logits[i, :n], one.start_logits[0], atol=TOL, rtol=TOL)
        torch.testing.assert_close(out.end_logits[i, :n], one.end_logits[0], atol=TOL, rtol=TOL)


def test_squad_unpadded_matches_padded(squad_dev_set):
    """Real SQuAD windows at seq 384, padded to 384. The padded QA loss puts its padding logits into the
    softmax (as transformers does), so the reference is the padded model on each window alone, unpadded:
    logits, loss (mean over windows) and gradients."""
    *_, features, _ = squad_features(squad_dev_set, 6)
    batch = collate_padded(features)
    pad = 384 - batch["input_ids"].shape[1]
    batch = {k: (torch.nn.functional.pad(v, (0, pad)) if v.dim() == 2 else v) for k, v in batch.items()}
    assert 0 < batch["attention_mask"].float().mean() < 1
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config()).eval()
    alone, grads_alone = each_window_alone(model, features)
    set_unpad(model)
    assert_windows_match(alone, grads_alone, *loss_and_grads(model, lambda: model(**batch)))

    # GLUE's head (pooler on [CLS]) on the same real question/context pairs: padded batch vs unpadded.
    classifier = BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.arange(len(features)) % 3
    padded = loss_and_grads(classifier, lambda: classifier(**inputs, labels=labels))
    set_unpad(classifier)
    assert_same(padded, loss_and_grads(classifier, lambda: classifier(**inputs, labels=labels)))


def test_squad_packed_matches_padded(squad_dev_set):
    """Real SQuAD windows packed into rows of 384 (--pack): as --unpad, loss, gradients and logits of each
    window run alone; and the same predictions, n-best probabilities and EM/F1 as the padded model's."""
    dataset, _, _, features, _ = squad_features(squad_dev_set, 8)
    batch = collate_padded(features)
    assert plan_packing(batch["attention_mask"], 384).num_rows < len(features) // 2 + 1  # two windows a row
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config()).eval()
    alone, grads_alone = each_window_alone(model, features)
    dev = squad_features(squad_dev_set, 8, training=False)
    padded_answers = squad_answers(model, dataset, dev)
    set_pack(model, 384)
    assert_windows_match(alone, grads_alone, *loss_and_grads(model, lambda: model(**batch)))
    packed_answers = squad_answers(model, dataset, dev)
    assert packed_answers[0] == padded_answers[0] and packed_answers[2] == padded_answers[2]
    for qid, candidates in padded_answers[1].items():
        assert [c["text"] for c in packed_answers[1][qid]] == [c["text"] for c in candidates]
        torch.testing.assert_close([c["probability"] for c in packed_answers[1][qid]],
                                   [c["probability"] for c in candidates], atol=TOL, rtol=TOL)


def squad_answers(model, dataset, dev):
    """run_squad's prediction path on one batch: predictions, n-best lists, EM/F1 on these questions."""
    _, contexts, examples, features, offsets = dev
    batch = collate_padded(features)
    with torch.no_grad():
        logits = run_squad._extract(model(**batch), batch)
    predictions, nbest, null_odds, best = squad.decode(examples, contexts, features, offsets, logits)
    asked = run_squad._restrict(dataset, {e.qid for e in examples})
    return predictions, nbest, run_squad.score(asked, predictions, null_odds, best, version_2=False)


def test_glue_and_token_heads_packed_match_padded(vocab_file, glue_dir):
    """Real MRPC dev pairs (GLUE), batch padded to its longest vs packed into rows of 128: the classifier's
    loss, gradients, logits, predictions and scores ([CLS] pooled per pair); a token classifier and the CRF
    tagger on the same tokens (a label per token)."""
    task = glue.get_task("MRPC")
    examples = glue.read_examples(task, glue_dir / "MRPC" / "dev.tsv")[:24]
    batch = collate_padded(glue.featurize(examples, BertTokenizer.from_vocab_file(vocab_file), 128))
    mask = batch["attention_mask"].bool()
    assert plan_packing(batch["attention_mask"], 128).num_rows <= len(examples) // 2
    torch.manual_seed(0)
    token_labels = (batch["input_ids"] % 5).masked_fill(~mask, -100)
    cases = [(BertForSequenceClassification(tiny_config(num_labels=2)), batch),
             (BertForTokenClassification(tiny_config(num_labels=5)), {**batch, "labels": token_labels}),
             (BertCRFForTokenClassification(tiny_config(num_labels=5)),
              {**batch, "labels": token_labels, "word_mask": batch["attention_mask"]})]
    outputs = []
    for model, inputs in cases:
        model.eval()
        padded = loss_and_grads(model, partial(model, **inputs))
        set_pack(model, 128)
        packed = loss_and_grads(model, partial(model, **inputs))
        assert_same(padded, packed)
        select = mask if packed[0].logits.dim() == 3 else slice(None)
        torch.testing.assert_close(packed[0].logits[select], padded[0].logits[select], atol=TOL, rtol=TOL)
        outputs.append((padded[0], packed[0]))
    assert outputs[2][1].tags == outputs[2][0].tags  # the CRF's Viterbi paths
    labels = [e.label for e in examples]
    scores = [glue_metrics(task.metric_name, out.logits.argmax(-1).numpy(), labels) for out in outputs[0]]
    assert scores[1] == scores[0]


def test_classifier_last_layer_runs_at_cls_only_in_every_layout(vocab_file, glue_dir):
    """Padded, unpadded and packed, the classifier's last layer runs at [CLS] only, with the same loss and
    gradients (real MRPC dev pairs)."""
    task = glue.get_task("MRPC")
    examples = glue.read_examples(task, glue_dir / "MRPC" / "dev.tsv")[:16]
    batch = collate_padded(glue.featurize(examples, BertTokenizer.from_vocab_file(vocab_file), 128))
    assert not batch["attention_mask"].all()
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(num_labels=2)).eval()
    results = []
    for layout in ("padded", "unpad", "pack"):
        set_unpad(model, layout == "unpad")
        set_pack(model, 128 if layout == "pack" else None)
        result, rows = last_layer_rows(model, partial(model, **batch))
        assert rows == len(examples), layout
        results.append(result)
    assert_same(results[0], results[1])
    assert_same(results[0], results[2])


@pytest.fixture(scope="module")
def pretraining_shards(tmp_path_factory, squad_dev, vocab_file):
    """Real phase-2-style shards (sentence pairs of real text of every length)."""
    return make_shards(tmp_path_factory.mktemp("unpad") / "shards", squad_dev, vocab_file, num_shards=1,
                       seq_len=256, max_pred=40, paragraphs_per_shard=24)


@pytest.fixture(scope="module")
def pretraining_batch(pretraining_shards):
    return next(PretrainingData(list_shards(pretraining_shards), 12, 0, 1, seed=0))


def last_layer_rows(model, run):
    """Loss and gradients of `run`, and the number of tokens the model's last layer computed its FFN on."""
    rows = []
    hook = model.bert.encoder.layer[-1].intermediate.dense.register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        return loss_and_grads(model, run), rows[0]
    finally:
        hook.remove()


def test_pretraining_unpadded_and_packed_match_padded(pretraining_batch):
    """Every layout with the last layer at [CLS] and the labelled tokens only (the default), and packed with the
    whole last layer, gives the padded model's losses and gradients."""
    batch = pretraining_batch
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < 128 < lengths.max()  # some short instances to pack
    torch.manual_seed(0)
    # train mode without dropout: the MLM loss runs fused (mlm_loss.py) in every layout
    model = BertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    padded = loss_and_grads(model, lambda: model(**batch))
    packed_batch = pack_batch(batch)
    assert packed_batch["input_ids"].shape[0] < batch["input_ids"].shape[0]  # several instances per row
    assert (packed_batch["cls_positions"] >= 0).sum() == len(lengths)
    wanted = int((batch["labels"] != -100).sum()) + len(lengths)  # [CLS] and labelled tokens
    packed, rows = last_layer_rows(model, lambda: model(packed=packed_batch))
    assert wanted <= rows < int(lengths.sum())
    assert_same(padded, packed)
    for name in ("mlm_loss", "nsp_loss"):
        torch.testing.assert_close(getattr(packed[0], name), getattr(padded[0], name), atol=TOL, rtol=TOL)
    use_fused_kernels(True)  # their attention with the last layer's per-query mask (reference path on a CPU)
    try:
        assert_same(padded, loss_and_grads(model, lambda: model(packed=packed_batch)))
    finally:
        use_fused_kernels(False)
    model.last_layer_at_loss_positions = False  # the whole last layer in packed rows
    packed_whole, rows = last_layer_rows(model, lambda: model(packed=packed_batch))
    assert rows == packed_batch["input_ids"].numel()
    assert_same(padded, packed_whole)
    model.last_layer_at_loss_positions = True
    set_unpad(model)
    unpadded, rows = last_layer_rows(model, lambda: model(**batch))
    assert wanted <= rows < int(lengths.sum())
    assert_same(padded, unpadded)


def test_run_pretraining_with_unpad_or_pack_trains_as_padded(tmp_path, pretraining_shards):
    """The driver end to end (DeepSpeed, LAMB, fp32, no dropout): --unpad and --pack give the padded run's
    losses at every step, so the weights they train are the same."""
    model = tiny_model_config(tmp_path / "model.json", max_position_embeddings=256, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0)
    ds = ds_config(tmp_path / "ds.json", micro=12, accumulation=1)
    runs = {}
    for layout in ("padded", "unpad", "pack"):
        run_pretraining(["--deepspeed_config", str(ds), "--input_dir", str(pretraining_shards), "--config_file",
                         str(model), "--output_dir", str(tmp_path / layout), "--max_steps", "3", "--warmup_steps", "1",
                         "--log_interval", "1", "--precision", "fp32",
                         *([] if layout == "padded" else [f"--{layout}"])], ranks=0)
        runs[layout] = [losses(tmp_path / layout, key) for key in ("train/mlm_loss", "train/nsp_loss")]
    assert sorted(runs["padded"][0]) == [1, 2, 3]
    assert all(ratio > 1 for ratio in losses(tmp_path / "pack", "perf/instances_per_row").values())
    assert json.loads((tmp_path / "unpad" / "run_config.json").read_text())["args"]["unpad"]
    for layout in ("unpad", "pack"):
        for got, want in zip(runs[layout], runs["padded"]):
            assert got == pytest.approx(want, rel=TOL, abs=TOL), layout


def test_packing_keeps_every_token_label_and_position(pretraining_batch):
    batch = pretraining_batch
    packed = pack_batch(batch)
    real = packed["instance_ids"] > 0
    assert real.sum() == batch["attention_mask"].sum()
    assert sorted(packed["input_ids"][real].tolist()) == sorted(batch["input_ids"][batch["attention_mask"].bool()].tolist())
    assert sorted(packed["labels"][packed["labels"] != -100].tolist()) == \
        sorted(batch["labels"][batch["labels"] != -100].tolist())
    starts = packed["position_ids"] == 0
    assert (starts & real).sum() == len(batch["input_ids"])  # each instance restarts its positions
    assert sorted(packed["next_sentence_label"][packed["cls_positions"] >= 0].tolist()) == \
        sorted(batch["next_sentence_label"].tolist())


def test_unpad_and_pack_refuse_a_mask_with_holes_and_each_other():
    model = BertForPreTraining(tiny_config()).eval()
    set_unpad(model)
    ids = torch.ones(1, 8, dtype=torch.long)
    holes = torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="ones then zeros"):
        model(ids, holes)
    with pytest.raises(ValueError, match="only one of --unpad and --pack"):
        set_pack(model, 8)
    set_unpad(model, False)
    set_pack(model, 8)
    with pytest.raises(ValueError, match="packing needs attention_mask rows of ones then zeros"):
        model.bert(ids, holes)
    with pytest.raises(ValueError, match="only one of --unpad and --pack"):
        set_unpad(model)


def test_run_glue_with_pack_scores_as_the_padded_model(tmp_path, glue_dir, vocab_file):
    """--pack through a driver: it trains (a step) and scores MRPC dev; the padded model scoring the saved weights
    writes the same predictions and scores. --unpad with --pack is refused naming both."""
    torch.manual_seed(0)
    save_pretrained(BertForPreTraining(BertConfig.preset("tiny")), tmp_path / "hf", vocab_file=vocab_file)
    common = ["--task_name", "MRPC", "--data_dir", str(glue_dir / "MRPC"), "--max_eval_samples", "32",
              "--no_test_predictions"]
    run_glue.main([*common, "--model_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "packed"), "--pack",
                   "--max_train_samples", "8", "--max_steps", "1", "--per_device_train_batch_size", "8"])
    run_glue.main([*common, "--model_dir", str(tmp_path / "packed" / "model"), "--output_dir",
                   str(tmp_path / "padded"), "--num_train_epochs", "0"])
    results = [json.loads((tmp_path / run / "eval_results.json").read_text()) for run in ("packed", "padded")]
    assert results[0] == results[1] and results[0]["eval_examples"] == 32
    assert (tmp_path / "packed" / "dev_predictions.tsv").read_text() == \
        (tmp_path / "padded" / "dev_predictions.tsv").read_text()
    with pytest.raises(ValueError, match="give only one of --unpad and --pack"):
        run_glue.parse_args([*common, "--model_dir", "m", "--output_dir", "o", "--unpad", "--pack"])


def test_predict_with_unpad_gives_the_padded_answers(tmp_path, glue_dir, vocab_file, capsys, monkeypatch):
    """predict.py --unpad over sentences of many lengths in one batch: the same labels and probabilities."""
    unpadded = []
    monkeypatch.setattr(predict, "set_unpad", lambda model, on=True: unpadded.append(on) or set_unpad(model, on))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.preset("tiny"))
    save_pretrained(model, tmp_path / "model", vocab_file=vocab_file)
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:25]
    (tmp_path / "in.txt").write_text("".join(f"{r.split(chr(9))[3]}\t{r.split(chr(9))[4]}\n" for r in lines))
    outputs = []
    for flags in ([], ["--unpad"]):
        predict.main(["--model_dir", str(tmp_path / "model"), "--input_file", str(tmp_path / "in.txt"),
                      "--precision", "fp32", *flags])
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert unpadded == [False, True]
    assert [r["label"] for r in outputs[1]] == [r["label"] for r in outputs[0]] and len(outputs[0]) == 24
    assert [r["probability"] for r in outputs[1]] == pytest.approx([r["probability"] for r in outputs[0]], abs=TOL)
