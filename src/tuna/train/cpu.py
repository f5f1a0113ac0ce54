"""CPU settings a training process takes before its first tensor: threads, and where freed memory goes.

Threads. torch starts one intra-op thread per core of the machine. In a container limited to a few
CPUs (a cgroup quota, a CPU set) that is too many: the threads share the few CPUs and every step waits
on the slowest. tuna takes the CPUs this process may really use (affinity, then the cgroup quota),
never more than torch's own count, unless `train.cpu_threads` or OMP_NUM_THREADS says otherwise.
Inter-op threads are left as torch sets them: the training step runs no parallel graph branches.

Freed memory. glibc keeps freed blocks of up to 32 MiB in its heap for reuse; a training step frees
and allocates activations of many sizes, and the heap grows to far more than is live at once (on a
LoRA step of the embedded model, 20.8 GB of RSS for 14 GB of tensors kept). `train.release_memory`
sets glibc's mmap threshold to 1 MiB, so every larger tensor comes from the OS and goes back to it
when freed: peak RSS 11.8 GB there, and 20% fewer tokens per second (the kernel zeroes each new
page). It is process-wide and stays for the life of the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
from pathlib import Path

import torch

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
RELEASE_THRESHOLD = 1 << 20


def usable_cpus(quota: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may run on: its affinity set, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if quota.is_file():
        limit, _, period = quota.read_text().partition(" ")
        if limit != "max":
            cpus = min(cpus, max(1, math.ceil(int(limit) / int(period))))
    return cpus


def set_threads(requested: int | None) -> int:
    """Intra-op threads: `requested`, else OMP_NUM_THREADS's choice, else the usable CPUs (at most torch's
    default). Returns the number set."""
    if requested is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    threads = requested or min(usable_cpus(), torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads


def release_freed_memory() -> bool:
    """glibc: tensors over 1 MiB come from the OS and return to it when freed. False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, RELEASE_THRESHOLD))
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
