"""What this machine does fast, and the precision `auto` picks from it.

    python -m bertspeed.training.hardware        # the host line, the bf16 probe and the GEMM peaks

bf16 is chosen only where it is native and faster: CUDA with native bf16, or a CPU where oneDNN
reports native bf16 and a short GEMM timing confirms it beats fp32. On a CPU without it (AVX2
only), a bf16 matmul runs 50-100x slower than fp32. fp16 only on CUDA; fp32 otherwise.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = (
    "auto: bf16 where it is native and faster (CUDA with bf16; a CPU where oneDNN reports native bf16 and a "
    "timing probe confirms), fp16 on other CUDA devices, fp32 otherwise. An explicit value overrides the "
    "DeepSpeed config's bf16/fp16 sections, which otherwise win over auto. Autocast without DeepSpeed (fp16 "
    "with a gradient scaler), DeepSpeed's bf16/fp16 modes with it")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Tests force the capability probe's answer: "1" native bf16, "0" none (the timing still runs
# when a slowdown has to be reported).
FORCE_BF16_ENV = "BERTSPEED_BF16_NATIVE"
MIN_BF16_SPEEDUP = 1.1  # a bf16 GEMM must beat fp32 by this factor to count as faster
# The CPU flags that decide matmul speed, strongest first (x86 from /proc/cpuinfo, ARM Features).
ISA_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma", "sve2", "sve", "bf16", "asimd")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    info = _cpuinfo()
    match = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    if match:
        return match.group(1).strip()
    try:  # ARM: /proc/cpuinfo has no model name, lscpu decodes the part number
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        match = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA flags of ISA_FLAGS this CPU has, in that order."""
    match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", _cpuinfo(), re.M)
    present = set(match.group(1).split()) if match else set()
    return [flag for flag in ISA_FLAGS if flag in present]


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (AuthenticAMD, GenuineIntel), or "" where it has none."""
    match = re.search(r"^vendor_id\s*:\s*(.+)$", _cpuinfo(), re.M)
    return match.group(1).strip() if match else ""


def onednn_op():
    """oneDNN's dense linear `(x, weight, bias, attr, scalars, algorithm) -> x @ weight^T + bias` (the op PyTorch's
    inductor emits for CPU linears), or None where this PyTorch has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias through oneDNN (any strides)."""
    return onednn_op()(x, weight, bias, "none", [], "")


def onednn_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: bool):
    """(grad (M, N)^T @ x (M, K), grad's column sums or None) through oneDNN's inner-product backward-weights
    primitive, which takes oneDNN tensors: both operands are copied into them first."""
    dw, db = torch.ops.aten.mkldnn_linear_backward_weights(
        grad.contiguous().to_mkldnn(), x.contiguous().to_mkldnn(), weight, bias)
    return dw, (db if bias else None)


def isa_label(flags: list[str]) -> str:
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX-512+BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "sve" in flags or "asimd" in flags:
        return "ARM " + "+".join(f.upper() for f in flags if f in ("sve2", "sve", "bf16", "asimd"))
    return platform.machine()


def gemm_gflops(dtype: torch.dtype, n: int = 512, repeats: int = 5, device: str = "cpu",
                clock=time.perf_counter, product=torch.matmul) -> float:
    """GFLOP/s of the fastest of `repeats` n x n x n products `product(a, b)` (one warm-up first), timed by
    `clock` (time.process_time: CPU time, not inflated by other jobs on a shared host; CPU devices only)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = clock()
        product(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        if i:
            best = min(best, clock() - start)
    return 2 * n ** 3 / best / 1e9


@dataclass(frozen=True)
class Bf16Probe:
    native: bool
    reason: str
    speedup: float | None = None  # bf16 GEMM speed / fp32 GEMM speed, where measured


def relative_speed(speedup: float | None) -> str:
    """'a bf16 GEMM ran ...' completed: 73x slower / 2.4x faster than fp32."""
    if speedup is None:
        return "at an unmeasured speed"
    if speedup < 1:
        return f"{1 / speedup:.0f}x slower than fp32" if speedup < 0.5 else f"{speedup:.2f}x fp32's speed"
    return f"{speedup:.1f}x faster than fp32"


def _bf16_speedup() -> float:
    """bf16 over fp32 GEMM speed; 384^3 keeps a slow (emulated) bf16 matmul under 0.3 s."""
    return gemm_gflops(torch.bfloat16, 384, 3) / gemm_gflops(torch.float32, 384, 3)


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _distributed() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _is_main() -> bool:
    import torch.distributed as dist
    return not _distributed() or dist.get_rank() == 0


@lru_cache(maxsize=None)
def probe_bf16(device_type: str = "cpu") -> Bf16Probe:
    """Whether bf16 is native and faster than fp32 on this device (cached per process). In a
    distributed job rank 0 probes and broadcasts, so every rank picks the same precision."""
    if not _distributed():
        return _probe_bf16(device_type)
    import torch.distributed as dist
    box = [_probe_bf16(device_type) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _probe_bf16(device_type: str) -> Bf16Probe:
    forced = os.environ.get(FORCE_BF16_ENV)
    if forced in ("0", "1"):
        return Bf16Probe(forced == "1", f"{FORCE_BF16_ENV}={forced} forces {'' if forced == '1' else 'no '}native bf16")
    if device_type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name()
        return Bf16Probe(native, f"{name} {'has' if native else 'has no'} native bf16")
    speedup = _bf16_speedup()
    if not _onednn_bf16():
        return Bf16Probe(False, f"oneDNN reports no native bf16 on this CPU ({isa_label(cpu_flags())}); "
                                f"a bf16 GEMM ran {relative_speed(speedup)}", speedup)
    if speedup < MIN_BF16_SPEEDUP:
        return Bf16Probe(False, f"oneDNN reports native bf16 but a bf16 GEMM ran only {speedup:.2f}x "
                                "fp32's speed", speedup)
    return Bf16Probe(True, f"oneDNN reports native bf16 ({isa_label(cpu_flags())}) and a bf16 GEMM ran "
                           f"{relative_speed(speedup)}", speedup)


@dataclass(frozen=True)
class Precision:
    """The precision a run uses, where the choice came from, and why."""
    name: str  # fp32 | bf16 | fp16
    source: str  # "auto", or the flag / config that set it
    reason: str

    def as_dict(self) -> dict:
        return {"precision": self.name, "source": self.source, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.name} ({self.source}: {self.reason})"


def auto_precision(device_type: str) -> Precision:
    probe = probe_bf16(device_type)
    if probe.native:
        return Precision("bf16", "auto", probe.reason)
    if device_type == "cuda":
        return Precision("fp16", "auto", probe.reason)
    return Precision("fp32", "auto", probe.reason)


def _warn(message: str) -> None:
    if _is_main():
        print(f"warning: {message}.", file=sys.stderr, flush=True)


def check_explicit(name: str, source: str, device_type: str) -> Precision:
    """An explicit choice wins; a slow one gets a warning on stderr with the measured slowdown."""
    reason = "set explicitly"
    if name == "bf16" and device_type == "cpu":
        probe = probe_bf16("cpu")
        if not probe.native:
            measured = probe.speedup or _bf16_speedup()
            reason = f"set explicitly although {probe.reason}"
            _warn(f"{source} asks for bf16, but {probe.reason}; a bf16 GEMM ran {relative_speed(measured)} here: "
                  "expect training to be slower than in fp32 (use --precision auto or fp32)")
    if name == "fp16" and device_type == "cpu":
        reason = "set explicitly (fp16 has no fast math on a CPU)"
        _warn(f"{source} asks for fp16 on a CPU, which has no fast fp16 math: expect it to be slower than fp32")
    return Precision(name, source, reason)


def ds_config_precision(ds_config: dict) -> str | None:
    """The precision a DeepSpeed config sets. A `bf16` or `fp16` section decides as DeepSpeed reads
    it (`enabled` true: that one; false or absent: off, so fp32 if neither is on); `"enabled": "auto"`
    in every section present, or no section, leaves the choice to auto."""
    enabled = {}
    for name in ("bf16", "fp16"):
        if name not in ds_config:
            continue
        section = ds_config[name]
        if not isinstance(section, dict) or section.get("enabled", False) not in (True, False, "auto"):
            raise ValueError(f"DeepSpeed config: {name!r} must be an object like {{\"enabled\": true}} "
                             f"(true, false or \"auto\"), got {section!r}")
        enabled[name] = section.get("enabled", False)
    decided = {name: on for name, on in enabled.items() if on != "auto"}
    if not decided:
        return None
    if decided.get("bf16") and decided.get("fp16"):
        raise ValueError("DeepSpeed config: bf16 and fp16 are both enabled; enable at most one")
    return next((name for name, on in decided.items() if on), "fp32")


def choose_precision(flag: str = "auto", ds_config: dict | None = None, device_type: str = "cpu",
                     flag_name: str = "--precision", config_name: str = "the DeepSpeed config") -> Precision:
    """flag (unless auto) > the DeepSpeed config's bf16/fp16 sections > auto."""
    if flag not in PRECISIONS:
        raise ValueError(f"{flag_name} must be one of {', '.join(PRECISIONS)}, got {flag!r}")
    from_config = ds_config_precision(ds_config) if ds_config else None
    if flag != "auto":
        if from_config and from_config != flag and _is_main():
            print(f"note: {flag_name} {flag} overrides {from_config} of {config_name}", flush=True)
        return check_explicit(flag, flag_name, device_type)
    if from_config:
        return check_explicit(from_config, config_name, device_type)
    return auto_precision(device_type)


def with_precision(ds_config: dict, precision: str) -> dict:
    """A copy of a DeepSpeed config whose bf16/fp16 sections say `precision` (other keys of those
    sections, e.g. fp16 loss-scale settings, are kept)."""
    config = dict(ds_config)
    for name in ("bf16", "fp16"):
        section = dict(config.get(name) or {})
        section["enabled"] = name == precision
        config[name] = section
    return config


def autocast(precision: str, device_type: str):
    """Autocast to `precision` on `device_type`; no-op for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type, dtype=DTYPES[precision])


def host_info(precision: str | None = None) -> dict:
    flags = cpu_flags()
    info = {"cpu": cpu_model(), "isa": isa_label(flags), "isa_flags": flags, "machine": platform.machine(),
            "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    if precision:
        info["precision"] = precision
    return info


def host_label(info: dict | None = None) -> str:
    """One line naming the hardware a figure was measured on."""
    info = info or host_info()
    parts = [info["cpu"], info["isa"], f"{info['torch_threads']} threads"]
    if "gpu" in info:
        parts.insert(0, info["gpu"])
    if "precision" in info:
        parts.append(info["precision"])
    return ", ".join(parts)


def gemm_peaks(device: str = "cpu", clock=time.perf_counter) -> dict:
    """The host's measured GEMM peak in GFLOP/s: fp32, and bf16 where it is native (see gemm_gflops). On a CPU the
    fp32 peak is the better of PyTorch's matmul (MKL) and oneDNN's linear, both of which training uses
    (bertspeed/model/cpu_linear.py)."""
    peaks = {"fp32": max(gemm_gflops(torch.float32, n, device=device, clock=clock) for n in (512, 1024))}
    if device == "cpu" and onednn_op() is not None:
        peaks["fp32"] = max(peaks["fp32"], *(gemm_gflops(torch.float32, n, clock=clock, product=onednn_linear)
                                             for n in (512, 1024)))
    if probe_bf16("cuda" if device != "cpu" else "cpu").native:
        peaks["bf16"] = max(gemm_gflops(torch.bfloat16, n, device=device, clock=clock) for n in (512, 1024))
    return peaks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertspeed.training.hardware", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device_type = torch.device(args.device).type
    print("host:", host_label())
    print("bf16:", probe_bf16(device_type).reason)
    print("precision auto:", auto_precision(device_type))
    print("GEMM peak:", ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gemm_peaks(args.device).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
