"""The only place where nix-hive starts a process (through `sh`).

Callers hand over an argv (every argument its own string: no shell, no globbing) and an
environment to add; they get the captured output or a `ProcessError` carrying stderr.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sh

from hive.errors import ProcessError


@dataclass(frozen=True)
class Result:
    """What a finished command printed."""

    stdout: str
    stderr: str
    exit_code: int


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    on_stderr: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> Result:
    """Run `argv`, wait for it, and return its output.

    `env` is added to this process's environment (sh's `_env` replaces it, so merge here).
    `on_stderr` receives stderr line by line as it comes (progress), and stderr is still
    captured for the error message.
    """
    args = list(argv)
    full_env = {**os.environ, **env} if env else dict(os.environ)
    err_lines: list[str] = []

    def _err(line: str) -> None:
        err_lines.append(line)
        if on_stderr is not None:
            on_stderr(line.rstrip("\n"))

    try:
        cmd = sh.Command(args[0])
    except sh.CommandNotFound as exc:
        raise ProcessError(args, None, f"{args[0]}: command not found") from exc
    try:
        proc = cmd(
            *args[1:],
            _env=full_env,
            _in=input,
            _tty_out=False,
            _err=_err,
            _return_cmd=True,
            _ok_code=list(range(256)),
            _timeout=timeout,
            _decode_errors="replace",
        )
    except sh.TimeoutException as exc:
        raise ProcessError(args, None, f"timed out after {timeout} s: {''.join(err_lines)}") from exc
    except OSError as exc:
        raise ProcessError(args, None, str(exc)) from exc
    code = int(proc.exit_code)
    result = Result(stdout=str(proc), stderr="".join(err_lines), exit_code=code)
    if check and code != 0:
        raise ProcessError(args, code, result.stderr)
    return result


def interactive(argv: Sequence[str]) -> int:
    """Run `argv` attached to this terminal (ssh, scp) and return its exit status.

    sh's `_fg` takes (almost) no other special argument: the environment is inherited and a
    non-zero exit arrives as ErrorReturnCode."""
    args = list(argv)
    try:
        sh.Command(args[0])(*args[1:], _fg=True)
    except sh.CommandNotFound as exc:
        raise ProcessError(args, None, f"{args[0]}: command not found") from exc
    except sh.ErrorReturnCode as exc:
        return int(exc.exit_code)
    return 0
