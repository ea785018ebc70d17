"""Sequences/s of one BERT pretraining step, our stack under DeepSpeed against transformers'
BertForPreTraining in a plain PyTorch loop, same shapes, same optimizer (our LAMB), same data,
measured side by side in one run (configurations interleaved step by step). On a shared machine
the minimum step time is the least disturbed estimate; medians are printed beside it.

    python bench/train_throughput.py --models mini base --batch 32 --seq 128 --steps 5

Rows (per model):
  hf_fp32        transformers, plain loop, fp32, dense MLM head over all positions (the baseline)
  hf_bf16        the same under torch.autocast(bfloat16)
  hf_gathered_fp32 / _bf16   transformers with the MLM head gathered to the masked positions by hand
                 (`bert`, then `cls.predictions` on hidden[masked]): the fast way to use it
  ours_plain     our model, plain loop, fp32, sparse MLM head (no DeepSpeed: the overhead reference)
  ours_plain_bf16  the same under torch.autocast(bfloat16), the like-for-like of hf_gathered_bf16
  ours_unfused / _bf16   ours_plain with the MLM decoder + loss unfused (fused_mlm_loss = False): what
                 the tiled loss of bertspeed/model/mlm_loss.py gains
  ours_full_last_layer   ours_plain with its last encoder layer on every token
                 (last_layer_at_loss_positions = False): what computing it at the loss's positions only gains
  ours_mkl_linear   ours_plain with every fp32 linear through PyTorch's F.linear (MKL), not oneDNN
                 (BERTSPEED_CPU_GEMM=mkl around its steps; bertspeed/model/cpu_linear.py)
  ours_ds_fp32   our model under DeepSpeed (ZeRO 0), fp32, sparse MLM head
  ours_ds_bf16   under DeepSpeed with its bf16 mode (bf16 weights, fp32 master weights)
  ours_ds_bf16_compile   the same with torch.compile of each encoder layer (nn.Module.compile)
Every row runs with freed memory kept (training/cpu_allocator.py), as our entry points do.
--clock cpu times each step in CPU time of this process (time.process_time; the GEMM peak too): with
--threads 1 on a shared host it is not inflated by other jobs' time slices, as wall time is.
Ratios: each row's seq/s over hf_fp32 and over hf_gathered of its precision; DeepSpeed overhead = 1 - t(ours_plain) / t(ours_ds_fp32).
By default the bf16 rows run only where bf16 is native and faster (bert.hardware.probe_bf16).

The host line names the hardware (CPU model, ISA, threads); the host's measured GEMM peak (fp32, and
bf16 where native) is printed, and every row gives its achieved GFLOP/s (FLOPs counted analytically:
3x the forward matmuls the losses need: encoder projections, attention QK^T and PV, the last layer at the
masked tokens and [CLS] only, the gathered MLM head, pooler and NSP; BertConfig.pretraining_flops; rows
that compute more, such as transformers' full last layer, get no credit for it) as a fraction of the
peak of its precision, so figures from different hosts compare as fractions of their roofline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bertspeed.model.config import BertConfig  # noqa: E402
from bertspeed.model.cpu_linear import GEMM_ENV  # noqa: E402
from bertspeed.model.model import BertForPreTraining  # noqa: E402
from bertspeed.pretrain.calibrate import synthetic_batch  # noqa: E402
from bertspeed.pretrain.lamb import Lamb  # noqa: E402
from bertspeed.training.cpu_allocator import keep_freed_memory  # noqa: E402
from bertspeed.training.hardware import gemm_peaks, host_info, host_label, probe_bf16  # noqa: E402
from bertspeed.training.params import param_groups  # noqa: E402


def lamb_for(model):
    return Lamb(param_groups(model, 0.01), lr=1e-4, weight_decay=0.01)


def hf_model(config: BertConfig):
    import transformers
    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items()
                                           if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    return transformers.BertForPreTraining(hf_config).train()


def hf_gathered_loss(model, batch):
    """transformers' BertForPreTraining with its MLM head gathered by hand: `bert`, then
    `cls.predictions` on the hidden states of the masked positions only (what a speed-minded
    user of transformers writes), and `cls.seq_relationship` on the pooled output."""
    out = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"])
    selected = batch["labels"] != -100
    logits = model.cls.predictions(out.last_hidden_state[selected])  # (M, V)
    mlm = torch.nn.functional.cross_entropy(logits.float(), batch["labels"][selected])
    nsp_logits = model.cls.seq_relationship(out.pooler_output)
    return mlm + torch.nn.functional.cross_entropy(nsp_logits.float(), batch["next_sentence_label"])


def plain_step(model, optimizer, batch, autocast: bool, hf: str | None):
    """hf: None (ours), "dense" (transformers' own loss) or "gathered" (hf_gathered_loss)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if hf == "dense":
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"], labels=batch["labels"],
                         next_sentence_label=batch["next_sentence_label"]).loss
        elif hf == "gathered":
            loss = hf_gathered_loss(model, batch)
        else:
            loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def deepspeed_engine(config: BertConfig, precision: str, compile_model: bool):
    import deepspeed

    torch.manual_seed(0)
    model = BertForPreTraining(config)
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
          "steps_per_print": 10 ** 9, "zero_optimization": {"stage": 0}}
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
    if compile_model:  # per layer: static shapes, no graph breaks, state-dict names unchanged
        for layer in model.bert.encoder.layer:
            layer.compile()
    engine, *_ = deepspeed.initialize(model=model, optimizer=lamb_for(model), config=ds)
    return engine


def ds_step(engine, batch):
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    return loss.item()


def runners(config: BertConfig, batch: dict, which: list[str]) -> dict:
    out = {}
    if any(name.startswith("hf_") for name in which):
        hf = hf_model(config)
        hf_opt = lamb_for(hf)
        for name, head, bf16 in (("hf_fp32", "dense", False), ("hf_bf16", "dense", True),
                                 ("hf_gathered_fp32", "gathered", False), ("hf_gathered_bf16", "gathered", True)):
            if name in which:
                out[name] = (lambda h, a: lambda: plain_step(hf, hf_opt, batch, autocast=a, hf=h))(head, bf16)
    for name, bf16, fused, sparse_last in (
            ("ours_plain", False, True, True), ("ours_plain_bf16", True, True, True),
            ("ours_unfused", False, False, True), ("ours_unfused_bf16", True, False, True),
            ("ours_full_last_layer", False, True, False), ("ours_mkl_linear", False, True, True)):
        if name in which:
            torch.manual_seed(0)
            ours = BertForPreTraining(config).train()
            ours.fused_mlm_loss = fused
            ours.last_layer_at_loss_positions = sparse_last
            ours_opt = lamb_for(ours)
            out[name] = (lambda m, o, a: lambda: plain_step(m, o, batch, autocast=a, hf=None))(ours, ours_opt, bf16)
            if name == "ours_mkl_linear":
                out[name] = mock.patch.dict(os.environ, {GEMM_ENV: "mkl"})(out[name])
    for name, precision, comp in (("ours_ds_fp32", "fp32", False), ("ours_ds_bf16", "bf16", False),
                                  ("ours_ds_bf16_compile", "bf16", True)):
        if name in which:
            engine = deepspeed_engine(config, precision, comp)
            out[name] = (lambda e: lambda: ds_step(e, batch))(engine)
    return out


def measure(steps_by_name: dict, warmup: int, steps: int, peaks: dict, clock=time.perf_counter) -> dict:
    """Interleave the configurations step by step so load changes hit all of them alike. The GEMM
    peak is probed again after every round (kept as the maximum in `peaks`): on a shared machine a
    single probe can land in a busy moment and make the roofline fraction look too good."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            t0 = clock()
            step()
            times[name].append(clock() - t0)
        for precision, value in gemm_peaks(clock=clock).items():
            peaks[precision] = max(peaks.get(precision, 0.0), value)
    return times


ALL = ["hf_fp32", "hf_bf16", "hf_gathered_fp32", "hf_gathered_bf16", "ours_plain", "ours_plain_bf16",
       "ours_unfused", "ours_unfused_bf16", "ours_full_last_layer", "ours_mkl_linear", "ours_ds_fp32",
       "ours_ds_bf16", "ours_ds_bf16_compile"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def precision_of(config_name: str) -> str:
    return "bf16" if "bf16" in config_name else "fp32"


def vs_gathered(best: dict, cfg: str) -> float | None:
    """Speed over transformers' gathered-head row of the same precision (>1: faster)."""
    ref = f"hf_gathered_{precision_of(cfg)}"
    return best[ref] / best[cfg] if ref in best else None


def default_configs() -> list[str]:
    """Every row, but bf16 ones only where bf16 is native and faster than fp32."""
    native = probe_bf16("cpu").native
    return [name for name in ALL if native or precision_of(name) == "fp32"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Pretraining-step throughput: ours under DeepSpeed vs "
                                                 "transformers in a plain loop, side by side.")
    parser.add_argument("--models", nargs="+", default=["mini", "base"], help="BertConfig presets")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20, help="masked positions per sequence")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=None, choices=ALL,
                        help="rows to run (default: all, bf16 rows only where bf16 is native)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time steps and GEMM probes in wall time or in this process's CPU time "
                             "(use cpu with --threads 1 on a shared host)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    configs = args.configs or default_configs()
    clock = CLOCKS[args.clock]
    host, peaks = host_info(), gemm_peaks(clock=clock)
    from bertspeed.training.distributed import init_distributed
    init_distributed(600)
    results = []
    for name in args.models:
        config = BertConfig.preset(name, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        batch = synthetic_batch(config, args.batch, args.seq, args.predictions)
        times = measure(runners(config, batch, configs), args.warmup, args.steps, peaks, clock)
        best = {cfg: min(t) for cfg, t in times.items()}
        step_flops = args.batch * config.pretraining_flops(args.seq, args.predictions)
        for cfg, t in times.items():
            gflops = step_flops / best[cfg] / 1e9
            results.append({"model": name, "config": cfg, "step_s_min": best[cfg], "step_s_median": statistics.median(t),
                            "seq_per_s": args.batch / best[cfg], "gflops": gflops,
                            "fraction_of_gemm_peak": None,  # set below from the run's peak
                            "vs_hf_fp32": best["hf_fp32"] / best[cfg] if "hf_fp32" in best else None,
                            "vs_hf_gathered": vs_gathered(best, cfg)})
        if "ours_plain" in best and "ours_ds_fp32" in best:
            results.append({"model": name, "config": "deepspeed_overhead",
                            "fraction_of_step": 1 - best["ours_plain"] / best["ours_ds_fp32"]})
    for r in results:  # the peak is the maximum over every probe of the run
        if "gflops" in r:
            peak = peaks.get(precision_of(r["config"]))
            r["fraction_of_gemm_peak"] = r["gflops"] / peak if peak else None
    print(f"host: {host_label(host)}; measured GEMM peak (max over the run's probes) "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"batch {args.batch} x {args.seq}, {args.steps} timed steps, {args.clock} clock, ratios of minimum step "
          f"times; freed memory {'kept' if kept else 'NOT kept (malloc set up by the user, or not glibc)'}")
    for r in results:
        if r["config"] == "deepspeed_overhead":
            print(f"{r['model']:>6}  DeepSpeed overhead: {100 * r['fraction_of_step']:.1f} % of the step")
        else:
            ratio = f"{r['vs_hf_fp32']:.2f}x" if r["vs_hf_fp32"] else "-"
            gathered = f"{r['vs_hf_gathered']:.2f}x" if r["vs_hf_gathered"] else "-"
            roof = f"{100 * r['fraction_of_gemm_peak']:.0f} %" if r["fraction_of_gemm_peak"] else "-"
            print(f"{r['model']:>6}  {r['config']:<22} min {r['step_s_min']:7.3f} s  median {r['step_s_median']:7.3f} s"
                  f"  {r['seq_per_s']:7.2f} seq/s  {r['gflops']:6.1f} GFLOP/s = {roof:>4} of {precision_of(r['config'])}"
                  f" peak  {ratio} vs hf_fp32  {gathered} vs hf_gathered_{precision_of(r['config'])}")
    if args.output:
        Path(args.output).write_text(json.dumps({"host": host, "clock": args.clock, "gemm_peak_gflops": peaks,
                                                 "freed_memory_kept": kept,
                                                 "results": results},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
