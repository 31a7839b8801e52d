"""The local state file: doit's dependency file, written so that no run can lose or corrupt it.

doit's own backends keep everything in memory and rewrite the file in place at the end of a
run: a run killed half-way loses every step it finished, and a crash while writing leaves a
file doit refuses to read. `JournalDB` instead appends one line per finished task, in a
single write, the moment doit records the task's success (doit's last write for a task is its
`deps:` entry), and a line per failed task as doit forgets it. Loading replays the lines; a
torn last line (the process was killed inside the write) is ignored. At the end of a run the
journal is compacted into a fresh file renamed over the old one (atomic).

The state only spares work under `--no`: the real state of a deployment is the hosts' own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hive.errors import BusyError

FORMAT = "nix-hive-state/1"
COMMIT_KEY = "deps:"  # the last key doit's Dependency.save_success writes for a task


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Replay a state file into {task: {key: value}}; a missing file is an empty state."""
    data: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return data
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a write torn by a kill: that task was not recorded
        if not isinstance(entry, dict):
            continue
        if entry.get("reset"):
            data.clear()
        elif "task" in entry and entry.get("removed"):
            data.pop(entry["task"], None)
        elif "task" in entry and isinstance(entry.get("data"), dict):
            data[entry["task"]] = entry["data"]
    return data


class Lock:
    """One run's hold on a state file: a second run on the same state would otherwise lose
    the first one's records when either compacts the file."""

    def __init__(self, path: Path) -> None:
        lock = path.with_name(path.name + ".d") / "lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(lock, "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise BusyError(f"another nix-hive run is using {path}") from None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the state file for the duration of a `with` block."""
    lock = Lock(path)
    try:
        yield
    finally:
        lock.release()


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()


def write_compact(path: Path, data: dict[str, dict[str, Any]]) -> None:
    """Write `data` as a fresh state file, atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(_line({"format": FORMAT}))
        for task in sorted(data):
            fh.write(_line({"task": task, "data": data[task]}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class JournalDB:
    """A doit backend (`--backend hive`, registered as a `doit.BACKEND` entry point)."""

    desc = "nix-hive journal: every finished task is recorded at once"

    def __init__(self, name: str, codec: Any = None, *, module_name: str | None = None) -> None:
        self.name = name
        self.path = Path(name)
        self._lock = threading.Lock()
        self._db = load(self.path)
        self._pending: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            # Start each run from a compact file, so the journal never grows without bound.
            write_compact(self.path, self._db)
        self._fd: int | None = None

    def _append(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if fresh:
                os.write(self._fd, _line({"format": FORMAT}))
        os.write(self._fd, _line(entry))  # one write: a line is whole or torn, never mixed

    def set(self, task_id: str, dependency: str, value: Any) -> None:
        with self._lock:
            record = self._pending.setdefault(task_id, dict(self._db.get(task_id, {})))
            record[dependency] = value
            if dependency == COMMIT_KEY:
                self._db[task_id] = self._pending.pop(task_id)
                self._append({"task": task_id, "data": self._db[task_id]})

    def get(self, task_id: str, dependency: str) -> Any:
        with self._lock:
            if task_id in self._pending:
                return self._pending[task_id].get(dependency)
            return self._db.get(task_id, {}).get(dependency)

    def in_(self, task_id: str) -> bool:
        return task_id in self._db

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)
            if self._db.pop(task_id, None) is not None:
                self._append({"task": task_id, "removed": True})

    def remove_all(self) -> None:
        with self._lock:
            self._pending.clear()
            self._db.clear()
            self._append({"reset": True})

    def dump(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self.path.exists() or self._db:
                write_compact(self.path, self._db)
