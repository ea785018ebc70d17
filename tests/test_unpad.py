"""Unpadded and packed forwards give the padded model's losses and gradients (fp32, 1e-5) on real data."""
from __future__ import annotations

import pytest
import torch
from pretrain_helpers import make_shards

from bertspeed.finetune import squad
from bertspeed.finetune.batches import collate_padded
from bertspeed.model.config import BertConfig
from bertspeed.model.heads import BertForQuestionAnswering, BertForSequenceClassification
from bertspeed.model.model import BertForPreTraining
from bertspeed.model.tokenizer import BertTokenizer
from bertspeed.model.unpad import set_unpad
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


def test_squad_unpadded_matches_padded(vocab_file, squad_dev):
    """Real SQuAD windows at seq 384, padded to 384. The padded QA loss puts its padding logits into the
    softmax (as transformers does), so the reference is the padded model on each window alone, unpadded:
    logits, loss (mean over windows) and gradients."""
    tokenizer = BertTokenizer.from_vocab_file(vocab_file)
    _, contexts, examples = squad.read_squad(squad_dev)
    features, _ = squad.featurize(examples[:6], contexts, tokenizer, max_seq_length=384, doc_stride=128,
                                  max_query_length=64, training=True)
    batch = collate_padded(features)
    pad = 384 - batch["input_ids"].shape[1]
    batch = {k: (torch.nn.functional.pad(v, (0, pad)) if v.dim() == 2 else v) for k, v in batch.items()}
    assert 0 < batch["attention_mask"].float().mean() < 1
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config()).eval()
    model.zero_grad()
    alone = []
    for f in features:
        one = collate_padded([f])
        out = model(**one)
        (out.loss / len(features)).backward()
        alone.append(out)
    padded_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    set_unpad(model)
    unpadded, grads = loss_and_grads(model, lambda: model(**batch))
    torch.testing.assert_close(unpadded.loss, torch.stack([o.loss for o in alone]).mean(), atol=TOL, rtol=TOL)
    for name, expected in padded_grads.items():
        torch.testing.assert_close(grads[name], expected, atol=TOL, rtol=TOL, msg=name)
    for i, out in enumerate(alone):
        n = out.start_logits.shape[1]
        torch.testing.assert_close(unpadded.start_logits[i, :n], out.start_logits[0], atol=TOL, rtol=TOL)
        torch.testing.assert_close(unpadded.end_logits[i, :n], out.end_logits[0], atol=TOL, rtol=TOL)

    # GLUE's head (pooler on [CLS]) on the same real question/context pairs: padded batch vs unpadded.
    classifier = BertForSequenceClassification(tiny_config(num_labels=3)).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.arange(len(features)) % 3
    padded = loss_and_grads(classifier, lambda: classifier(**inputs, labels=labels))
    set_unpad(classifier)
    assert_same(padded, loss_and_grads(classifier, lambda: classifier(**inputs, labels=labels)))


@pytest.fixture(scope="module")
def pretraining_batch(tmp_path_factory, squad_dev, vocab_file):
    """A micro-batch of real phase-2-style shards (sentence pairs of real text of every length)."""
    shards = make_shards(tmp_path_factory.mktemp("unpad") / "shards", squad_dev, vocab_file, num_shards=1,
                         seq_len=256, max_pred=40, paragraphs_per_shard=24)
    return next(PretrainingData(list_shards(shards), 12, 0, 1, seed=0))


def test_pretraining_unpadded_and_packed_match_padded(pretraining_batch):
    batch = pretraining_batch
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < 128 < lengths.max()  # some short instances to pack
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    padded = loss_and_grads(model, lambda: model(**batch))
    packed_batch = pack_batch(batch)
    assert packed_batch["input_ids"].shape[0] < batch["input_ids"].shape[0]  # several instances per row
    assert (packed_batch["cls_positions"] >= 0).sum() == len(lengths)
    packed = loss_and_grads(model, lambda: model(packed=packed_batch))
    set_unpad(model)
    unpadded = loss_and_grads(model, lambda: model(**batch))
    assert_same(padded, unpadded)
    assert_same(padded, packed)
    for name in ("mlm_loss", "nsp_loss"):
        torch.testing.assert_close(getattr(packed[0], name), getattr(padded[0], name), atol=TOL, rtol=TOL)


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


def test_unpad_refuses_a_mask_with_holes():
    model = BertForPreTraining(tiny_config()).eval()
    set_unpad(model)
    ids = torch.ones(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="ones then zeros"):
        model(ids, torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0]]))
