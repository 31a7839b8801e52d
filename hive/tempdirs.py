"""A run's private temporary directories (generated ssh files, shared-connection sockets),
and the removal of those left behind by runs that were killed (`kill -9` never runs a
`finally`): each directory records its owner process, and the next run removes the
directories whose owner is gone.

A directory that will hold unix sockets (`for_sockets`) must leave room for their names: a
socket's path has at most 107 bytes (sun_path is 108, with its NUL), and a long `TMPDIR` (a
macOS one is about 49 characters) would leave too little. Such a directory is then made in
`$XDG_RUNTIME_DIR` (private to the user) or `/tmp` instead, the same way (mkdtemp: mode 0700,
a new name), and swept there the same way. So is one whose name holds white space, a quote, a
backslash, a `$` or a control character: its ssh_config goes to Nix as `NIX_SSHOPTS="-F FILE"`,
which Nix splits into words (a space there would make the rest of the name a word of ssh's)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hive import text as text_
from hive.errors import InputError

PREFIX = "nix-hive-"
SUN_PATH = 107  # bytes of a unix socket's path, at most
_RANDOM = 8  # characters mkdtemp adds to the prefix
# What NIX_SSHOPTS cannot carry in a file name: Nix splits it at white space (2.8) or as a shell
# would (later releases: quotes, backslashes).
_NOT_A_WORD = re.compile("[\\s\"'\\\\$`\x00-\x1f\x7f]")
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


def socket_base(kind: str, room: int) -> Path | None:
    """Where a directory for `kind` must be made so that paths of `room` more bytes in it
    fit a unix socket: None for the usual place (TMPDIR), else the first of
    $XDG_RUNTIME_DIR and /tmp that leaves room (an existing directory of ours, or /tmp).
    An InputError (nothing was started), saying why, when none does."""
    usual = tempfile.gettempdir()
    candidates = [usual, os.environ.get("XDG_RUNTIME_DIR", ""), "/tmp"]
    for n, base in enumerate(candidates):
        if not base or not os.path.isabs(base) or _NOT_A_WORD.search(base):
            continue
        if len(os.fsencode(base)) + len(f"/{PREFIX}{kind}-") + _RANDOM + room > SUN_PATH:
            continue
        if n == 0:
            return None
        try:
            info = os.stat(base, follow_symlinks=False)
        except OSError:
            continue
        if base != "/tmp" and (info.st_uid != os.getuid() or info.st_mode & 0o077):
            continue  # a runtime directory must be the user's own and private
        if os.access(base, os.W_OK | os.X_OK):
            return Path(base)
    if _NOT_A_WORD.search(usual):
        raise InputError(f"the temporary directory {text_.line(usual)} holds white space, a quote or a control "
                         "character, which NIX_SSHOPTS cannot carry, and neither $XDG_RUNTIME_DIR nor /tmp can be "
                         "used instead: set TMPDIR to another directory")
    raise InputError(f"the temporary directory {usual} ({len(os.fsencode(usual))} bytes) is too long for ssh's "
                     f"control sockets (a unix socket's path has at most {SUN_PATH} bytes), and neither "
                     "$XDG_RUNTIME_DIR nor /tmp can be used instead: set TMPDIR to a shorter directory")


def for_sockets(kind: str, room: int) -> Path:
    """A new private directory (as `make`) in which paths of `room` more bytes still fit a
    unix socket, whatever TMPDIR is (`socket_base`)."""
    return make(kind, socket_base(kind, room))
