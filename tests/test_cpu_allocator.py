"""keep_freed_memory: a freed large block is served again without the kernel faulting its pages in anew."""
import os
import subprocess
import sys

import pytest

from bertspeed.training import cpu_allocator

pytestmark = pytest.mark.skipif(cpu_allocator._glibc() is None, reason="glibc's mallopt is Linux/glibc only")

PROBE = """
import resource, sys
import torch
from bertspeed.training.cpu_allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # activations of a step: large blocks (above every mmap threshold glibc sets by itself), all freed
    blocks = [torch.empty(size << 20, dtype=torch.uint8).fill_(1) for size in (40, 64, 40)]
for _ in range(6):  # the heap grows until its free blocks fit the step's requests
    step()
before = faults()
for _ in range(4):
    step()
print(applied, faults() - before)
"""


def page_faults(mode: str, **env) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if k not in cpu_allocator.USER_MALLOC_ENV and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_kept_memory_is_reused_without_page_faults():
    applied, kept = page_faults("keep")
    _, default = page_faults("glibc")
    assert applied
    assert default >= 4 * 72  # 144 MB a step faulted in again (at least in 2 MB pages)
    assert kept <= default // 5, (kept, default)


@pytest.mark.parametrize("env", [{"BERTSPEED_KEEP_FREED_MEMORY": "0"}, {"MALLOC_MMAP_MAX_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}])
def test_the_users_choice_wins(env):
    applied, faults = page_faults("keep", **env)
    assert not applied
    assert faults >= 4 * 72
