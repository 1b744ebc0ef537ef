"""mount/malloc.py: the mount daemon keeps request-sized buffers in glibc's heap."""

from __future__ import annotations

import subprocess
import sys

import pytest


_HEAP_PROBE = """
import ctypes, sys
from iscsifs.mount.malloc import keep_buffers
if sys.argv[1] == "keep":
    assert keep_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
first = libc.malloc(1 << 20)
mmapped = bool(ctypes.c_size_t.from_address(first - 8).value & 2)   # chunk IS_MMAPPED
blocks = [libc.malloc(1 << 20) for _ in range(64)]
for b in [first, *blocks]:
    libc.free(b)
print(int(mmapped), libc.mallinfo2().fordblks >> 20)
"""


def test_the_daemon_keeps_request_sized_buffers_in_the_heap():
    # mount.iscsifs has glibc keep request-sized (1 MiB) buffers in the heap
    # (mount/malloc.py): by default the first is mmap()ed and later ones come from a heap
    # that is trimmed as soon as they are freed, so each request faulted zeroed pages in
    # afresh. Kept: not mapped on its own, and 64 MiB freed stay in the heap for reuse
    def probe(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
        return int(out[0]), int(out[1])

    default_mapped, default_free_mib = probe("default")
    assert default_mapped == 1 and default_free_mib < 16
    assert probe("keep") == (0, pytest.approx(64, abs=2))
