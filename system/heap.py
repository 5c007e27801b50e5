"""Every process of a run keeps its C heap near what it uses: glibc's arenas capped, free pages handed back.

glibc's ``malloc`` gives a thread that allocates while another holds an arena an arena of its own, up to 8 per core,
and keeps the pages freed inside an arena unless they sit at its top. The processes of a long run allocate from many
threads (Ray's core worker and gRPC, torch, the roles' own threads), so their resident memory creeps up by pages
that are free but kept: the 2-hour soak (docs/benchmarks.md, "Two hours of the final code") saw the driver and the
replay shards grow 7 MB an hour with flat Python heaps, and one driver held 112 MB free in one thread's arena.

Two measures, both glibc-only (elsewhere, e.g. musl or macOS, they do nothing and say so by returning False):

- :func:`limit_arenas`: at most ``ray.malloc_arena_max`` arenas (``mallopt(M_ARENA_MAX)`` in this process, which
  holds for the arenas made from now on, and ``MALLOC_ARENA_MAX`` in the environment of the processes it starts);
- :class:`HeapTrimmer`: a daemon thread that calls ``malloc_trim(0)`` every ``ray.heap_trim_every_s``; since glibc
  2.8 that hands back the free pages inside every arena, not only the top of the main one.
- pyarrow's memory pool (mimalloc) hands back freed pages at once in the processes a run starts and in the
  driver (:data:`ARROW_PURGE_ENV`, :func:`return_arrow_pages`), and asks for no transparent huge pages
  (:data:`ARROW_HUGE_PAGES_ENV`). Not asked of a process that loaded pyarrow before
  (``release_unused()``): a test suite whose driver called it after each metrics rewrite ended in a segmentation
  fault at its exit.

    start(arena_max=2, trim_every_s=60.0)   # once per process: the driver before Ray starts, each actor at creation
    stats = heap_stats()                     # HeapStats(in_use=..., free=...) or None
"""

from __future__ import annotations

import atexit
import ctypes
import os
import threading
from dataclasses import dataclass
from functools import cache

__all__ = ["ARENA_ENV", "ARROW_ENV", "ARROW_HUGE_PAGES_ENV", "ARROW_PURGE_ENV", "HeapStats", "HeapTrimmer",
           "heap_stats", "limit_arenas", "return_arrow_pages", "start", "trim"]

ARENA_ENV = "MALLOC_ARENA_MAX"
"""The environment variable glibc reads at a process's start."""
ARROW_PURGE_ENV = "MIMALLOC_PURGE_DELAY"
"""How long (ms) mimalloc, pyarrow's memory pool on Linux, keeps freed pages before it hands them back, read when a
process loads pyarrow: its default keeps the pages a thread freed until that thread allocates again (a live thread
that had made and dropped 100 MB of Arrow tables kept 120 MB, 54 MB with 0; tests/system/test_heap.py)."""
ARROW_HUGE_PAGES_ENV = "MIMALLOC_ARENA_EAGER_COMMIT"
"""Whether mimalloc commits its 1 GiB arenas up front, read when a process loads pyarrow. Its default does, and asks
the kernel for transparent huge pages over the whole arena (``madvise(MADV_HUGEPAGE)``). The kernel's khugepaged
then fills any 2 MB of it that holds a page in use (Linux's default ``max_ptes_none`` lets a region with one page
in use be filled) with zeroed pages, which stay resident whether mimalloc uses them or has handed them back. The
replay shards grew by such steps, minutes apart, for as long as a soak ran (docs/benchmarks.md). With 0 the arena
is committed as it is used, without the advice; the process's other huge pages (numpy's large arrays ask for them)
stay."""
ARROW_ENV = {ARROW_PURGE_ENV: "0", ARROW_HUGE_PAGES_ENV: "0"}
"""What :func:`return_arrow_pages` sets (where it is not set already)."""
_M_ARENA_MAX = -8
"""``mallopt``'s parameter number for the arena cap (glibc's malloc.h)."""


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@cache
def _libc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it has ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("malloc_trim", "mallopt")):
        return None
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _MallInfo2
    return libc


@dataclass(frozen=True)
class HeapStats:
    """The C heap over every arena, in bytes (``mallinfo2``)."""

    in_use: int
    """Allocated and not freed (including blocks that have their own mmap)."""
    free: int
    """Freed but still held by the allocator: what :func:`trim` can hand back, in whole pages."""


def heap_stats() -> HeapStats | None:
    """This process's heap, or None where the C library cannot say (not glibc, or glibc older than 2.33)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return HeapStats(in_use=info.uordblks + info.hblkhd, free=info.fordblks)


def limit_arenas(arena_max: int) -> bool:
    """At most ``arena_max`` arenas in this process from now on and in the processes it starts (0: glibc's
    default). False where this is not glibc."""
    if arena_max <= 0:
        return False
    os.environ[ARENA_ENV] = str(arena_max)
    libc = _libc()
    return libc is not None and libc.mallopt(_M_ARENA_MAX, arena_max) == 1


def trim() -> bool:
    """Hand this process's free heap pages back to the system now; False where nothing was or could be."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(0) == 1


class HeapTrimmer:
    """A daemon thread that calls :func:`trim` every ``every_s`` seconds until :meth:`stop`."""

    def __init__(self, every_s: float):
        if every_s <= 0:
            raise ValueError(f"every_s={every_s}: expected > 0")
        self.every_s, self.trims = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dynaray-heap-trim", daemon=True)

    def start(self) -> HeapTrimmer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            trim()
            self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


_trimmer: HeapTrimmer | None = None
_lock = threading.Lock()


def return_arrow_pages() -> None:
    """Arrow's freed pages go back at once (:data:`ARROW_PURGE_ENV`) and stay back (:data:`ARROW_HUGE_PAGES_ENV`) in
    this process, if it has not loaded pyarrow yet, and in the processes it starts; a value the user set stays. The
    CLI asks it first thing, before any config is read (reading one loads pyarrow), so the driver's own metrics
    writes hand their pages back too."""
    for name, value in ARROW_ENV.items():
        os.environ.setdefault(name, value)


def start(arena_max: int, trim_every_s: float) -> bool:
    """Both measures for this process (the trimmer once: a second call keeps the first's). False where this is not
    glibc, and then nothing is started."""
    global _trimmer
    if _libc() is None:
        return False
    limit_arenas(arena_max)
    if trim_every_s > 0:  # processes started from now on (the CLI has set it already, whatever this key says)
        return_arrow_pages()
    with _lock:
        if _trimmer is None and trim_every_s > 0:
            _trimmer = HeapTrimmer(trim_every_s).start()
            atexit.register(_trimmer.stop)  # no trim while the C libraries' teardown frees at exit
    return True
