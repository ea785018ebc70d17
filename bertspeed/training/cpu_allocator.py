"""Keep freed memory in the process while training on a CPU (Linux with glibc).

A training step allocates and frees the same large activation tensors every step. glibc's malloc
serves every block above its mmap threshold (128 KiB at first, rising to at most 32 MiB) with a
fresh mmap and unmaps it on free, so the next step faults every page in again, zero-filled by the
kernel: a bert-base 32 x 128 fp32 step spends several per cent of its time there (its FFN
activations are 50 MB each). `keep_freed_memory()` makes malloc take every block from its heap
and never give the heap back, as PyTorch's CUDA caching allocator does on a GPU; the price is
that a process keeps its peak memory until it exits.

Skipped (and left to the user) when MALLOC_* / GLIBC_TUNABLES malloc settings or a preloaded
jemalloc/tcmalloc/mimalloc are present, when BERTSPEED_KEEP_FREED_MEMORY=0, or off glibc.
"""
from __future__ import annotations

import ctypes
import os
import sys

DISABLE_ENV = "BERTSPEED_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
USER_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _glibc():
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has no mallopt to speak of)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return libc


def user_chose_allocator() -> bool:
    """The user set malloc up themselves (environment, tunables, or another allocator preloaded)."""
    if any(name in os.environ for name in USER_MALLOC_ENV):
        return True
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in os.environ.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS)


def keep_freed_memory() -> bool:
    """Serve large blocks from malloc's heap and never trim it; True when the setting was applied."""
    if os.environ.get(DISABLE_ENV, "1") == "0" or user_chose_allocator():
        return False
    libc = _glibc()
    if libc is None:
        return False
    # M_TRIM_THRESHOLD is a size_t inside glibc: -1 is "never trim".
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
