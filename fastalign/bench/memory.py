"""Peak memory: the CUDA allocator's statistics, and the process's resident set on CPU.

``PeakMemory`` (CUDA) is what the harness records per measurement; PyTorch
keeps no allocator statistics on CPU, so there the scripts that report memory
use ``PeakRSS`` (``VmHWM - VmRSS`` from ``/proc/self/status``, with the peak
reset through ``/proc/self/clear_refs``) in a process of their own, after a
warm-up, with glibc's mmap threshold pinned (``pin_mmap_threshold``) so that
freed buffers leave the resident set.
"""

from __future__ import annotations

import ctypes
import gc
import resource
from typing import Optional

import torch

from .timing import Device, device_kind


class PeakMemory:
    """Peak device memory of the calls inside the block, above what was allocated at entry.

    ``bytes`` is ``None`` on CPU, where PyTorch keeps no allocator statistics
    (process RSS would mix in the interpreter and earlier cases).
    """

    def __init__(self, device: Device):
        self.device = device_kind(device)
        self.bytes: Optional[int] = None
        self._base = 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda" and exc[0] is None:
            torch.cuda.synchronize()
            self.bytes = int(torch.cuda.max_memory_allocated() - self._base)
        return False


def free_memory(device: Device) -> Optional[int]:
    """Free device memory in bytes (``None`` on CPU: not bounded here)."""
    if device_kind(device) == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    return None


def release(device: Device) -> None:
    """Drop cached blocks so the next measurement's peak and free memory are its own."""
    if device_kind(device) == "cuda":
        gc.collect()  # graphs held by reference cycles keep device memory alive
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def proc_status_bytes(key: str) -> Optional[int]:
    """A ``/proc/self/status`` field in bytes ("VmRSS", "VmHWM"); ``None`` off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size (the peak so far where /proc is missing)."""
    now = proc_status_bytes("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss`."""
    peak = proc_status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def pin_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold so freed large buffers go back to the OS.

    glibc raises the threshold dynamically after big frees, after which freed
    buffers stay in the heap and inflate RSS; the peak would then measure the
    allocator's retention rather than live memory. Returns False off glibc.
    """
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(-3, nbytes))  # M_MMAP_THRESHOLD


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), so RSS reflects live memory."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakRSS:
    """Peak resident memory of the block above the resident set at entry (bytes).

    ``reset`` says whether the kernel's peak counter could be reset; without
    it the peak is the process's, so only a block that raises it is measured.
    """

    def __init__(self):
        self.bytes: Optional[int] = None
        self.reset = False
        self.base = 0

    def __enter__(self):
        self.reset = reset_peak_rss()
        self.base = rss_bytes()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.bytes = peak_rss_bytes() - self.base
        return False
