"""The C allocator of a process that mirrors: large blocks go back to the system once freed,
and at most 2 malloc arenas (passes run in pool threads, each would get its own).

glibc's malloc serves a block of 128 KiB or more by mmap and returns it when it is freed, but
then raises that threshold to the size freed (up to 32 MiB): from then on the MBs of every
listing page are carved from a heap, and what they leave there between long-lived blocks stays
with the process. Measured on a daemon's full pass after its backfill at 20,000 runs: +4.9 MB of
peak RSS over the backfill's; +0.6 MB with the threshold held (benchmarks/footprint.py). Holding
it costs an mmap and a munmap per large block (a page of a listing or of a history).
"""

from __future__ import annotations

import ctypes
import sys

M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameters (malloc.h)
ARENAS = 2
LARGE_BLOCK = 128 * 1024  # glibc's default threshold, held there


def return_large_blocks() -> bool:
    """Hold glibc's mmap threshold at LARGE_BLOCK (setting it ends its rise) and its arenas at
    ARENAS. True if set; False with another C library (musl, macOS: nothing to set)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # (musl's mallopt does nothing)
    arenas = libc.mallopt(M_ARENA_MAX, ARENAS)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK) and arenas)
