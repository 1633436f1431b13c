"""Process memory: give freed large buffers back to the operating system.

glibc's ``malloc`` serves a request from ``mmap`` only above a threshold that *grows* each time a
mapped block is freed (up to 32 MB on 64-bit). After the first large output is freed, later blocks
of that size come from the heap instead, where a freed block stays resident until the heap top is
free. A comparison that runs a model on many ROI sets one after another (each output tens to
hundreds of MB, onnxruntime without its arena) then keeps every size it has seen resident.
Fixing the threshold keeps large blocks on ``mmap``: freeing one unmaps it.

On ``parity-check`` (coco-tiny val, 42 images, yolox_nano) this lowers the peak resident size from
1.71 GB to 1.43 GB with the same figures (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger(__name__)

M_MMAP_THRESHOLD: int = -3
"""``mallopt`` parameter number of the mmap threshold (glibc ``malloc.h``)."""
LARGE_BLOCK_BYTES: int = 1 << 20
"""Blocks of at least this many bytes (1 MiB) are mapped, and unmapped when freed."""


def map_large_blocks(threshold_bytes: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve allocations of at least ``threshold_bytes`` from ``mmap`` from now on (glibc only).

    Returns whether the setting took effect: ``False`` on a C library without ``mallopt`` (macOS,
    Windows, musl), where nothing changes. It applies to the whole process; a command that holds
    many large, short-lived arrays calls it once at its start.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        LOG.debug("no mallopt in the C library (%s): large blocks keep the default policy", name)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
