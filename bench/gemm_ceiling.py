"""The GEMM-only ceiling of one BertForPreTraining step: every matmul of the step (the FLOPs that
BertConfig.pretraining_flops counts), run alone at the step's own shapes and layouts and timed one by
one, as if nothing else took any time. Its achieved fraction of the GEMM peak is the best a training
step can reach on this host with this GEMM library; the gap to the real step is everything else.

Matmuls per step (batch B, sequence T, N = B*T tokens, M = B*predictions masked rows, H, I, V, heads):
per layer the fused QKV, attention output, FFN in/out projections (forward x @ W^T + b, input gradient
g @ W and weight gradient g^T @ x, all three through oneDNN where the step's linears are, the weight gradient
with its bias sum as the step computes it), attention as batched (B*heads) matmuls QK^T and PV with their
four backward products, the last layer at [CLS] and the masked tokens only (keys and values of every
token); the MLM transform, the decoder in the tiles of
bertspeed/model/mlm_loss.py (forward and input gradient through the linears' library), the pooler and NSP
classifier.

    python bench/gemm_ceiling.py --models mini base --threads 1 --clock cpu
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bertspeed.model.config import BertConfig  # noqa: E402
from bertspeed.model.cpu_linear import use_onednn  # noqa: E402
from bertspeed.model.mlm_loss import COLS, ROWS  # noqa: E402
from bertspeed.training.cpu_allocator import keep_freed_memory  # noqa: E402
from bertspeed.training.hardware import gemm_peaks, host_label, onednn_linear, onednn_weight_grad  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def linear_gemms(rows: int, k: int, n: int) -> list:
    """(kind, shapes) of a Linear's forward, input-gradient and weight-gradient GEMMs."""
    return [("addmm", rows, k, n), ("dx", rows, n, k), ("dw", n, rows, k)]


def layer_gemms(config: BertConfig, batch: int, seq: int, queries: int) -> list:
    """One encoder layer whose `queries` tokens per sequence (seq, or the last layer's [CLS] + masked tokens)
    attend to all `seq`: keys and values of every token, the rest of the layer on the queries' rows."""
    h, i, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    n, q, d, bh = batch * seq, batch * queries, h // heads, batch * heads
    gemms = linear_gemms(n, h, 3 * h) if queries == seq else linear_gemms(n, h, 2 * h) + linear_gemms(q, h, h)
    gemms += linear_gemms(q, h, h) + linear_gemms(q, h, i) + linear_gemms(q, i, h)
    # attention, (B*heads) batches: S = QK^T, O = PV; backward dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q
    return gemms + [("bmm", bh, queries, d, seq), ("bmm", bh, queries, seq, d), ("bmm", bh, queries, d, seq),
                    ("bmm", bh, seq, queries, d), ("bmm", bh, queries, seq, d), ("bmm", bh, seq, queries, d)]


def step_gemms(config: BertConfig, batch: int, seq: int, predictions: int) -> list:
    h, v = config.hidden_size, config.vocab_size
    m = batch * predictions
    gemms = layer_gemms(config, batch, seq, seq) * (config.num_hidden_layers - 1)
    gemms += layer_gemms(config, batch, seq, predictions + 1)  # BertForPreTraining.last_layer_at_loss_positions
    gemms += linear_gemms(m, h, h)  # MLM transform
    for r0 in range(0, m, ROWS):  # decoder tiles, as mlm_loss.py runs them
        for c0 in range(0, v, COLS):
            r, c = min(ROWS, m - r0), min(COLS, v - c0)
            gemms += [("addmm", r, h, c), ("addmm_", r, c, h), ("addmm_t", c, r, h)]
    gemms += linear_gemms(batch, h, h) + linear_gemms(batch, h, 2)  # pooler, NSP
    return gemms


def flops(gemm) -> float:
    if gemm[0] == "bmm":
        _, b, p, q, r = gemm
        return 2.0 * b * p * q * r
    _, p, q, r = gemm
    return 2.0 * p * q * r


def runner(gemm, dtype):
    """A closure running one GEMM with the operand layouts the training step uses."""
    def rand(*shape):
        return torch.randn(*shape).to(dtype)
    kind = gemm[0]
    if kind == "bmm":
        _, b, p, q, r = gemm
        x, y = rand(b, p, q), rand(b, q, r)
        return lambda: torch.bmm(x, y)
    _, p, q, r = gemm
    onednn = dtype == torch.float32 and use_onednn()  # as bertspeed/model/cpu_linear.py runs the step's linears
    if kind == "addmm":  # x (p, q) @ W^T + b, W (r, q): a Linear's forward, or a decoder tile's (mlm_loss.py)
        x, w, bias = rand(p, q), rand(r, q), rand(r)
        return (lambda: onednn_linear(x, w, bias)) if onednn else (lambda: torch.addmm(bias, x, w.t()))
    if kind == "dx":  # g (p, q) @ W (q, r)
        g, w = rand(p, q), rand(q, r)
        return (lambda: onednn_linear(g, w.t())) if onednn else (lambda: g @ w)
    if kind == "dw":  # g^T (p, q) @ x (q, r), g stored (q, p); oneDNN's primitive also sums the bias gradient
        g, x, w = rand(q, p), rand(q, r), rand(p, r)
        return (lambda: onednn_weight_grad(g, x, w, True)) if onednn else (lambda: g.t() @ x)
    if kind == "addmm_":  # accumulate g (p, q) @ W (q, r) (oneDNN: its product, then an add)
        acc, g, w = rand(p, r), rand(p, q), rand(q, r)
        return (lambda: acc.add_(onednn_linear(g, w.t()))) if onednn else (lambda: acc.addmm_(g, w))
    acc, g, x = rand(p, r), rand(q, p), rand(q, r)  # "addmm_t": accumulate g^T @ x
    return lambda: acc.addmm_(g.t(), x)


def gemm_only_seconds(config: BertConfig, batch: int, seq: int, predictions: int, dtype=torch.float32,
                      clock=time.perf_counter, repeats: int = 2) -> float:
    """Sum over the step's GEMMs of the fastest of `repeats` timings of each (after one warm-up);
    identical shapes are timed once and counted as often as they occur."""
    counts = {}
    for gemm in step_gemms(config, batch, seq, predictions):
        counts[gemm] = counts.get(gemm, 0) + 1
    total = 0.0
    for gemm, count in counts.items():
        run = runner(gemm, dtype)
        run()
        best = float("inf")
        for _ in range(repeats):
            t0 = clock()
            run()
            best = min(best, clock() - t0)
        total += count * best
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GEMM-only ceiling of a pretraining step (see the module doc).")
    parser.add_argument("--models", nargs="+", default=["mini", "base"], help="BertConfig presets")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20, help="masked positions per sequence")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=2, help="timings per GEMM shape (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (use cpu with --threads 1 on a shared host)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as in training: outputs are not faulted in afresh on every call
    clock = CLOCKS[args.clock]
    peaks = gemm_peaks(clock=clock)
    lines = []
    for name in args.models:
        config = BertConfig.preset(name)
        step_flops = args.batch * config.pretraining_flops(args.seq, args.predictions)
        for precision in args.precisions:
            if precision not in peaks:
                lines.append(f"{name:>6}  {precision}: not native on this host, skipped")
                continue
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            seconds = gemm_only_seconds(config, args.batch, args.seq, args.predictions, dtype, clock, args.repeats)
            for key, value in gemm_peaks(clock=clock).items():  # re-probe after the run, keep the best
                peaks[key] = max(peaks[key], value)
            lines.append((name, precision, seconds, step_flops / seconds / 1e9))
    print(f"host: {host_label()}; {args.clock} clock; GEMM peak (max over the run's probes) "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    for line in lines:
        if isinstance(line, str):
            print(line)
            continue
        name, precision, seconds, gflops = line
        print(f"{name:>6}  {precision}: GEMMs alone {seconds:.3f} s per step = {gflops:.1f} GFLOP/s = "
              f"{100 * gflops / peaks[precision]:.0f} % of the {precision} peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
