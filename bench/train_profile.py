"""Where the time of one pretraining step goes: torch.profiler over our BertForPreTraining in the plain
loop of train_throughput.py (forward, backward, LAMB), self time of every op grouped by what it does.
Shares are what to read: the profiler times in wall clock, so on a shared host the milliseconds swell
with other jobs' load while the shares stay comparable.

    python bench/train_profile.py --model mini --precision fp32 --threads 1
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from train_throughput import lamb_for, plain_step  # noqa: E402

from bertspeed.model.config import BertConfig  # noqa: E402
from bertspeed.model.model import BertForPreTraining  # noqa: E402
from bertspeed.pretrain.calibrate import synthetic_batch  # noqa: E402
from bertspeed.training.cpu_allocator import keep_freed_memory  # noqa: E402
from bertspeed.training.hardware import host_label  # noqa: E402

GEMMS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm",
         "mkldnn::_linear_pointwise", "aten::mkldnn_linear_backward_weights"}  # the last two: cpu_linear.py
OPTIMIZER = "Optimizer.step#Lamb.step"
LOSS = "_LinearCrossEntropy"


def category(name: str, ancestors: set) -> str:
    if OPTIMIZER in ancestors or name == OPTIMIZER:
        return "LAMB step (all its ops)"
    if name in GEMMS:
        return "GEMMs (projections, FFN, MLM transform and decoder tiles, their backward)"
    if "scaled_dot_product" in name:
        return "attention (SDPA fwd + bwd)"
    if LOSS in ancestors or name == LOSS:
        return "MLM loss outside its GEMMs (softmax, one-hot, casts, sums)"
    for key, label in (("gelu", "GELU fwd + bwd"), ("layer_norm", "LayerNorm fwd + bwd"),
                       ("embedding", "embeddings fwd + bwd")):
        if key in name:
            return label
    if name == "aten::copy_":
        return "copy_ (addmm's bias broadcast into its output, autocast casts)"
    if name in ("aten::fill_", "aten::zero_"):
        return "fill_ / zero_"
    if name == "aten::to_mkldnn":
        return "to_mkldnn (the weight gradient's operands copied into oneDNN tensors)"
    return "everything else (adds, sums, indexing, views, autograd)"


def ancestors_of(event) -> set:
    names, parent = set(), event.cpu_parent
    while parent is not None:
        names.add(parent.name)
        parent = parent.cpu_parent
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Per-op profile of one pretraining step (see the module doc).")
    parser.add_argument("--model", default="mini", help="BertConfig preset")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: torch.autocast")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20, help="masked positions per sequence")
    parser.add_argument("--warmup", type=int, default=3,
                        help="unprofiled steps first (bert-base's heap still grows in its first two)")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every training entry point does: big activations are not faulted in afresh each step
    config = BertConfig.preset(args.model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batch = synthetic_batch(config, args.batch, args.seq, args.predictions)
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = lamb_for(model)
    bf16 = args.precision == "bf16"
    for _ in range(args.warmup):
        plain_step(model, optimizer, batch, autocast=bf16, hf=None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            plain_step(model, optimizer, batch, autocast=bf16, hf=None)
    totals = collections.Counter()
    for event in prof.events():
        totals[category(event.name, ancestors_of(event))] += event.self_cpu_time_total
    step_ms = sum(totals.values()) / 1e3 / args.steps
    print(f"host: {host_label()}; {args.model} {args.batch}x{args.seq} {args.precision}, "
          f"{args.steps} profiled steps after {args.warmup}: {step_ms:.0f} ms per step (wall, profiler on)")
    print("| op(s) | ms / step | share |\n|---|---|---|")
    for name, us in totals.most_common():
        print(f"| {name} | {us / 1e3 / args.steps:.0f} | {100 * us / 1e3 / args.steps / step_ms:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
