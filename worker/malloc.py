"""glibc's malloc arenas, capped for a long-lived worker.

glibc gives a thread that finds the heap busy an arena of its own, up to eight per
core, and each arena keeps the memory freed into it for reuse. The worker has
several threads that allocate (Faust's consumer thread, RocksDB's and Qdrant's
background threads, the event loop's), so the freed peaks of an apply round stay
spread over many arenas. Two arenas: the memory replay of ``make bench`` reached
431 MB instead of ~472 MB at 500k events (see the README's performance notes).

``MALLOC_ARENA_MAX`` in the environment, which glibc reads itself, wins.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
DEFAULT_ARENAS = 2


def cap_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> int | None:
    """Cap glibc's arenas at ``arenas`` unless MALLOC_ARENA_MAX is set or the C
    library is not glibc; returns the cap set, else None. Call it before the
    process starts threads."""
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return arenas if mallopt(M_ARENA_MAX, arenas) == 1 else None
