"""Keep freed memory in the process for reuse (glibc malloc tuning) — a process-wide setting for inference commands.

PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above its mmap threshold (at most 32 MiB, and
one 256x256 feature map of 256 bf16 channels is exactly 32 MiB) with a fresh ``mmap`` and gives it back with
``munmap`` when the tensor dies, so each new large activation of the full-size renderer costs a page fault per 4 KiB
(~8000 for such a map) before the first byte is written: on this 2-core machine an elementwise op over such a map
took 12 ms instead of 2 ms, and a whole fp32 renderer frame lost ~25 % to it (``benchmarks/render_fps.py
--malloc``; docs/decisions.md, "Renderer inference speed"). :func:`keep_freed_memory` makes malloc serve every block
from its heap and never trim the heap, so the pages of one frame's activations are reused by the next.

The cost: the process keeps its peak heap until it exits (what an inference command wants; long training jobs with
changing shapes are left on the default). Not applied on import: ``tavce animate`` applies it at start (opt out with
``TAVCE_MALLOC=default``), and the benchmarks apply it to every row of a run alike with ``--malloc tuned``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Serve all blocks from malloc's heap (``M_MMAP_MAX = 0``) and never trim it (``M_TRIM_THRESHOLD`` = INT_MAX).

    Returns True when applied (Linux with glibc), False elsewhere (macOS, Windows, musl) or when ``TAVCE_MALLOC`` is
    ``default``. Idempotent; changes nothing that is already allocated, so call it before the heavy work.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("TAVCE_MALLOC", "tuned").strip().lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both or neither
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))
    return _applied


def malloc_tuned() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return _applied


__all__ = ["keep_freed_memory", "malloc_tuned"]
