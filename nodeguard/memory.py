"""Keeping the agent's resident memory small: glibc's allocator told to share arenas and to give
freed memory back. A no-op where the C library is not glibc.

Each thread would otherwise get a malloc arena of its own (up to 8 per core), and memory freed
after a big pass (a 20,000-member group parsed and evaluated) stays resident until reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h
ARENAS = 2

_libc: ctypes.CDLL | None = None
_tried = False


def _glibc() -> ctypes.CDLL | None:
    global _libc, _tried
    if not _tried:
        _tried = True
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim"):
                _libc = lib
        except OSError:
            _libc = None
    return _libc


def limit_arenas(arenas: int = ARENAS) -> None:
    """Call before the agent starts its threads: later threads share these arenas."""
    lib = _glibc()
    if lib is not None and not lib.mallopt(M_ARENA_MAX, arenas):
        log.debug("mallopt(M_ARENA_MAX) refused")


def give_back() -> None:
    """Return freed heap pages to the kernel (after a big pass)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
