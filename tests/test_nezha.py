"""NEZHA's relative-position attention against a float64 NumPy reference of the paper's formula."""
import math

import numpy as np
import pytest
import torch

from bertspeed.model import BertConfig, BertForPreTraining
from bertspeed.model.layers import attention
from bertspeed.model.model import BertSelfAttention
from bertspeed.model.nezha import relative_table, rename_published_keys

K = 3  # max_relative_position: small, so that clipping happens inside T = 9


def reference_table(k, d):
    """table[r] = sinusoid of the index r in [0, 2k]: sin at even, cos at odd columns."""
    table = np.zeros((2 * k + 1, d))
    for r in range(2 * k + 1):
        for c in range(0, d, 2):
            angle = r / 10000 ** (c / d)
            table[r, c] = math.sin(angle)
            if c + 1 < d:
                table[r, c + 1] = math.cos(angle)
    return table


def reference_attention(q, k, v, key_mask, max_rel):
    """score_ij = q_i.(k_j + a_ij)/sqrt(d); out_i = sum_j p_ij (v_j + a_ij); a_ij = table[clip(j-i)+K]."""
    B, H, T, D = q.shape
    table = reference_table(max_rel, D)
    a = np.array([[table[min(max(j - i, -max_rel), max_rel) + max_rel] for j in range(T)] for i in range(T)])
    scores = (np.einsum("bhid,bhjd->bhij", q, k) + np.einsum("bhid,ijd->bhij", q, a)) / math.sqrt(D)
    if key_mask is not None:
        scores = np.where(key_mask[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", probs, v) + np.einsum("bhij,ijd->bhid", probs, a)


def test_table_matches_reference():
    np.testing.assert_allclose(relative_table(K, 8, torch.float64).numpy(), reference_table(K, 8), atol=1e-12)
    np.testing.assert_allclose(relative_table(5, 7, torch.float64).numpy(), reference_table(5, 7), atol=1e-12)


@pytest.mark.parametrize("padded", [False, True])
def test_attention_equals_float64_formula(padded):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64) for _ in range(3))
    key_mask = None
    if padded:
        key_mask = torch.ones(2, 9, dtype=torch.bool)
        key_mask[0, 6:] = False
        key_mask[1, 2:] = False
    table = relative_table(K, 8, torch.float64)
    ours = attention(q, k, v, key_mask, 0.0, (table, K))
    ref = reference_attention(q.numpy(), k.numpy(), v.numpy(), None if key_mask is None else key_mask.numpy(), K)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_self_attention_layer_in_float32_matches_reference():
    config = BertConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=1,
                        position_embedding_type="nezha", max_relative_position=K)
    layer = BertSelfAttention(config).eval()
    x = torch.randn(2, 7, 16)
    key_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    with torch.no_grad():
        ours = layer(x, key_mask)

    def heads(linear):
        y = x.double().numpy() @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()
        return y.reshape(2, 7, 2, 8).transpose(0, 2, 1, 3)

    ref = reference_attention(heads(layer.query), heads(layer.key), heads(layer.value), key_mask.numpy(), K)
    np.testing.assert_allclose(ours.numpy(), ref.transpose(0, 2, 1, 3).reshape(2, 7, 16), atol=2e-6)


def test_gradcheck():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    key_mask = torch.tensor([[True, True, True, True, False]])
    table = relative_table(2, 4, torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, key_mask, 0.0, (table, 2)), (q, k, v))


def test_model_config_and_keys():
    config = BertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                        num_hidden_layers=2, max_position_embeddings=8, position_embedding_type="nezha")
    model = BertForPreTraining(config).eval()
    keys = set(model.state_dict())
    assert not any("position_embeddings" in key or "relative" in key for key in keys)
    assert model.num_parameters() == config.num_parameters()
    # relative positions: longer than max_position_embeddings is fine
    out = model(torch.randint(1, 50, (2, 20)))
    assert out.prediction_logits.shape == (2, 20, 50)
    fields = config.to_dict()
    assert fields["model_type"] == "nezha" and fields["max_relative_position"] == 64
    assert BertConfig.from_dict(fields) == config
    assert "max_relative_position" not in BertConfig().to_dict()


def test_published_spellings():
    huawei = {"hidden_size": 16, "num_attention_heads": 2, "use_relative_position": True, "max_relative_position": 7}
    config = BertConfig.from_dict(huawei)
    assert config.is_nezha and config.max_relative_position == 7 and "use_relative_position" not in config.extra
    assert BertConfig.from_dict({"model_type": "nezha"}).is_nezha
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    state = {"nezha.embeddings.word_embeddings.weight": torch.zeros(1),
             "nezha.encoder.layer.0.attention.self.relative_positions_encoding.positions_encoding": torch.zeros(1),
             "cls.predictions.bias": torch.zeros(1)}
    renamed, dropped = rename_published_keys(state)
    assert set(renamed) == {"bert.embeddings.word_embeddings.weight", "cls.predictions.bias"}
    assert dropped == ["nezha.encoder.layer.0.attention.self.relative_positions_encoding.positions_encoding"]


def test_nezha_folders_say_they_are_not_transformers_bert(tmp_path, vocab_file):
    from bertspeed.convert import main as convert_main
    from bertspeed.model.checkpoint import load_state_dict_into, read_state_dict, save_pretrained
    config = BertConfig(vocab_size=30522, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                        num_hidden_layers=1, position_embedding_type="nezha", max_relative_position=4)
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    save_pretrained(model, tmp_path / "run", vocab_file=vocab_file)
    assert convert_main([str(tmp_path / "run"), "--output_dir", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert "BertModel cannot load it" in (out / "README.md").read_text()
    assert BertConfig.from_json_file(out).is_nezha
    transformers = pytest.importorskip("transformers")
    with pytest.raises((ValueError, KeyError)):
        transformers.AutoModel.from_pretrained(out)
    # a published NEZHA state dict (transformers' Nezha* names) loads into our model unchanged
    state = {("nezha." + k.removeprefix("bert.")) if k.startswith("bert.") else k: v
             for k, v in read_state_dict(out).items()}
    state["nezha.encoder.layer.0.attention.self.relative_positions_encoding.positions_encoding"] = torch.zeros(3)
    reloaded = BertForPreTraining(config)
    report = load_state_dict_into(reloaded, state, "published")
    assert not report.initialized
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
