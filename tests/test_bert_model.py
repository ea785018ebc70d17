"""bertspeed.model: state-dict keys, parity with transformers, sparse MLM, config."""
import json

import pytest
import torch

from bertspeed.model import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from bertspeed.model.checkpoint import load_state_dict_into

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

LAYER_KEYS = [
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
    "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
]
PINNED_PRETRAINING_KEYS = (
    ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
     "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
     "bert.embeddings.LayerNorm.bias"]
    + [f"bert.encoder.layer.{i}.{k}" for i in range(2) for k in LAYER_KEYS]
    + ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.predictions.bias",
       "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
       "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
       "cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "cls.seq_relationship.weight",
       "cls.seq_relationship.bias"]
)

PAIRS = [  # (ours, transformers' class name, head keys besides bert.*)
    (BertForPreTraining, "BertForPreTraining"),
    (BertForSequenceClassification, "BertForSequenceClassification"),
    (BertForQuestionAnswering, "BertForQuestionAnswering"),
    (BertForTokenClassification, "BertForTokenClassification"),
    (BertModel, "BertModel"),
]


def hf_model(name, **overrides):
    config = transformers.BertConfig(**{**TINY, **overrides}, attn_implementation="eager")
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so the test can fail on them
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def ours_from(hf, cls, **overrides):
    ours = cls(BertConfig(**{**TINY, **overrides})).eval()
    report = load_state_dict_into(ours, hf.state_dict(), "hf")
    assert not report.initialized and not report.unused, report.summary()
    if hasattr(ours, "tie_weights"):
        ours.tie_weights()
    return ours


def batch(padded: bool, B=3, T=11):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TINY["vocab_size"], (B, T), generator=g)
    types = torch.randint(0, 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        mask[0, 7:] = 0
        mask[2, 2:] = 0
    return ids, mask, types


def test_pinned_state_dict_keys():
    ours = BertForPreTraining(BertConfig(**TINY))
    assert list(ours.state_dict()) == PINNED_PRETRAINING_KEYS


@pytest.mark.parametrize("cls,name", PAIRS)
def test_keys_equal_transformers(cls, name):
    assert set(cls(BertConfig(**TINY)).state_dict()) == set(hf_model(name).state_dict())


@pytest.mark.parametrize("padded", [False, True])
def test_pretraining_logits_and_grads_match_transformers(padded):
    hf = hf_model("BertForPreTraining")
    ours = ours_from(hf, BertForPreTraining)
    ids, mask, types = batch(padded)
    ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    out = ours(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(out.prediction_logits[real], ref.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, atol=1e-5, rtol=1e-5)

    (ref.prediction_logits[real].square().mean() + ref.seq_relationship_logits.square().mean()).backward()
    (out.prediction_logits[real].square().mean() + out.seq_relationship_logits.square().mean()).backward()
    hf_params = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, hf_params[key].grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("cls,name", PAIRS[1:4])
@pytest.mark.parametrize("padded", [False, True])
def test_task_heads_match_transformers(cls, name, padded):
    labels = 2 if cls is BertForQuestionAnswering else 3  # transformers sizes qa_outputs by num_labels
    hf = hf_model(name, num_labels=labels)
    ours = ours_from(hf, cls, num_labels=labels)
    ids, mask, types = batch(padded)
    ref, out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types), ours(ids, mask, types)
    for field in ("logits", "start_logits", "end_logits"):
        if hasattr(ref, field) and getattr(ref, field) is not None:
            torch.testing.assert_close(getattr(out, field), getattr(ref, field), atol=1e-5, rtol=1e-5)


def test_task_losses_match_transformers():
    ids, mask, types = batch(True)
    hf = hf_model("BertForSequenceClassification", num_labels=1)
    ours = ours_from(hf, BertForSequenceClassification, num_labels=1)
    target = torch.tensor([0.5, 2.0, -1.0])
    torch.testing.assert_close(ours(ids, mask, types, labels=target).loss,
                               hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=target).loss)
    hf = hf_model("BertForQuestionAnswering")
    ours = ours_from(hf, BertForQuestionAnswering)
    s, e = torch.tensor([1, 3, 40]), torch.tensor([2, 5, 41])  # 40/41: outside the sequence, ignored
    torch.testing.assert_close(
        ours(ids, mask, types, start_positions=s, end_positions=e).loss,
        hf(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=s, end_positions=e).loss)


def test_sparse_mlm_loss_equals_dense():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).eval()
    ids, mask, types = batch(True)
    labels = torch.full_like(ids, -100)
    labels[0, [1, 4]] = torch.tensor([5, 6])
    labels[1, 9] = 7
    out = model(ids, mask, types, labels=labels)
    dense = model(ids, mask, types).prediction_logits
    expected = torch.nn.functional.cross_entropy(dense.view(-1, TINY["vocab_size"]), labels.view(-1))
    torch.testing.assert_close(out.mlm_loss, expected)
    assert out.prediction_logits.shape == (3, TINY["vocab_size"])
    hf = hf_model("BertForPreTraining")
    ours = ours_from(hf, BertForPreTraining)
    nsp = torch.tensor([0, 1, 1])
    ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(ours(ids, mask, types, labels=labels, next_sentence_label=nsp).loss, ref.loss)


def test_config_round_trips_hf_config_json(tmp_path):
    hf_config = transformers.BertConfig(**TINY)
    hf_config.save_pretrained(tmp_path)
    config = BertConfig.from_json_file(tmp_path / "config.json")
    assert config.hidden_size == 32 and config.num_hidden_layers == 2
    config.to_json_file(tmp_path / "ours.json")
    back = transformers.BertConfig.from_json_file(tmp_path / "ours.json")
    for key in TINY:
        assert getattr(back, key) == TINY[key], key
    assert json.loads((tmp_path / "ours.json").read_text())["model_type"] == "bert"


@pytest.mark.parametrize("name,layers,hidden", [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512),
                                                ("medium", 8, 512), ("base", 12, 768), ("large", 24, 1024)])
def test_presets(name, layers, hidden):
    config = BertConfig.preset(name)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (layers, hidden, 4 * hidden)


def test_parameter_count_formula_matches_model():
    config = BertConfig.preset("tiny", vocab_size=1000)
    assert config.num_parameters() == BertForPreTraining(config).num_parameters()


@pytest.mark.parametrize("bad,field", [(dict(hidden_size=30), "hidden_size"), (dict(hidden_act="swish"), "hidden_act"),
                                       (dict(vocab_size=0), "vocab_size")])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        BertConfig(**{**TINY, **bad})


def test_bad_config_file_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 30, "num_attention_heads": 4}')
    with pytest.raises(ValueError, match="config.json.*hidden_size"):
        BertConfig.from_json_file(path)


@pytest.mark.parametrize("padded", [False, True])
def test_whole_model_compiles_without_graph_breaks(padded):
    """fullgraph=True fails on any graph break (e.g. a Python branch on a tensor's values)."""
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).eval()
    ids, mask, types = batch(padded)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        eager, traced = model(ids, mask, types), compiled(ids, mask, types)
    torch.testing.assert_close(traced.prediction_logits, eager.prediction_logits)
    torch.testing.assert_close(traced.seq_relationship_logits, eager.seq_relationship_logits)


def labelled_batch():
    """A padded batch whose labels cover [CLS] (row 0), padding-free and padded rows and a row with none."""
    ids, mask, types = batch(True, B=4, T=11)
    mask[3, 5:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, [0, 1, 4]] = torch.tensor([5, 6, 7])
    labels[1, [2, 10]] = torch.tensor([8, 9])
    labels[3, 3] = 10
    return ids, mask, types, labels, torch.tensor([0, 1, 1, 0])


def test_loss_positions_keep_cls_and_the_labelled_tokens_in_order():
    from bertspeed.model.model import loss_positions
    *_, labels, _ = labelled_batch()
    positions, kept = loss_positions(labels)
    assert positions.tolist() == [[0, 1, 4], [0, 2, 10], [0, 0, 0], [0, 3, 0]]
    assert kept.tolist() == [[5, 6, 7], [-100, 8, 9], [-100, -100, -100], [-100, 10, -100]]
    assert torch.equal(kept[kept != -100], labels[labels != -100])  # same rows, same order


@pytest.mark.parametrize("gemm", ["onednn", "mkl"])
@pytest.mark.parametrize("at_loss_positions", [True, False])
def test_pretraining_losses_and_grads_match_transformers_in_training(at_loss_positions, gemm, monkeypatch):
    """With labels, the last layer runs at [CLS] and the labelled tokens only (or everywhere), the linears through
    oneDNN or PyTorch's own (cpu_linear.py): transformers' losses and gradients every way."""
    monkeypatch.setenv("BERTSPEED_CPU_GEMM", gemm)
    hf = hf_model("BertForPreTraining").train()
    ours = ours_from(hf, BertForPreTraining).train()
    ours.last_layer_at_loss_positions = at_loss_positions
    assert ours.bert.last_layer_skips_tokens()
    ids, mask, types, labels, nsp = labelled_batch()
    ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
    out = ours(ids, mask, types, labels=labels, next_sentence_label=nsp)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    ref.loss.backward()
    out.loss.backward()
    hf_params = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, hf_params[key].grad, atol=1e-5, rtol=1e-4, msg=key)


def test_eval_logits_at_loss_positions_equal_the_full_layers():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).eval()
    ids, mask, types, labels, _ = labelled_batch()
    with torch.no_grad():
        sparse = model(ids, mask, types, labels=labels)
        model.last_layer_at_loss_positions = False
        full = model(ids, mask, types, labels=labels)
    torch.testing.assert_close(sparse.prediction_logits, full.prediction_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.seq_relationship_logits, full.seq_relationship_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(sparse.mlm_labels, full.mlm_labels)


def test_pretraining_flops_count_the_steps_matmuls(monkeypatch):
    """BertConfig.pretraining_flops (the benches' roofline) against torch's FLOP counter on a real training step
    (math attention, the unfused MLM loss and PyTorch's own linear, so that every matmul is an op it counts)."""
    monkeypatch.setenv("BERTSPEED_CPU_GEMM", "mkl")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from bertspeed.pretrain.calibrate import synthetic_batch
    config = BertConfig.preset("tiny", vocab_size=500, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config).train()
    model.fused_mlm_loss = False
    B, T, predictions = 3, 24, 5
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(**synthetic_batch(config, B, T, predictions)).loss.backward()
    assert counter.get_total_flops() == B * config.pretraining_flops(T, predictions)


@pytest.mark.parametrize("padded", [False, True])
def test_classifier_grads_match_transformers(padded):
    """Sequence classification runs its last layer at [CLS] only: transformers' loss and gradients."""
    hf = hf_model("BertForSequenceClassification", num_labels=3).train()
    ours = ours_from(hf, BertForSequenceClassification, num_labels=3).train()
    ids, mask, types = batch(padded)
    target = torch.tensor([0, 2, 1])
    ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=target).loss
    out = ours(ids, mask, types, labels=target).loss
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ref.backward()
    out.backward()
    hf_params = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, hf_params[key].grad, atol=1e-5, rtol=1e-4, msg=key)
