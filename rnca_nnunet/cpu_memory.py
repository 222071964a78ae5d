"""glibc malloc settings that let the rule's CPU rollout reuse freed memory instead of faulting it in again.

Every step of the rule allocates and frees tensors of a few MB. With glibc's defaults such blocks are fresh
mmaps, or heap that is trimmed back to the system as soon as it is freed, so the next step faults every page
in again: on 2 CPU cores a third of the rollout's time went to the kernel. Keeping blocks under 32 MB in the
heap, and up to 512 MB of freed heap for reuse, made refinement 2.5-3x faster on small cases
(benchmarks/SPEED.md) without raising its peak. The setting is process-wide, so only this project's own
console scripts apply it (cli.py); a program that imports the package keeps its malloc as it is and opts in by
calling `reuse_freed_memory()` itself. The environment variables MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ do the same for a whole run, and jemalloc/tcmalloc (LD_PRELOAD) are the usual alternatives.
"""
from __future__ import annotations

import ctypes
import sys

MMAP_THRESHOLD = 32 * 2 ** 20  # bytes: smaller blocks come from the heap (glibc's largest dynamic threshold)
TRIM_THRESHOLD = 512 * 2 ** 20  # bytes of free heap kept for reuse before any is returned to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def reuse_freed_memory() -> bool:
    """Set the thresholds (idempotent); False where the C library is not glibc, which is then left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
