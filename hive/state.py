"""The local state file: doit's dependency file, written so that no run can lose or corrupt it,
and read so that no file, however damaged, can stop a deployment.

doit's own backends keep everything in memory and rewrite the file in place at the end of a
run: a run killed half-way loses every step it finished, and a crash while writing leaves a
file doit refuses to read. `JournalDB` instead appends one line per finished task, in a
single write, the moment doit records the task's success (doit's last write for a task is its
`deps:` entry), and a line per failed task as doit forgets it. Loading replays the lines; a
torn last line (the process was killed inside the write) is ignored. At the end of a run the
journal is compacted into a fresh file renamed over the old one (atomic).

The state only spares work under `--no`: the real state of a deployment is the hosts' own. So
a damaged state file is never an error: `load` drops every line it cannot use (bytes that are
not UTF-8, JSON that is not one of the journal's entries, a task record holding a value doit
would trip over) and says so in one warning line; those steps simply run again, and the next
compaction writes the cleaned state. The one exception is a torn last line, dropped silently:
it is what a kill inside a write leaves, and that step did not finish anyway.

The files are nix-hive's own and private: the state file and everything in `<state>.d/` (the
lock, the compaction's temporary file) are created 0600 in a 0700 directory, opened without
following symbolic links, and a link (or a device, a FIFO) planted at one of those names is
refused with one `error:` line naming it, before anything starts; nothing is ever written
through it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from hive.errors import BusyError, HiveError, UnsafeStateError

FORMAT = "nix-hive-state/1"
COMMIT_KEY = "deps:"  # the last key doit's Dependency.save_success writes for a task
LOCK_NAME = "lock"  # in <state>.d/
COMPACT_NAME = "state.tmp"  # in <state>.d/: only the lock holder compacts, so one name is enough
# Keys of a task's record that are doit's own; every other key is a file dependency's state.
DOIT_KEYS = frozenset({"deps:", "checker:", "ignore:", "_values_:", "result:"})
MAX_DEPTH = 32  # nesting of a stored value: far more than doit or nix-hive ever store
# What the open flags add everywhere: never follow a link, never block on a FIFO, never leak
# the descriptor into the nix and ssh processes nix-hive starts.
SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Loaded(NamedTuple):
    """A state file replayed: the records, and how many lines were unusable (torn last line
    not counted)."""

    data: dict[str, dict[str, Any]]
    dropped: int


# Reading ----------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: it would be written back as Infinity, not JSON
        raise ValueError(f"{text} is out of range")
    return number


def _json(text: str) -> Any:
    """Strict JSON: no NaN or Infinity, whose written form Python's own reader is alone to
    accept; a line must read back exactly as it was written."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shallow(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests at most `limit` deep (checked without recursion): a deeper value
    could be read here and still overflow the stack when doit's thread writes it back."""
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth >= limit:
            return False
        todo.extend((child, depth + 1) for child in children)
    return True


def _file_state_ok(value: Any, checker: str | None) -> bool:
    """A file dependency's state as the record's checker stored it, in the shape doit's
    checker of that name unpacks (`timestamp, size, md5 = state`; `state[0]`). A record
    without a checker (or with an empty name: doit tests `if previous`) is read with the
    current checker, doit's default MD5Checker for nix-hive. A record of
    another checker is never read by the current one (doit forgets it, and `JournalDB.set`
    drops its file states), so any shallow value does."""
    if not checker or checker == "MD5Checker":
        return (isinstance(value, list) and len(value) == 3 and _number(value[0])
                and isinstance(value[1], int) and not isinstance(value[1], bool) and isinstance(value[2], str))
    if checker == "TimestampChecker":
        return _number(value)
    return _shallow(value)


def _values_ok(values: Any) -> bool:
    """`_values_:`: the task's saved values, a dict doit hands to `uptodate` callables, whose
    stock ones read `_config_changed` (config_changed: the digest, a string), `success-time`
    (timeout: subtracted from the time) and `<file>.st_mtime` and the like
    (check_timestamp_unchanged: compared with a file's time)."""
    if not isinstance(values, dict) or not _shallow(values):
        return False
    if values.get("_config_changed") is not None and not isinstance(values["_config_changed"], str):
        return False
    timed = [v for k, v in values.items() if k == "success-time" or k.endswith((".st_mtime", ".st_atime",
                                                                                ".st_ctime"))]
    return all(_number(v) for v in timed)


def valid_record(record: Any) -> bool:
    """Whether doit can use a task's record without raising, key by key as doit reads it:
    `deps:` a list of file names (`set(previous)`), `checker:` and `ignore:` strings,
    `result:` a md5 string or a dict (`result_dep` compares it), `_values_:` as
    `_values_ok` says, every other key a file's state as `_file_state_ok` says."""
    if not isinstance(record, dict):
        return False
    checker = record.get("checker:")
    if checker is not None and not isinstance(checker, str):
        return False
    deps = record.get("deps:")
    if deps is not None and not (isinstance(deps, list) and all(isinstance(d, str) for d in deps)):
        return False
    if record.get("ignore:") is not None and not isinstance(record["ignore:"], str):
        return False
    result = record.get("result:")
    if result is not None and not (isinstance(result, str) or (isinstance(result, dict) and _shallow(result))):
        return False
    if "_values_:" in record and record["_values_:"] is not None and not _values_ok(record["_values_:"]):
        return False
    return all(_file_state_ok(v, checker) for k, v in record.items() if k not in DOIT_KEYS)


def _entry(line: bytes) -> dict[str, Any] | None:
    """One journal line as an entry of one of the four kinds nix-hive writes; None if it is
    anything else."""
    try:
        entry = _json(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(entry, dict):
        return None
    keys = set(entry)
    if keys == {"format"} and isinstance(entry["format"], str):
        return entry
    if keys == {"reset"} and entry["reset"] is True:
        return entry
    if keys == {"task", "removed"} and isinstance(entry["task"], str) and entry["removed"] is True:
        return entry
    if keys == {"task", "data"} and isinstance(entry["task"], str) and valid_record(entry["data"]):
        return entry
    return None


def _refuse(path: Path | str, exc: OSError | None = None) -> UnsafeStateError:
    """The one-line error for a file nix-hive will not open (what is there, what to do)."""
    if exc is None or exc.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(path):
        what = "is a symbolic link" if os.path.islink(path) else "is not a regular file"
        return UnsafeStateError(f"{path} {what}: nix-hive writes its state only to its own files (remove it)")
    return UnsafeStateError(f"cannot open {path}: {exc.strerror}")


def _open_regular(path: Path | str, flags: int, mode: int = 0o600, dir_fd: int | None = None,
                  shown: Path | None = None) -> int:
    """os.open that refuses a link (O_NOFOLLOW), a directory, a FIFO or a device there."""
    where = shown or path
    try:
        fd = os.open(path, flags | SAFE, mode, dir_fd=dir_fd)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        raise _refuse(where, exc) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refuse(where)
    return fd


def read(path: Path) -> Loaded:
    """Replay a state file (a missing one is an empty state), dropping what cannot be used.
    Raises only UnsafeStateError (a link or special file there) or an OSError reading it."""
    data: dict[str, dict[str, Any]] = {}
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return Loaded(data, 0)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read()
    lines = raw.split(b"\n")
    dropped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue  # an empty line holds nothing to lose
        entry = _entry(line)
        if entry is None:
            if number < len(lines):  # the last piece has no newline: a write torn by a kill
                dropped += 1
            continue
        if "reset" in entry:
            data.clear()
        elif "removed" in entry:
            data.pop(entry["task"], None)
        elif "data" in entry:
            data[entry["task"]] = entry["data"]
    return Loaded(data, dropped)


def warning(path: Path, dropped: int) -> str:
    """The one line that reports dropped lines: which file, how many, and why it is no error."""
    lines = "line" if dropped == 1 else "lines"
    return (f"warning: {path}: {dropped} unreadable {lines} dropped "
            "(the state only spares work; those steps will run again)")


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Replay a state file into {task: {key: value}}, every record one doit can use; what
    was dropped is reported in one warning line on stderr."""
    loaded = read(path)
    if loaded.dropped:
        print(warning(path, loaded.dropped), file=sys.stderr, flush=True)
    return loaded.data


def recorded_results(path: Path, systems: Iterable[str]) -> dict[str, str]:
    """The build results the state file holds for `systems` (system -> store path), read
    without the lock; what cannot be read is absent (a hint, never relied on)."""
    try:
        data = read(path).data
    except (OSError, HiveError):
        return {}
    out: dict[str, str] = {}
    for system in systems:
        values = data.get(f"build:{system}", {}).get("_values_:")
        result = values.get("result") if isinstance(values, dict) else None
        if isinstance(result, str):
            out[system] = result
    return out


# The private directory and the lock ---------------------------------------------------------


def private_dir(path: Path) -> Path:
    """`<state>.d`: the lock, the compaction's temporary file (and the generated ssh files)."""
    return path.with_name(path.name + ".d")


def ensure_private_dir(path: Path) -> Path:
    """`<state>.d`, created 0700 if need be; a link there is refused (UnsafeStateError)."""
    os.close(_open_private_dir(path))
    return private_dir(path)


def _open_private_dir(path: Path) -> int:
    """A descriptor of `<state>.d`, made 0700 (and made so again if it is ours and more open:
    it holds ssh's control sockets too); a link there is refused, not followed. Files in it
    are opened relative to the descriptor, so a rename of the directory cannot redirect them."""
    directory = private_dir(path)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            what = "is a symbolic link" if directory.is_symlink() else "is not a directory"
            raise UnsafeStateError(f"{directory} {what}: nix-hive keeps its lock there (remove it)") from None
        raise UnsafeStateError(f"cannot open {directory}: {exc.strerror}") from None
    info = os.fstat(fd)
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.fchmod(fd, 0o700)
    return fd


def _check_name(dir_fd: int, name: str, shown: Path) -> None:
    """Refuse a link or a special file at `name` in the private directory (a regular file is
    fine: a compaction killed before its rename leaves one, removed by the next)."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(shown)


class Lock:
    """One run's hold on a state file: a second run on the same state would otherwise lose
    the first one's records when either compacts the file.

    Taking it is also where the state's files are checked, before anything starts: a link or
    special file at the state file, `<state>.d`, its lock or the compaction's temporary name
    is one `error:` line (UnsafeStateError, exit 2), as is a state file nix-hive cannot read.
    The lock file is opened without truncating and never written: a hard link there harms
    nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        directory = _open_private_dir(path)
        try:
            shown = private_dir(path) / LOCK_NAME
            try:
                self._fd = _open_regular(LOCK_NAME, os.O_RDONLY | os.O_CREAT, dir_fd=directory, shown=shown)
            except FileNotFoundError as exc:  # the directory went away meanwhile
                raise UnsafeStateError(f"cannot open {shown}: {exc.strerror}") from None
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.release()
                raise BusyError(f"another nix-hive run is using {path}") from None
            try:
                _check_name(directory, COMPACT_NAME, private_dir(path) / COMPACT_NAME)
                self._check_state_file()
            except BaseException:
                self.release()
                raise
        finally:
            os.close(directory)

    def _check_state_file(self) -> None:
        try:
            fd = _open_regular(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the state file for the duration of a `with` block."""
    lock = Lock(path)
    try:
        yield
    finally:
        lock.release()


# Writing ----------------------------------------------------------------------------------


def _line(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    """One write; a short one (disk full) is an error, not a line silently cut in two."""
    if os.write(fd, data) != len(data):
        raise OSError(errno.ENOSPC, "short write")


def write_compact(path: Path, data: dict[str, dict[str, Any]]) -> None:
    """Write `data` as a fresh state file, atomically: a private temporary file in
    `<state>.d` (created O_EXCL | O_NOFOLLOW, 0600), fsync, rename over the state file (which
    replaces a link there rather than writing through it)."""
    directory = _open_private_dir(path)
    shown = private_dir(path) / COMPACT_NAME
    try:
        _check_name(directory, COMPACT_NAME, shown)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(COMPACT_NAME, dir_fd=directory)  # a compaction's leftover (unlink follows no link)
        try:
            fd = _open_regular(COMPACT_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=directory, shown=shown)
        except FileExistsError:
            raise _refuse(shown) from None  # planted between the unlink and the open
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_line({"format": FORMAT}))
                for task in sorted(data):
                    fh.write(_line({"task": task, "data": data[task]}))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(COMPACT_NAME, path, src_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(COMPACT_NAME, dir_fd=directory)
            raise
    finally:
        os.close(directory)


def _open_journal(path: Path) -> int:
    """The state file, for appending: created 0600; a link, a special file or a file with
    other hard links (whose other names would see the appends) is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    info = os.fstat(fd)
    if info.st_nlink != 1:
        os.close(fd)
        raise UnsafeStateError(f"{path} has other hard links: nix-hive writes its state only to its own files")
    if info.st_size == 0:
        _write_all(fd, _line({"format": FORMAT}))
    return fd


class JournalDB:
    """A doit backend (`--backend hive`, registered as a `doit.BACKEND` entry point).

    It never raises on the state file: a damaged one is cleaned as it loads (see `load`);
    one it cannot write (the disk is full, a link was planted there since `Lock` checked) is
    reported in one warning line and left as it is, the run going on without recording more.
    An exception here would surface as a doit traceback in the middle of a deployment, for a
    file that only spares work."""

    desc = "nix-hive journal: every finished task is recorded at once"

    def __init__(self, name: str, codec: Any = None, *, module_name: str | None = None) -> None:
        self.name = name
        self.path = Path(name)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        self._broken = False  # writing failed once: this run writes the state no more
        try:
            self._db = load(self.path)
        except (HiveError, OSError) as exc:
            self._db = {}
            self._give_up(exc)
            return
        if os.path.lexists(self.path):
            # Start each run from a compact file, so the journal never grows without bound
            # (and the lines load dropped are gone for good).
            self._compact()

    def _give_up(self, exc: HiveError | OSError) -> None:
        if not self._broken:
            self._broken = True
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"warning: {self.path}: cannot update the state file ({reason}); "
                  "the steps it does not record will run again", file=sys.stderr, flush=True)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _compact(self) -> None:
        try:
            write_compact(self.path, self._db)
        except (HiveError, OSError) as exc:
            self._give_up(exc)

    def _append(self, entry: dict[str, Any]) -> None:
        if self._broken:
            return
        try:
            if self._fd is None:
                self._fd = _open_journal(self.path)
            _write_all(self._fd, _line(entry))  # one write: a line is whole or torn, never mixed
        except (HiveError, OSError) as exc:
            self._give_up(exc)

    def set(self, task_id: str, dependency: str, value: Any) -> None:
        with self._lock:
            record = self._pending.setdefault(task_id, dict(self._db.get(task_id, {})))
            previous = record.get("checker:")
            if dependency == "checker:" and isinstance(previous, str) and previous != value:
                # Saved by another checker: doit's next read of a file's state (in
                # MD5Checker.get_state, say) must not meet a state of another shape.
                for key in [k for k in record if k not in DOIT_KEYS]:
                    del record[key]
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
            if not self._broken and (os.path.lexists(self.path) or self._db):
                self._compact()
