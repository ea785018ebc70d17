"""GPU preflight: what an operator runs on a new cluster node before a long job.

    bertspeed preflight [--output_dir preflight_out]        # or: make gpu-check

Items: the environment; the fused kernels' nvcc build (sm_80/sm_90, no register spills) and torch
extension; the kernels against the float64 reference on the device (LayerNorm and masked softmax,
forward and backward, fp32/bf16/fp16); fp16 steps under DeepSpeed's dynamic loss scale with an
injected overflow; DeepSpeed's fused Lamb against ours; seq/s, MFU and kernel GB/s of bert-base and
bert-large at seq 128 and 512 with PyTorch attention (SDPA) and with the fused kernels.
Without a CUDA device it runs what it can and lists the rest as skipped, with the reason.
Writes OUT/preflight.json and OUT/preflight.md; exits 1 if an item failed, else 0.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

from bertspeed.training.atomic import write_json_atomic, write_text_atomic
from bertspeed.training.hardware import host_info, host_label


def no_cuda_reason() -> str | None:
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    return f"no CUDA device (torch {torch.__version__} is {build}; torch.cuda.is_available() is False)"


def environment(device) -> tuple[bool, str, dict]:
    import deepspeed

    info = {**host_info(), "deepspeed": deepspeed.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpus"] = torch.cuda.device_count()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return True, host_label(info), info


def nvcc_build(device) -> tuple[bool, str, dict]:
    from bertspeed.kernels.build import nvcc_check

    usage = nvcc_check()
    return True, f"{len(usage)} kernels compiled for sm_80/sm_90 without register spills", \
        {f"{k[0]} {k[1]}": v for k, v in usage.items()}


def extension_build(device) -> tuple[bool, str, dict]:
    from bertspeed.kernels.build import load_extension

    module = load_extension()
    return True, f"built and imported {getattr(module, '__file__', module)}", {}


def _gpu(name):
    def check(device):
        from bertspeed.preflight import gpu

        return getattr(gpu, name)(device)
    check.__doc__ = name
    return check


def nvcc_missing() -> str | None:
    from bertspeed.kernels.build import cuda_home

    return None if cuda_home() is not None else "the CUDA toolkit (nvcc) was not found: set CUDA_HOME"


def torch_cpu_build() -> str | None:
    return None if torch.version.cuda else f"torch {torch.__version__} is a CPU build: no CUDA extension to build"


# name -> (check, what it needs: a function returning the reason to skip, or None to run)
ITEMS = {
    "environment": (environment, lambda: None),
    "kernels: nvcc build (sm_80/sm_90, no spills)": (nvcc_build, nvcc_missing),
    "kernels: torch extension build": (extension_build, lambda: torch_cpu_build() or nvcc_missing() or no_cuda_reason()),
    "kernels vs float64 reference on device (fwd+bwd, fp32/bf16/fp16)": (_gpu("kernels_match_reference"), no_cuda_reason),
    "fp16 dynamic loss scaling with an injected overflow": (_gpu("fp16_loss_scaling"), no_cuda_reason),
    "DeepSpeed fused Lamb vs ours": (_gpu("fused_lamb_vs_ours"), no_cuda_reason),
    "throughput: seq/s, MFU, kernel GB/s (base/large, seq 128/512, SDPA vs fused)": (_gpu("throughput"), no_cuda_reason),
}


def run_item(name: str, check, needs) -> dict:
    start = time.perf_counter()
    reason = needs()
    if reason:
        return {"item": name, "status": "skip", "detail": reason, "seconds": 0.0, "numbers": {}}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        ok, detail, numbers = check(device)
        status = "pass" if ok else "fail"
    except Exception as e:  # an item that crashes is a failed item; the others still run
        status, detail, numbers = "fail", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()[-3000:]}
    return {"item": name, "status": status, "detail": detail, "seconds": time.perf_counter() - start,
            "numbers": numbers}


def markdown(results: list[dict], host: str) -> str:
    lines = ["# GPU preflight", "", f"Host: {host}", "", "| item | result | detail | seconds |", "|---|---|---|---|"]
    for r in results:
        detail = r["detail"].replace("|", "\\|")
        lines.append(f"| {r['item']} | {r['status'].upper()} | {detail} | {r['seconds']:.1f} |")
    throughput = next((r["numbers"] for r in results if r["item"].startswith("throughput") and r["status"] == "pass"),
                      None)
    if throughput:
        lines += ["", "| model, seq, attention | seq/s | MFU |", "|---|---|---|"]
        lines += [f"| {k} | {v['seq_per_s']:.1f} | {v['mfu']:.1%} |" for k, v in throughput.items()
                  if isinstance(v, dict) and "mfu" in v]
    counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "skip")}
    lines += ["", f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bertspeed preflight", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="preflight_out", help="where preflight.json and preflight.md go")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        print(f"bertspeed preflight: error: --output_dir {out} exists and is not a directory", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, (check, needs) in ITEMS.items():
        results.append(run_item(name, check, needs))
        r = results[-1]
        print(f"[{r['status']}] {name}: {r['detail']} ({r['seconds']:.1f} s)", flush=True)
    host = host_label()
    write_json_atomic(out / "preflight.json", {"host": host, "items": results}, default=str)
    write_text_atomic(out / "preflight.md", markdown(results, host))
    print(f"report: {out / 'preflight.md'}", flush=True)
    return 1 if any(r["status"] == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
