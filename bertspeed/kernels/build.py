"""Builds of the fused kernels, all cached under a hash of their sources and flags.

- `build_harness()`: the device code compiled by g++ against the CUDA
  emulation (csrc/emulate.h) into a shared library for the CPU harness.
- `nvcc_check()`: nvcc compiles every kernel for sm_80 and sm_90 and fails
  on any register spill (ptxas --resource-usage output is parsed).
- `load_extension()`: the torch extension (JIT on first use, needs a CUDA
  torch build and the CUDA toolkit; no GPU needed to build).

`python -m bertspeed.kernels.build` (also `make kernels`) runs whichever of these the
machine supports and says what it skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bertspeed.paths import kernel_sources

CSRC = kernel_sources()
DEVICE_HEADERS = ["cuda_compat.h", "reduce.cuh", "philox.cuh", "layernorm.cuh", "softmax.cuh", "launchers.h"]
CUDA_ARCHS = ("80", "90")  # CUDA 13 dropped sm_70
NVCC_FLAGS = ["-std=c++17", "-O3", "-Xptxas", "-warn-spills", "--resource-usage"]


class KernelBuildError(RuntimeError):
    pass


class ToolchainMissing(KernelBuildError):
    """This machine cannot build that target (no compiler, no CUDA torch)."""


def cache_dir() -> Path:
    root = os.environ.get("BERTSPEED_KERNELS_CACHE") or os.environ.get("TORCH_EXTENSIONS_DIR")
    path = Path(root) / "bertspeed" if root else Path.home() / ".cache" / "bertspeed_kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_hash(files: list[str], flags: list[str]) -> str:
    digest = hashlib.sha256(" ".join(flags).encode())
    for name in sorted(files):
        digest.update(name.encode() + (CSRC / name).read_bytes())
    return digest.hexdigest()[:16]


def cuda_home() -> Path | None:
    """CUDA_HOME, else CUDA_PATH, else /usr/local/cuda, else nvcc's parent on PATH."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return Path(candidate)
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parents[1] if nvcc else None


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelBuildError(f"{' '.join(cmd)}\nfailed with exit code {proc.returncode}:\n{proc.stderr}")
    return proc.stdout + proc.stderr


def build_harness(defines: tuple[str, ...] = ()) -> Path:
    """Shared library of the launchers + device code on emulated CUDA threads (g++ >= 12)."""
    flags = ["-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-Wno-unknown-pragmas"]
    flags += [f"-D{d}" for d in defines]
    files = DEVICE_HEADERS + ["emulate.h", "launchers.cu", "harness_api.cpp"]
    out = cache_dir() / f"harness_{source_hash(files, flags)}.so"
    if out.exists():
        return out
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise ToolchainMissing(f"no C++ compiler ({cxx}) to build the CPU harness")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / out.name
        _run([cxx, *flags, "-x", "c++", str(CSRC / "launchers.cu"), str(CSRC / "harness_api.cpp"), "-o", str(partial)])
        os.replace(partial, out)
    return out


SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
REGS = re.compile(r"Used (\d+) registers")


def parse_resource_usage(log: str) -> dict[tuple[str, str], dict]:
    """ptxas --resource-usage output -> {(kernel, arch): {registers, spill_stores, spill_loads}}."""
    usage, current = {}, None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = (m.group(1), m.group(2))
            usage[current] = {"registers": None, "spill_stores": 0, "spill_loads": 0}
        elif current and (m := SPILL.search(line)):
            usage[current].update(spill_stores=int(m.group(1)), spill_loads=int(m.group(2)))
        elif current and (m := REGS.search(line)):
            usage[current]["registers"] = int(m.group(1))
    return usage


def nvcc_check(source: Path = CSRC / "launchers.cu", extra_flags: tuple[str, ...] = ()) -> dict:
    """Compile `source` for every arch in CUDA_ARCHS; raise KernelBuildError on spills or errors.

    A passing check of our own kernels is cached under the hash of their sources and flags.
    """
    home = cuda_home()
    if home is None:
        raise ToolchainMissing("nvcc not found (set CUDA_HOME)")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
    cached = None
    if source == CSRC / "launchers.cu":
        flags = [_run([str(home / "bin" / "nvcc"), "--version"]), *NVCC_FLAGS, *gencode, *extra_flags]
        cached = cache_dir() / f"nvcc_check_{source_hash(DEVICE_HEADERS + ['launchers.cu'], flags)}.json"
        if cached.exists():
            return {(k, a): u for k, a, u in json.loads(cached.read_text())}
    usage = _nvcc_resource_usage(home, source, gencode, extra_flags)
    if cached is not None:
        cached.write_text(json.dumps([[k, a, u] for (k, a), u in usage.items()]))
    return usage


def _nvcc_resource_usage(home: Path, source: Path, gencode: list[str], extra_flags: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log = _run([str(home / "bin" / "nvcc"), *NVCC_FLAGS, *gencode, *extra_flags, "-I", str(CSRC),
                    "-c", str(source), "-o", str(Path(tmp) / "kernels.o")])
    usage = parse_resource_usage(log)
    if not usage:
        raise KernelBuildError(f"no kernels found in the ptxas output of {source.name}:\n{log}")
    archs = {arch for _, arch in usage}
    if archs != {f"sm_{a}" for a in CUDA_ARCHS}:
        raise KernelBuildError(f"expected code for {CUDA_ARCHS}, ptxas compiled {sorted(archs)}")
    spilled = [f"{k} ({a}): {u['spill_stores']} B stored, {u['spill_loads']} B loaded"
               for (k, a), u in usage.items() if u["spill_stores"] or u["spill_loads"]]
    if spilled:
        raise KernelBuildError("register spills:\n  " + "\n  ".join(spilled))
    return usage


def load_extension(verbose: bool = False):
    """Build (first time) and import the torch extension; needs a CUDA torch and nvcc."""
    import torch

    if torch.version.cuda is None:
        raise ToolchainMissing(f"torch {torch.__version__} is a CPU build: no CUDA extension to build")
    home = cuda_home()
    if home is None:
        raise ToolchainMissing("the CUDA toolkit (nvcc) was not found: set CUDA_HOME")
    # torch.utils.cpp_extension reads CUDA_HOME once, at import, and otherwise
    # guesses from `which nvcc` (wrong on machines where nvcc is not on PATH).
    os.environ.setdefault("CUDA_HOME", str(home))
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        cpp_extension.CUDA_HOME = str(home)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a[0]}.{a[1]}" for a in CUDA_ARCHS)
    sources = ["binding.cpp", "launchers.cu"]
    name = f"bertspeed_kernels_{source_hash(DEVICE_HEADERS + sources, [torch.__version__])}"
    build_dir = cache_dir() / name
    build_dir.mkdir(exist_ok=True)
    if not (build_dir / f"{name}.so").exists():
        print(f"bertspeed: building the fused CUDA kernels into {build_dir} (first use only, ~1 min)",
              file=sys.stderr)
    return cpp_extension.load(
        name=name, sources=[str(CSRC / s) for s in sources], build_directory=str(build_dir),
        extra_include_paths=[str(CSRC)], extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-Xptxas", "-warn-spills"], verbose=verbose)


def main(argv=None) -> int:
    import argparse
    import time

    argparse.ArgumentParser(prog="python -m bertspeed.kernels.build", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    ok = True
    for label, step in (("CPU harness (g++)", build_harness), ("nvcc sm_80/sm_90, no spills", nvcc_check),
                        ("torch extension", load_extension)):
        start = time.perf_counter()
        try:
            result = step()
        except ToolchainMissing as err:
            print(f"[skip] {label}: {err}")
            continue
        except KernelBuildError as err:
            print(f"[FAIL] {label}: {err}")
            ok = False
            continue
        detail = f"{len(result)} kernels" if isinstance(result, dict) else getattr(result, "__file__", result)
        print(f"[ok] {label} in {time.perf_counter() - start:.1f} s: {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
