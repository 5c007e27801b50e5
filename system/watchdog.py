"""The embedded Ray's watchdog: ends what Ray leaves behind when the driver dies
(``system.runtime.watch_embedded_ray``).

Usage (started by the driver, in a session of its own)::

    python -m system.watchdog DRIVER_PID:START GRACE_S PID:START ...

Waits until the driver process (a pid and its start time, so that a reused pid is not mistaken for it) has ended,
sleeps ``GRACE_S`` seconds, then SIGKILLs every listed process that is still the same process. Linux (/proc).
"""

from __future__ import annotations

import os
import signal
import sys
import time


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot, from /proc), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    """Every process below ``root``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def main(argv: list[str]) -> None:
    (driver, driver_start), grace = argv[0].split(":"), float(argv[1])
    while start_time(int(driver)) == driver_start:
        time.sleep(1.0)
    time.sleep(grace)
    for item in argv[2:]:
        pid, start = item.split(":")
        if start_time(int(pid)) == start:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
