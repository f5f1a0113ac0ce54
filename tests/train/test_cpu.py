"""The CPU settings: threads fitted to the CPUs the process may use, and freed memory given back."""
import os
import subprocess
import sys

import pytest
import torch

from tuna.train.cpu import set_threads, usable_cpus


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_cgroup_quota_caps_the_usable_cpus(tmp_path):
    quota = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "absent") == affinity
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) == affinity
    quota.write_text("50000 100000\n")  # half a CPU still gets a thread
    assert usable_cpus(quota) == 1


def test_threads_follow_the_knob_then_omp_then_the_usable_cpus(threads, monkeypatch):
    assert set_threads(1) == torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    assert set_threads(None) == 2  # the user's environment decides
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("tuna.train.cpu.usable_cpus", lambda: 1)
    assert set_threads(None) == torch.get_num_threads() == 1


RELEASE = """
import ctypes, sys, torch
from tuna.train.cpu import release_freed_memory

class MallInfo(ctypes.Structure):  # glibc's mallinfo2: hblks counts the blocks served by mmap, not the heap
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo
if sys.argv[1] == "on":
    assert release_freed_memory()
big = torch.ones(6 << 20)
del big  # a freed 24 MiB block raises glibc's threshold: smaller blocks then come from its heap
before = libc.mallinfo2().hblks
blocks = [torch.ones(4 << 20) for _ in range(8)]  # 16 MiB each
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_release_memory_serves_big_tensors_from_the_os():
    """Blocks served by mmap go back to the OS when freed; heap blocks stay in the heap."""
    from_os = {mode: int(subprocess.run([sys.executable, "-c", RELEASE, mode], capture_output=True, text=True,
                                        check=True).stdout.split()[-1]) for mode in ("off", "on")}
    assert from_os == {"off": 0, "on": 8}
