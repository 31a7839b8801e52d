"""The only place where nix-hive starts a process (through `sh`).

Callers hand over an argv (every argument its own string: no shell, no globbing) and an
environment to add; they get the captured output or a `ProcessError` carrying stderr.

Three rules hold for every command started here:

* `run` starts each child in a session (and so a process group) of its own. A Ctrl-C at the
  terminal signals the terminal's foreground process group: that is nix-hive alone, which then
  decides what to do (finish the running steps, start no new ones), instead of every running
  `nix copy` and `ssh` dying half-way under it. `interactive` is the exception: it is the
  terminal's program, so it stays in the foreground group and gets the Ctrl-C itself.
* A child killed by a signal is reported as a `ProcessError` (`ProcessKilledError`), never as one of
  sh's own exceptions, which would fly past every `except HiveError`. Its exit code is the
  shell's convention, 128 + the signal number (SIGKILL: 137), and `Result.killed_by` names
  the signal where a caller passed `check=False`.
* Starting a command never runs other code of nix-hive's in the child. sh forks, and nix-hive
  runs threads (doit's `-j`), so the child starts as a copy of one thread while locks taken
  by the others stay taken in it for ever (Python 3.12+ warns of this: "This process is
  multi-threaded, use of fork() may lead to deadlocks in the child"). Between fork and exec,
  sh's child runs a fixed sequence (signals, setsid, dup2, closing fds, execve) that takes
  no lock another thread can hold: the interpreter resets its own (the GIL, the import lock)
  after a fork. The one way other code gets in is the garbage collector, which may run any
  finalizer (a file's flush, a lock's release) in the child. sh turns it off around its
  fork, but two starts at once race: one turns it back on while the other forks. So starts
  are serialised (`_forking`: a fork takes about a millisecond), and the warning is accepted
  by name.
* With `set_verbose(stream)` every command is printed as it starts, quoted for a POSIX shell
  (`$ NIX_SSHOPTS='-F cfg' nix copy --to ssh://portico /nix/store/...`), one whole line per
  command. What a command reads on stdin (`input`) is never printed: secrets travel there.

Two options serve commands whose output is a secret (`keyCommand`, hive/keys.py):

* `binary` keeps stdout as the bytes the command wrote (`Result.stdout_bytes`): no decoding,
  no replacement characters, and no cap. sh's own capture keeps the last 3 Mi *chunks*
  (lines, by default) of a command's output and drops the oldest silently; a binary capture
  goes to a buffer of its own, read 64 KiB at a time (50 MB: 0.2 s, against 1.8 s decoded).
* `lifeline` makes the command die with nix-hive however nix-hive ends, SIGKILL included,
  when no handler of ours gets to run (a SIGTERM kills Python outright, and the child,
  in a session of its own, would live on as an orphan). A small `sh` in the child's group
  reads a pipe whose only writer is this process: it sees end-of-file when this process
  closes it (the call returned or was abandoned) or dies, and then kills the whole group.
"""

from __future__ import annotations

import atexit
import io
import os
import queue
import resource
import select
import shlex
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import sh

from hive.errors import ProcessError, headline

# sh raises for any exit status not listed here, and for a death by one of its "bad" signals
# unless its negative number is listed: list them all, and decide here what each one means.
_ALL_STATUSES = [*range(-64, 0), *range(256)]

# Grace between asking an abandoned child to stop (SIGTERM) and insisting (SIGKILL).
_TERMINATE_GRACE = 5.0


@dataclass(frozen=True)
class Result:
    """What a finished command printed, and how it ended.

    `exit_code` is the command's exit status, or 128 + N when signal N killed it (the shell's
    `$?`), so that "non-zero means failed" holds either way; `killed_by` tells the two apart.
    """

    stdout: str
    stderr: str
    exit_code: int
    killed_by: signal.Signals | None = None
    stdout_bytes: bytes = b""  # with `binary`: stdout as written (`stdout` is then empty)


class ProcessKilledError(ProcessError):
    """A command died of a signal (nobody asked for it: a timeout is `ProcessTimeoutError`).

    `returncode` is 128 + the signal number; the message names the signal, which "exited 137"
    would leave the user to decode.
    """

    def __init__(self, argv: list[str], signum: signal.Signals, stderr: str) -> None:
        super().__init__(argv, 128 + signum, stderr)
        self.signal = signum
        self.args = (_message(argv, f"killed by {signum.name}", stderr),)


class ProcessTimeoutError(ProcessError):
    """A command outlived its `timeout` and was killed (with everything it started).

    `returncode` stays None, as before: the command did not get to choose an exit status.
    """

    def __init__(self, argv: list[str], timeout: float, stderr: str, *, silent: bool = False) -> None:
        super().__init__(argv, None, stderr)
        self.timeout = timeout
        self.silent = silent  # `idle_timeout`: it printed nothing for that long
        status = f"printed nothing for {timeout:g} s" if silent else f"timed out after {timeout:g} s"
        self.args = (_message(argv, status, stderr),)


def _message(argv: list[str], status: str, stderr: str) -> str:
    last = headline(stderr)
    return f"{argv[0]} {status}: {last}" if last else f"{argv[0]} {status}"


# --- verbose ------------------------------------------------------------------------------

_verbose: TextIO | None = None
_verbose_lock = threading.Lock()


def allow_open_files(wanted: int = 65536) -> int:
    """Raise this process's limit of open files to `wanted` (at most its hard limit), as a
    run over many hosts holds the pipes of a hundred commands or more at once (a copy: `nix`
    and its `ssh`, 3 pipes each) and the sockets of their shared connections, where a login
    session's default soft limit is often 1,024. The limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft


def set_verbose(stream: TextIO | None) -> None:
    """Print every command as it starts on `stream` (the CLI's `-v` passes sys.stderr); None
    turns it off. A module setting, not a parameter, so that no caller between the CLI and
    this module has to pass it along."""
    global _verbose
    with _verbose_lock:
        _verbose = stream


def command_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """`argv` as a POSIX shell would need it typed, preceded by the environment additions that
    differ from nix-hive's own environment (NIX_SSHOPTS, ...): what the user pastes to retry."""
    added = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()
             if os.environ.get(name) != value]
    return " ".join([*added, shlex.join(argv)])


def _announce(argv: Sequence[str], env: Mapping[str, str] | None) -> None:
    """One whole line per command, even from concurrent steps: one write, under a lock."""
    stream = _verbose
    if stream is None:
        return
    line = f"$ {command_line(argv, env)}\n"
    with _verbose_lock:
        stream.write(line)
        stream.flush()


# --- children that outlive their caller -----------------------------------------------------

_children: set[int] = set()  # process group ids of the `run` children still running
_children_lock = threading.Lock()


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a child's whole group (nix's own ssh children too); False when it is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def terminate_children() -> int:
    """Send SIGTERM to every command `run` still waits for, and return how many there were.

    Children live in sessions of their own, so nothing reaches them when nix-hive ends (no
    terminal Ctrl-C, no hang-up): a caller that gives up on running steps calls this, and it
    runs at interpreter exit."""
    with _children_lock:
        groups = list(_children)
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    return len(groups)


atexit.register(terminate_children)


def _abandon(pgid: int) -> None:
    """The caller stopped waiting (KeyboardInterrupt, SystemExit...): stop the child rather
    than leave it running unseen, first politely, then for good from a daemon thread."""
    if not _signal_group(pgid, signal.SIGTERM):
        return

    def _insist() -> None:
        if not threading.Event().wait(_TERMINATE_GRACE):
            _signal_group(pgid, signal.SIGKILL)

    threading.Thread(target=_insist, daemon=True, name=f"kill group {pgid}").start()


# --- running --------------------------------------------------------------------------------

def _signal_of(code: int) -> signal.Signals | None:
    """sh reports a death by signal N as exit code -N."""
    if code >= 0:
        return None
    try:
        return signal.Signals(-code)
    except ValueError:  # a real-time signal without a name of its own
        return None


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | bytes | queue.Queue[str | None] | None = None,
    check: bool = True,
    on_stderr: Callable[[str], None] | None = None,
    on_stdout: Callable[[str], None] | None = None,
    timeout: float | None = None,
    idle_timeout: float | None = None,
    binary: bool = False,
    lifeline: bool = False,
) -> Result:
    """Run `argv` in a session of its own, wait for it, and return its output.

    `env` is added to this process's environment (sh's `_env` replaces it, so merge here).
    `input` is written to its stdin (and never shown by `set_verbose`); a queue is written as
    it is filled, until a None in it closes stdin. `on_stderr` receives stderr line by line as
    it comes (progress), and stderr is still captured for the error message; `on_stdout`
    receives stdout so (a host that reports as it goes), and stdout is still returned. An
    `idle_timeout` kills the command's group when it printed no line for that long (a channel
    whose other end stopped answering), and raises `ProcessTimeoutError` (`silent`). With
    `check`, a non-zero exit raises `ProcessError` and a death by signal its subclass
    `ProcessKilledError`; without, both come back as a `Result` (see its `exit_code`).
    A `timeout` always raises `ProcessTimeoutError`, after killing the command's whole group.
    With `binary`, stdout comes back as bytes in `Result.stdout_bytes`. With `lifeline`, the
    command's group is killed (SIGKILL) as soon as this call returns or nix-hive ends, however
    it ends; the command reads /dev/null (`input` is not for it). See the module's docstring.
    """
    args = list(argv)
    _announce(args, env)
    err_lines: list[str] = []

    def _err(line: str) -> None:
        err_lines.append(line)
        if on_stderr is not None:
            on_stderr(line.rstrip("\n"))

    out = io.BytesIO() if binary else None
    out_lines: list[str] | None = None
    heard = [time.monotonic()]
    if on_stdout is not None or idle_timeout is not None:
        out_lines = []

        def _out(line: str) -> None:
            assert out_lines is not None
            out_lines.append(line)
            heard[0] = time.monotonic()
            if on_stdout is not None:
                on_stdout(line.rstrip("\n"))

        def _err_heard(line: str) -> None:
            heard[0] = time.monotonic()
            _err(line)
        err = _err_heard
    else:
        err = _err
    if lifeline:
        if input is not None:
            raise ValueError("a lifeline command reads /dev/null: it takes no input")
        _command(args)  # "not found" as for any command, not as the wrapper's
        lifeline_read, lifeline_write = os.pipe()  # both ends close on exec: none leaks to other children
        try:
            proc = _start(["sh", "-c", _LIFELINE, "nix-hive-lifeline", *args], env, lifeline_read, _err, timeout,
                          out=out, shown=args)
        except BaseException:
            os.close(lifeline_write)
            raise
        finally:
            os.close(lifeline_read)  # sh gave the child its own copy
        try:
            _wait(proc, args, timeout, err_lines)
        finally:
            os.close(lifeline_write)  # end-of-file for the watcher: it kills whatever is left of the group
    else:
        proc = _start(args, env, input, err, timeout, out=out, on_out=_out if out_lines is not None else None)
        if idle_timeout is not None:
            _wait_while_heard(proc, args, timeout, err_lines, idle_timeout, heard)
        else:
            _wait(proc, args, timeout, err_lines)
    code = int(proc.exit_code)
    killed_by = _signal_of(code)
    stderr = "".join(err_lines)
    if code < 0:
        code = 128 - code
    if out is not None:
        result = Result(stdout="", stderr=stderr, exit_code=code, killed_by=killed_by, stdout_bytes=out.getvalue())
    elif out_lines is not None:
        result = Result(stdout="".join(out_lines), stderr=stderr, exit_code=code, killed_by=killed_by)
    else:
        result = Result(stdout=str(proc), stderr=stderr, exit_code=code, killed_by=killed_by)
    if check and killed_by is not None:
        raise ProcessKilledError(args, killed_by, stderr)
    if check and code != 0:
        raise ProcessError(args, code, stderr)
    return result


_fork_lock = threading.Lock()
# Python 3.12+'s DeprecationWarning from os.fork() in a process with threads: accepted, as the
# child runs no code that can wait for another thread (see the module's docstring).
FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


@contextmanager
def _forking() -> Iterator[None]:
    """One fork at a time: sh turns the garbage collector off around each, and back on after
    it, so that the child, a copy of this thread alone, cannot run a finalizer that waits for
    a lock another thread held; concurrent starts would turn it on under each other's fork."""
    with _fork_lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", FORK_WARNING, DeprecationWarning)
        yield


# The lifeline's watcher (see the module's docstring), run as `sh -c _LIFELINE name ARGV...`
# with the pipe's read end as stdin. It moves that end to fd 3 and forks a watcher, deaf to
# the signals that `terminate_children` and `_abandon` send, which waits for end-of-file on
# it and then kills the group (itself included); then it becomes the command (exec: same pid,
# same exit status), with /dev/null as stdin and no fd 3. The watcher writes nowhere, so it
# holds no pipe of the command's output open.
_LIFELINE = """exec 3<&0 </dev/null
{ trap '' HUP INT TERM; read -r line <&3; kill -KILL 0; } >/dev/null 2>&1 &
exec "$@" 3<&-
"""

# Bytes written to a child's stdin per write(2): a pipe takes up to PIPE_BUF bytes whole or not
# at all, so a signal can never cut a write short (sh would drop the rest); sh's own 1 KiB
# slices made 50 MB take 5 s, these about 1.5 s.
_INPUT_CHUNK = select.PIPE_BUF


def _chunks(data: bytes) -> Generator[bytes, None, None]:
    """`data` in `_INPUT_CHUNK` slices, as sh takes a generator."""
    view = memoryview(data)
    for start in range(0, len(data), _INPUT_CHUNK):
        yield bytes(view[start:start + _INPUT_CHUNK])


def _command(args: list[str]) -> Any:
    """sh's command for `args[0]`; a `ProcessError` when it is not found."""
    try:
        return sh.Command(args[0])
    except sh.CommandNotFound as exc:
        raise ProcessError(args, None, f"{args[0]}: command not found") from exc


def _start(args: list[str], env: Mapping[str, str] | None, input: str | bytes | int | queue.Queue[str | None] | None,
           err: Callable[[str], None], timeout: float | None, *, out: io.BytesIO | None = None,
           on_out: Callable[[str], None] | None = None, shown: list[str] | None = None) -> Any:
    """Start `args` in the background, in a session of its own; sh's running command.
    `input` may be a file descriptor (the child's stdin) or a queue (see `run`); `out`
    receives stdout as bytes instead of sh's capture, `on_out` line by line; `shown` is the
    argv errors name (a wrapper's command's)."""
    full_env = {**os.environ, **env} if env else dict(os.environ)
    cmd = _command(args)
    stdin = _chunks(input) if isinstance(input, bytes) else input
    output: dict[str, Any] = {"_out": out, "_out_bufsize": 65536, "_no_out": True} if out is not None else {}
    if on_out is not None:
        output = {"_out": on_out}
    try:
        with _forking():
            return cmd(
                *args[1:],
                _env=full_env,
                _in=stdin,
                _tty_out=False,
                _err=err,
                _bg=True,
                _bg_exc=False,
                _new_session=True,
                _ok_code=_ALL_STATUSES,
                _timeout=timeout,
                _decode_errors="replace",
                **output,
            )
    except OSError as exc:
        raise ProcessError(shown or args, None, str(exc)) from exc


def _wait(proc: Any, args: list[str], timeout: float | None, err_lines: list[str]) -> None:
    """Wait for a started command; on a timeout or an interrupt, stop its whole group."""
    pgid = proc.pid  # a session leader's pid is its group's id
    with _children_lock:
        _children.add(pgid)
    try:
        proc.wait()
    except sh.TimeoutException as exc:
        # sh kills the command itself; whatever it started (nix's ssh) goes with its group.
        _signal_group(pgid, signal.SIGKILL)
        raise ProcessTimeoutError(args, timeout or 0.0, "".join(err_lines)) from exc
    except BaseException:
        _abandon(pgid)
        raise
    finally:
        with _children_lock:
            _children.discard(pgid)


def _wait_while_heard(proc: Any, args: list[str], timeout: float | None, err_lines: list[str], idle: float,
                      heard: list[float]) -> None:
    """`_wait`, and kill the command's group once it printed nothing for `idle` seconds
    (`heard[0]`: when it last did)."""
    ended = threading.Event()
    silent = threading.Event()

    def watch() -> None:
        while not ended.wait(min(1.0, idle / 4)):
            if time.monotonic() - heard[0] > idle:
                silent.set()
                _signal_group(proc.pid, signal.SIGKILL)
                return

    watcher = threading.Thread(target=watch, daemon=True, name=f"idle {proc.pid}")
    watcher.start()
    try:
        _wait(proc, args, timeout, err_lines)
    finally:
        ended.set()
    if silent.is_set():
        raise ProcessTimeoutError(args, idle, "".join(err_lines), silent=True)


def interactive(argv: Sequence[str]) -> int:
    """Run `argv` attached to this terminal (ssh, scp) and return its exit status (128 + N
    when signal N killed it).

    The command stays in the terminal's foreground process group: it is what the user talks
    to, so a Ctrl-C is for it (an interactive ssh passes it on to the remote shell). nix-hive
    itself ignores that Ctrl-C meanwhile, as system(3) does, and reports the command's end
    instead of a traceback. sh's `_fg` takes (almost) no other special argument: the
    environment is inherited."""
    args = list(argv)
    _announce(args, None)
    try:
        cmd = sh.Command(args[0])
    except sh.CommandNotFound as exc:
        raise ProcessError(args, None, f"{args[0]}: command not found") from exc
    with _sigint_deferred():
        try:
            cmd(*args[1:], _fg=True)  # None on success; any other status raises, with it
        except sh.ErrorReturnCode as exc:  # SignalException_* too, with exit_code -N
            code = int(exc.exit_code)
            return 128 - code if code < 0 else code
        except OSError as exc:
            raise ProcessError(args, None, str(exc)) from exc
    return 0


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ignore SIGINT in nix-hive while a foreground child runs; restore it after.

    A Python handler that does nothing, not SIG_IGN: exec resets handled signals to their
    default in the child, but keeps ignored ones ignored, and the child must stay
    interruptible. Only the main thread may set handlers; from another one this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _ignore)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGINT handler while the terminal belongs to a child: nothing to do."""
