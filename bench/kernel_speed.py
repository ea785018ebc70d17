"""Fused LayerNorm(+residual) and masked softmax against the eager composition and torch.compile.

    python bench/kernel_speed.py                    # CPU here; on a GPU machine it runs on CUDA
    python bench/kernel_speed.py --device cuda --dtype bfloat16 --batch 32 --seq 512

Every variant is timed in the same run, interleaved, and reported as a
ratio to eager. On CUDA it also prints the achieved GB/s (bytes a perfect
kernel must move / time) against the device's memory bandwidth. On CPU the
"fused" path is the ops' CPU implementation (the PyTorch reference).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bertspeed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bertspeed.kernels import ops  # noqa: E402
from bertspeed.training.hardware import DTYPES, auto_precision, host_info, host_label  # noqa: E402


def eager_layer_norm(x, residual, weight, bias, eps=1e-12):
    return F.layer_norm(x + residual, weight.shape, weight, bias, eps)


def fused_layer_norm(x, residual, weight, bias, eps=1e-12):
    return ops.layer_norm(x, weight, bias, eps, residual=residual)


def eager_softmax(scores, mask, scale):
    return torch.softmax(scores * scale + mask[:, None, None, :].to(scores.dtype), -1)


def fused_softmax(scores, mask, scale):
    return ops.masked_softmax(scores, mask, scale)


def make_inputs(args, device, dtype):
    hidden, heads, seq, batch = args.hidden, args.heads, args.seq, args.batch
    x, residual = (torch.randn(batch, seq, hidden, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    weight = torch.ones(hidden, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(hidden, device=device, dtype=dtype, requires_grad=True)
    scores = torch.randn(batch, heads, seq, seq, device=device, dtype=dtype, requires_grad=True)
    mask = torch.zeros(batch, seq, device=device)
    mask[:, seq * 3 // 4:] = -math.inf  # a quarter of every sequence is padding
    size = dtype.itemsize
    ln_elems, sm_elems = batch * seq * hidden, batch * heads * seq * seq
    cases = {  # name: (inputs, ideal bytes forward, ideal bytes forward + backward)
        "layer_norm+residual": ((x, residual, weight, bias), 3 * ln_elems * size, (3 + 4) * ln_elems * size),
        "masked_softmax": ((scores, mask, 1 / math.sqrt(hidden // heads)), 2 * sm_elems * size,
                           (2 + 3) * sm_elems * size),
    }
    return cases


def timer(device):
    if device.type == "cuda":
        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def measure(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
    return measure


def step(fn, inputs, backward):
    def run():
        out = fn(*inputs)
        if backward:
            out.backward(torch.ones_like(out))
    return run


def device_bandwidth(device) -> tuple[float | None, float]:
    """(theoretical peak GB/s if torch reports clock and bus width, measured copy GB/s)."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    peak = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    measure = timer(device)
    for _ in range(3):
        dst.copy_(src)
    seconds = min(measure(lambda: dst.copy_(src)) for _ in range(10))
    return peak, 2 * src.numel() / seconds / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="auto: the precision training would pick on this device (bert.hardware)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.dtype == "auto":
        choice = auto_precision(device.type)
        args.dtype = str(DTYPES[choice.name]).removeprefix("torch.")
        print(f"dtype auto: {choice}")
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda" and not ops.extension_available():
        print("warning: the CUDA extension is unavailable, 'fused' is the reference composition")
    measure = timer(device)
    print(f"host: {host_label(host_info(args.dtype))}")
    print(f"device {device}, {args.dtype}, batch {args.batch} x seq {args.seq}, hidden {args.hidden}, "
          f"{args.heads} heads, median of {args.repeats}")
    bandwidth = device_bandwidth(device) if device.type == "cuda" else None
    if bandwidth:
        peak, copy = bandwidth
        print(f"memory bandwidth: copy {copy:.0f} GB/s" + (f", theoretical {peak:.0f} GB/s" if peak else ""))
    pairs = {"layer_norm+residual": (eager_layer_norm, fused_layer_norm),
             "masked_softmax": (eager_softmax, fused_softmax)}
    for name, (inputs, bytes_fwd, bytes_fwd_bwd) in make_inputs(args, device, dtype).items():
        eager, fused = pairs[name]
        variants = {"eager": eager, "fused": fused}
        if not args.no_compile:
            variants["compile"] = torch.compile(eager)
        for backward, ideal_bytes in ((False, bytes_fwd), (True, bytes_fwd_bwd)):
            runs = {v: step(fn, inputs, backward) for v, fn in variants.items()}
            for run in runs.values():  # warm-up (and compilation)
                run()
                run()
            times = {v: [] for v in runs}
            for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
                for v, run in runs.items():
                    times[v].append(measure(run))
            median = {v: statistics.median(t) for v, t in times.items()}
            label = f"{name} {'fwd+bwd' if backward else 'fwd'}"
            cells = [f"{v} {median[v] * 1e3:8.3f} ms ({median['eager'] / median[v]:4.2f}x)" for v in median]
            print(f"{label:28s} " + "  ".join(cells))
            if bandwidth:
                achieved = ideal_bytes / median["fused"] / 1e9
                reference = bandwidth[0] or bandwidth[1]
                print(f"{'':28s} fused {achieved:.0f} GB/s = {100 * achieved / reference:.0f}% of "
                      f"{'theoretical' if bandwidth[0] else 'copy'} bandwidth")


if __name__ == "__main__":
    main()
