"""A run's private temporary directories (generated ssh files, shared-connection sockets),
and the removal of those left behind by runs that were killed (`kill -9` never runs a
`finally`): each directory records its owner process, and the next run removes the
directories whose owner is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "nix-hive-"
OWNER = ".owner"  # "PID START": START tells a live owner from a new process with a reused pid


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _owner_alive(directory: Path) -> bool:
    try:
        pid_text, start = (directory / OWNER).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return True  # not ours to judge (being created, or not written by nix-hive)
    return _start_time(pid) == start


def sweep(base: Path | None = None) -> list[Path]:
    """Remove the leftover directories of runs whose process is gone; the ones removed."""
    root = Path(base or tempfile.gettempdir())
    removed: list[Path] = []
    uid = os.getuid()
    for entry in root.glob(f"{PREFIX}*"):
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        if not _owner_alive(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make(kind: str, base: Path | None = None) -> Path:
    """A new private directory (mode 0700) owned by this process, after sweeping leftovers."""
    sweep(base)
    directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-", dir=base))
    fd = os.open(directory / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return directory


@contextlib.contextmanager
def private(kind: str) -> Iterator[Path]:
    """A private directory for the duration of a `with` block."""
    directory = make(kind)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
