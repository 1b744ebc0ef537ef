"""The C allocator's thresholds for the mount daemon's data buffers.

Owns: glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` for this process (``mallopt``).

Every READ allocates its reply buffer (a ``bytearray`` of up to 1 MiB, the largest FUSE
request) and every WRITE arrives in one pyfuse3 allocated. With glibc's defaults a buffer that
size is ``mmap``ed and unmapped again, or it comes from the top of the heap and the heap is
trimmed back after it is freed; either way the next request faults its 256 pages in afresh and
the kernel zeroes each one, which costs more than the copy the data needs (most when the page
cache is filling up, as in a buffered read of the whole LUN). Buffers below 32 MiB now stay in
the heap and the heap keeps up to 128 MiB free at its top, so a steady stream of requests
reuses the same pages. Measured with ``dd bs=1M`` over a 1 GiB tgt LUN on tmpfs, alternating
mounts: buffered reads 341-492 MB/s before, 440-580 after; ``iflag=direct`` unchanged
(docs/performance.md). The cost: up to 128 MiB the daemon has freed is not given back to the
system until more is freed (its peak is what it held at once anyway).

Anything but glibc (or a glibc that refuses a value) keeps its own behaviour: one DEBUG line.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1       # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 128 << 20


def keep_buffers() -> bool:
    """Keep request-sized buffers in the heap (see the module docstring); True if set."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:
        log.debug("malloc thresholds left alone: no mallopt (%s)", exc)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        log.debug("malloc thresholds: mallopt refused a value")
        return False
    return True
