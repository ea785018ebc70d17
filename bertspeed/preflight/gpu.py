"""The GPU items of the preflight (bertspeed.preflight.run): each takes the device and returns
(passed, detail, numbers). They need a CUDA device; the preflight skips them without one."""
from __future__ import annotations

import os
import time

import torch

from bertspeed.kernels import ops, reference
from bertspeed.model.config import BertConfig
from bertspeed.training.hardware import DTYPES, gemm_gflops

# max |kernel - float64 reference| / max(1, max |reference|), per dtype (the kernels compute in fp32)
KERNEL_TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 2e-3}


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / max(1.0, float(want.abs().max())))


def kernels_match_reference(device, batch: int = 64) -> tuple[bool, str, dict]:
    """LayerNorm(+residual) of (batch, 128, 1024) and masked softmax of (batch, 12, 128, 128), forward
    and backward, each dtype, against float64. On a CPU device the ops run their PyTorch composition."""
    errors = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for name, dtype in DTYPES.items():
        x, res = (torch.randn(batch, 128, 1024, generator=gen).to(device, dtype).requires_grad_() for _ in range(2))
        w, b = (1 + 0.1 * torch.randn(1024, generator=gen)).to(device), (0.1 * torch.randn(1024, generator=gen)).to(device)
        dy = torch.randn(batch, 128, 1024, generator=gen).to(device, dtype)
        y = ops.layer_norm(x, w, b, 1e-12, residual=res)
        dx, = torch.autograd.grad(y, x, dy)
        x64, res64 = x.detach().double(), res.detach().double()
        y64, mean, rstd = reference.layer_norm_forward(x64, res64, None, w.double(), b.double(), 1e-12)
        dx64, _, _ = reference.layer_norm_backward(dy.double(), x64, res64, None, w.double(), mean, rstd)
        errors[f"layer_norm_fwd_{name}"], errors[f"layer_norm_bwd_{name}"] = _rel_error(y, y64), _rel_error(dx, dx64)
        scores = torch.randn(batch, 12, 128, 128, generator=gen).to(device, dtype).requires_grad_()
        mask = torch.zeros(batch, 128)
        mask[:, 100:] = float("-inf")
        mask = mask.to(device)
        grad = torch.randn(batch, 12, 128, 128, generator=gen).to(device, dtype)
        probs = ops.masked_softmax(scores.view(batch, -1, 128), mask, 0.125).view_as(scores)
        dscores, = torch.autograd.grad(probs, scores, grad)
        _, p64 = reference.softmax_forward(scores.detach().double().view(batch, -1, 128), mask.double(), 0.125, 0.0, 0)
        d64 = reference.softmax_backward(grad.double().view(batch, -1, 128), p64, 0.125, 0.0, 0)
        errors[f"softmax_fwd_{name}"] = _rel_error(probs.view(batch, -1, 128), p64)
        errors[f"softmax_bwd_{name}"] = _rel_error(dscores.view(batch, -1, 128), d64)
    worst = {k: v for k, v in errors.items() if v > KERNEL_TOLERANCE[k.rsplit("_", 1)[1]]}
    detail = "all within tolerance" if not worst else "over tolerance: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
    return not worst, detail, errors


def _single_process_env() -> None:
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29599")):
        os.environ.setdefault(key, value)


def fp16_loss_scaling(device) -> tuple[bool, str, dict]:
    """Eight fp16 steps of a tiny BERT under DeepSpeed's dynamic loss scale, an inf loss injected at
    step 4: that step is skipped, the scale halves, the others update and the loss stays finite."""
    import deepspeed

    from bertspeed.model.model import BertForPreTraining

    _single_process_env()
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=1000))
    config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "fp16": {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 1},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    ids = torch.randint(5, 1000, (8, 64), device=engine.device)
    labels = torch.where(torch.rand(8, 64, device=engine.device) < 0.15, ids, -100)
    scales, skipped, losses = [], [], []
    for step in range(1, 9):
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                     next_sentence_label=torch.zeros(8, dtype=torch.long, device=engine.device))
        loss = out.loss * float("inf") if step == 4 else out.loss
        engine.backward(loss)
        engine.step()
        scales.append(float(engine.optimizer.cur_scale))
        skipped.append(engine.skipped_steps)
        losses.append(float(out.loss))
    ok = (skipped[3] == skipped[2] + 1 and skipped[-1] == 1 and scales[3] == scales[2] / 2
          and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0])
    return ok, f"loss scale {scales[2]:g} -> {scales[3]:g} at the overflow, {skipped[-1]} step skipped", \
        {"loss_scale": scales, "skipped_steps": skipped, "loss": losses}


def fused_lamb_vs_ours(device) -> tuple[bool, str, dict]:
    """DeepSpeed's FusedLamb (the optimizer ZeRO 0 configs with "Lamb" run on CUDA) and our Lamb, from
    the same weights through the same 10 gradients; relative weight difference per step. Their trust-ratio
    clamps differ (DeepSpeed clamps to [0.01, 10]), so a small difference is expected; > 1e-3 fails."""
    from deepspeed.ops.lamb import FusedLamb

    from bertspeed.pretrain.lamb import Lamb

    gen = torch.Generator(device="cpu").manual_seed(0)
    shapes = [(1024, 1024), (1024,), (4096, 1024)]
    start = [torch.randn(s, generator=gen).to(device) * 0.02 for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(device) * 1e-3 for s in shapes] for _ in range(10)]
    runs = {}
    for name, cls in (("deepspeed", FusedLamb), ("ours", Lamb)):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = cls(params, lr=1e-3, weight_decay=0.01, eps=1e-6, betas=(0.9, 0.999))
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        runs[name] = params
    diff = max(float((a.detach() - b.detach()).norm() / b.detach().norm())
               for a, b in zip(runs["deepspeed"], runs["ours"]))
    moved = max(float((b.detach() - s).norm() / s.norm()) for b, s in zip(runs["ours"], start))
    return diff < 1e-3, f"relative weight difference {diff:.2e} after 10 steps (weights moved {moved:.2e})", \
        {"relative_difference": diff, "relative_update": moved}


def _time(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def throughput(device, models=("base", "large"), seq_lens=(128, 512), repeats: int = 5) -> tuple[bool, str, dict]:
    """seq/s and MFU of forward+backward (bf16 autocast where supported, else fp16) with PyTorch's
    attention (SDPA) and with our fused kernels; the kernels' GB/s at the model's shapes."""
    from bertspeed.model.layers import use_fused_kernels
    from bertspeed.model.model import BertForPreTraining

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    peak = gemm_gflops(dtype, n=4096, repeats=10, device="cuda") * 1e9
    numbers = {"dtype": str(dtype), "gemm_peak_tflops": peak / 1e12}
    for name in models:
        config = BertConfig.preset(name)
        model = BertForPreTraining(config).to(device)
        for seq in seq_lens:
            batch = 32 if seq == 128 else 8  # fits a 16 GB card for bert-large
            ids = torch.randint(5, config.vocab_size, (batch, seq), device=device)
            labels = torch.where(torch.rand(batch, seq, device=device) < 0.15, ids, -100)

            def step(model=model, ids=ids, labels=labels):
                with torch.autocast("cuda", dtype=dtype):
                    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()

            for variant in ("sdpa", "fused"):
                use_fused_kernels(variant == "fused")
                seconds = _time(step, repeats)
                tokens = batch * seq / seconds
                numbers[f"{name}_seq{seq}_{variant}"] = {"seq_per_s": batch / seconds,
                                                         "mfu": tokens * config.flops_per_token(seq) / peak}
            use_fused_kernels(False)
            x = torch.randn(batch, seq, config.hidden_size, device=device, dtype=dtype)
            w = torch.ones(config.hidden_size, device=device)
            ln = _time(lambda: ops.layer_norm(x, w, w, 1e-12, residual=x), 20)
            scores = torch.randn(batch, config.num_attention_heads * seq, seq, device=device, dtype=dtype)
            mask = torch.zeros(batch, seq, device=device)
            sm = _time(lambda: ops.masked_softmax(scores, mask, 0.125), 20)
            numbers[f"{name}_seq{seq}_kernels_gb_per_s"] = {"layer_norm": 3 * x.numel() * x.element_size() / ln / 1e9,
                                                            "softmax": 2 * scores.numel() * scores.element_size() / sm / 1e9}
        del model
        torch.cuda.empty_cache()
    best = max(v["mfu"] for v in numbers.values() if isinstance(v, dict) and "mfu" in v)
    return best > 0, f"best MFU {best:.1%} of a measured {peak / 1e12:.0f} TFLOP/s GEMM peak", numbers
