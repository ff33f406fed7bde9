"""The C allocator of a process that opens the journal (`run`, `sync`, `prune`): large blocks go
back to the system once freed, and at most 2 malloc arenas (passes run in pool threads; each
would get an arena of its own).

Left to itself, glibc's malloc serves a block of 128 KiB or more by mmap and returns it when it
is freed, but then raises that threshold to the size freed (up to 32 MiB): from then on the MBs
of every listing page are carved from a heap, and what they leave there between long-lived
blocks stays with the process. Measured in a process that set nothing, on a full pass after a
backfill at 20,000 runs: +4.9 MB of peak RSS over the backfill's; +0.6 MB with the threshold
held (benchmarks/footprint.py's workload). Holding it costs an mmap and a munmap per large block
(a page of a listing or of a history). An operator's own setting of either (MALLOC_ARENA_MAX,
MALLOC_MMAP_THRESHOLD_, or its name in GLIBC_TUNABLES) is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # glibc's mallopt parameters (malloc.h)
ARENAS = 2
LARGE_BLOCK = 128 * 1024  # glibc's default threshold, held there
# (parameter, value, the operator's variable for it, its name in GLIBC_TUNABLES)
SETTINGS = (
    (M_ARENA_MAX, ARENAS, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
    (M_MMAP_THRESHOLD, LARGE_BLOCK, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
)


def configure() -> None:
    """Hold glibc's mmap threshold at LARGE_BLOCK (setting it ends its rise) and its arenas at
    ARENAS, each unless the operator set it; nothing with another C library (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return  # (musl's mallopt does nothing)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    for parameter, value, variable, tunable in SETTINGS:
        if not os.environ.get(variable) and tunable not in tunables:
            libc.mallopt(parameter, value)
