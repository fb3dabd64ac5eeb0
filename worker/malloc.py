"""glibc's malloc, tuned for a long-lived worker: arenas capped, free memory given back.

glibc gives a thread that finds the heap busy an arena of its own, up to eight per
core, and each arena keeps the memory freed into it for reuse. The worker has
several threads that allocate (Faust's consumer thread, RocksDB's and Qdrant's
background threads, the event loop's), so the freed peaks of an apply round stay
spread over many arenas. Two arenas: the memory replay of ``make bench`` reached
431 MB instead of ~472 MB at 500k events (see the README's performance notes).

``MALLOC_ARENA_MAX`` in the environment, which glibc reads itself, wins.

**Free memory given back** (:func:`release_free_memory`, every
``MALLOC_TRIM_INTERVAL_S`` in the worker). glibc returns freed memory to the
system only from the top of the heap. An apply round frees most of what it
allocated (windows read back, decoded messages), but what stays alive (caches,
the next round's data) is spread over the heap, so its free pages in between
stay resident: in the memory replay the heap reached ~200 MB, and one
``malloc_trim(0)`` took the worker from 417 to 316 MB (README, performance
notes). ``malloc_trim`` hands the free pages back (``MADV_DONTNEED``) and keeps
the addresses, so nothing moves and the next allocation there is served as before.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from typing import Any

#: mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
DEFAULT_ARENAS = 2


@functools.cache
def _glibc() -> Any:
    """The process's C library when it is glibc (else None)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``);
    True if memory was released, False if none was or the C library is not glibc.
    ctypes lets go of the GIL for the call: run it in a thread to keep the event
    loop going (allocations wait on an arena's lock while it is trimmed)."""
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))


def cap_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> int | None:
    """Cap glibc's arenas at ``arenas`` unless MALLOC_ARENA_MAX is set or the C
    library is not glibc; returns the cap set, else None. Call it before the
    process starts threads."""
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if os.environ.get("MALLOC_ARENA_MAX") or mallopt is None:
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return arenas if mallopt(M_ARENA_MAX, arenas) == 1 else None
