"""File helpers shared by the replay's on-disk parts (write-ahead log, snapshots, cold tier)."""

from __future__ import annotations

import os

__all__ = ["fsync_path"]


def fsync_path(path: str) -> None:
    """``os.fsync`` a file or a directory by path (a directory's entries: renames and new files in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
