"""system/heap.py: arenas capped and free heap pages handed back, each checked in a fresh process (glibc only)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from system import heap

pytestmark = pytest.mark.skipif(heap._libc() is None, reason="the C library is not glibc")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **env})


ARENAS = """
    import ctypes, threading
    from system import heap
    {setup}
    barrier = threading.Barrier(8)
    def allocate():
        barrier.wait()
        kept = [bytes(2048) for _ in range(1000)]  # > 512 bytes: glibc's malloc, not Python's small-object one
        barrier.wait()
    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    ctypes.CDLL(None).malloc_stats()  # to stderr: one "Arena N:" block per arena
"""


def test_limit_arenas_caps_the_arenas_of_concurrent_threads():
    capped = _python(ARENAS.format(setup="assert heap.limit_arenas(2)"))
    default = _python(ARENAS.format(setup=""))
    assert capped.returncode == 0 and default.returncode == 0, capped.stderr + default.stderr
    capped_arenas, default_arenas = capped.stderr.count("Arena "), default.stderr.count("Arena ")
    assert capped_arenas <= 2, capped.stderr
    assert default_arenas > 2, default.stderr  # the check above can fail: without the cap the threads get their own


def test_trim_hands_back_pages_freed_inside_a_thread_arena():
    done = _python("""
        import threading
        from system import heap
        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        kept = []
        def fragment():  # 200 MB in a thread's arena, 1 block in 100 kept: the freed pages are not at the top
            blocks = [bytes(1024) for _ in range(200_000)]
            kept.extend(blocks[::100])
        t = threading.Thread(target=fragment); t.start(); t.join()
        before, stats = rss_mb(), heap.heap_stats()
        assert stats is None or stats.free > 100 * 2**20, stats
        heap.trim()
        print(before, rss_mb())
    """)
    assert done.returncode == 0, done.stderr
    before, after = map(float, done.stdout.split())
    assert before - after > 100, (before, after)  # MB handed back of the ~198 MB freed


def test_start_sets_the_environment_for_child_processes_and_trims_periodically(monkeypatch):
    done = _python("""
        import os, time
        from system import heap
        assert heap.start(3, 0.05)
        assert heap.start(5, 10.0)  # a second call keeps the first trimmer
        time.sleep(0.5)
        print(os.environ["MALLOC_ARENA_MAX"], heap._trimmer.every_s, heap._trimmer.trims,
              os.environ["MIMALLOC_PURGE_DELAY"])
    """)
    assert done.returncode == 0, done.stderr
    arenas, every_s, trims, purge = done.stdout.split()
    assert arenas == "5" and float(every_s) == 0.05 and int(trims) >= 3 and purge == "0"


def test_trimmer_stops_and_refuses_a_bad_interval():
    trimmer = heap.HeapTrimmer(0.01).start()
    time.sleep(0.1)
    trimmer.stop()
    trims = trimmer.trims
    time.sleep(0.05)
    assert trims >= 1 and trimmer.trims == trims
    with pytest.raises(ValueError, match=r"every_s=0: expected > 0"):
        heap.HeapTrimmer(0)
    assert not heap.limit_arenas(0)


ARROW_KEPT = """
    import ctypes, gc, threading
    import numpy as np, pyarrow as pa
    from system import heap
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    start, made, stay = rss_mb(), threading.Event(), threading.Event()
    def tables():  # about 100 MB of Arrow tables made and dropped by a thread that lives on (an actor's)
        for _ in range(3):
            table = pa.table({f"c{i}": np.random.rand(200_000) for i in range(20)})
            table = pa.concat_tables([table, table]).combine_chunks()
            del table
            gc.collect()
        made.set()
        stay.wait()
    t = threading.Thread(target=tables); t.start(); made.wait()
    heap.trim()
    print(rss_mb() - start)
    stay.set(); t.join()
"""


def test_arrow_hands_back_freed_pages_in_the_processes_a_run_starts():
    kept = _python(ARROW_KEPT)
    purged = _python(ARROW_KEPT, **{heap.ARROW_PURGE_ENV: "0"})  # what heap.start sets for them
    assert kept.returncode == 0 and purged.returncode == 0, kept.stderr + purged.stderr
    kept_mb, purged_mb = float(kept.stdout), float(purged.stdout)
    assert purged_mb < kept_mb - 30, (kept_mb, purged_mb)  # 54 against 120 MB here


ARROW_HUGE = """
    import os, re
    import numpy as np, pyarrow as pa
    parts = [pa.table({"x": np.arange(100_000) + i}) for i in range(20)]
    table = pa.concat_tables(parts).combine_chunks()  # one 16 MB buffer: mimalloc takes it from an arena
    smaps = open(f"/proc/{os.getpid()}/smaps").read()
    print(len(re.findall(r"^VmFlags:.* hg", smaps, re.MULTILINE)))  # mappings advised to use huge pages
"""


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage"), reason="no transparent huge pages")
def test_arrow_asks_for_no_huge_pages_in_the_processes_a_run_starts():
    """Its pool's arena advised to use huge pages by default; not with what heap.start sets (ARROW_HUGE_PAGES_ENV)."""
    default = _python(ARROW_HUGE)
    ours = _python(ARROW_HUGE, **heap.ARROW_ENV)
    assert default.returncode == 0 and ours.returncode == 0, default.stderr + ours.stderr
    assert (int(default.stdout), int(ours.stdout)) == (1, 0)


def test_the_cli_asks_arrow_to_hand_back_pages_before_it_loads_pyarrow():
    """The driver's own process: the environment is set before reading a config loads pyarrow; a user's value stays."""
    probe = """
        import os, sys
        from system import cli
        loaded_before = "pyarrow" in sys.modules
        code = cli.main(["plot", "no-such-run-dir"])
        print(os.environ.get("MIMALLOC_PURGE_DELAY"), os.environ.get("MIMALLOC_ARENA_EAGER_COMMIT"), loaded_before,
              code)
    """
    assert _python(probe).stdout.split() == ["0", "0", "False", "2"]
    assert _python(probe, MIMALLOC_PURGE_DELAY="100").stdout.split()[0] == "100"
