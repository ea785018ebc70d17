#!/usr/bin/env bash
# Issue 5, point 4c: the torch extension builds against the CUDA torch build
# (kernels/requirements-cuda-build.txt: torch 2.14.1 for CUDA 13.0) and
# imports. Needs nvcc (CUDA_HOME, default /usr/local/cuda), not a GPU.
# Creates .venv-cuda on first run (~1 min, 5.4 GB), reuses it afterwards;
# the extension build is cached in $TORCH_EXTENSIONS_DIR by source hash.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-cuda
PINS=kernels/requirements-cuda-build.txt
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.torch_extensions}"

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi

stamp="$VENV/.installed-$(sha256sum "$PINS" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$PINS"
  touch "$stamp"
fi

# The repo root on sys.path (the project itself is not installed in this venv).
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" -W ignore::UserWarning - <<'PY'
import time

import torch

from bertspeed.kernels.build import CUDA_ARCHS, load_extension

assert torch.version.cuda, f"{torch.__version__} is not a CUDA build"
start = time.perf_counter()
ext = load_extension()
functions = sorted(n for n in dir(ext) if not n.startswith("_"))
expected = ["layer_norm_backward", "layer_norm_forward", "softmax_backward", "softmax_forward"]
assert functions == expected, functions

# The custom ops register under this torch too, and their CPU path runs.
from bertspeed.kernels import ops

x = torch.randn(4, 8)
y = ops.layer_norm(x, torch.ones(8), torch.zeros(8), 1e-5)
assert torch.allclose(y, torch.nn.functional.layer_norm(x, (8,)), atol=1e-5)
print(f"ok: torch {torch.__version__} (CUDA {torch.version.cuda}) built and imported {ext.__file__} "
      f"for sm_{'/sm_'.join(CUDA_ARCHS)} in {time.perf_counter() - start:.1f} s")
PY
