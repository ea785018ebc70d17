"""bf16 training attention on CPU runs in fp32 (bertspeed.model.layers.attention): same values as SDPA on the
bf16 inputs in fp32, gradients back in bf16, masks honoured."""
import torch
import torch.nn.functional as F

from bertspeed.model.layers import attention


def test_bf16_training_attention_is_fp32_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    key_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = attention(q, k, v, key_mask, 0.0)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              attn_mask=key_mask[:, None, None, :]).bfloat16()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and v.grad[1, :, 3:].abs().sum() == 0  # masked keys get no gradient
