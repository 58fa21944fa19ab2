"""glibc malloc settings for CPU runs: freed activation buffers stay in the process's heap.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold
(128 KiB at start, raised on the fly only up to 32 MiB) with freshly mapped pages and unmaps
them on free, so each large activation of every forward and backward pass pays page faults
and zeroing in the kernel: a third of the time of a training run here was system time. With
the threshold fixed at 32 MiB and the heap not trimmed below 1 GiB of free space, those
buffers are reused instead (the speed-ups are in benchmarks/README.md).
The command line applies it on Linux; elsewhere (or with another libc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Apply the settings; True if glibc accepted them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
