"""The one exception tree of nix-hive.

Every error a user can cause or meet derives from `HiveError`; the CLI prints its text as a
single `error: ...` line and exits with `exit_code`, re-raising only under `--debug`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any


class HiveError(Exception):
    """Root of every error nix-hive reports to its user."""

    exit_code = 1

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)


class InputError(HiveError):
    """Bad input (deployment file, pattern, option): nothing was started; exit status 2."""

    exit_code = 2


class DeploymentError(InputError):
    """The deployment file cannot be read, evaluated or validated.

    Its text names the file and, where one is known, the attribute at fault.
    """

    def __init__(self, file: str, message: str, attribute: str | None = None) -> None:
        self.file = file
        self.attribute = attribute
        self.message = message
        where = f"{file}: {attribute}" if attribute else file
        super().__init__(f"{where}: {message}")


class SelectionError(InputError):
    """A pattern matched no instance, system or tag."""


# What ssh says when it cannot reach a host (most telling first); Nix buries it under its own
# "cannot connect".
SSH_DIAGNOSTICS = (
    "Host key verification failed", "Permission denied",
    "Connection refused", "Connection timed out", "No route to host", "Could not resolve hostname",
    "Connection closed by", "kex_exchange_identification", "No ED25519 host key is known",
    "No RSA host key is known", "No ECDSA host key is known", "Too many authentication failures",
    "sudo: a password is required", "sudo: a terminal is required",
)


def headline(stderr: str) -> str:
    """One line that says why a command failed: Nix's first error (else the last line), and
    what ssh said, if it spoke."""
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.strip().startswith("(use '--show-trace'")]
    last = next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines else "")
    ssh = next((ln for d in SSH_DIAGNOSTICS for ln in lines if d in ln), None)  # in order of priority
    if ssh and ssh != last:
        return f"{last} ({ssh.strip('@ ')})" if last else ssh
    return last


class ProcessError(HiveError):
    """A nix or ssh command exited non-zero (or could not be started)."""

    def __init__(self, argv: list[str], exit_code: int | None, stderr: str) -> None:
        self.argv = argv
        self.returncode = exit_code
        self.stderr = stderr
        last = headline(stderr)
        status = "could not start" if exit_code is None else f"exited {exit_code}"
        super().__init__(f"{argv[0]} {status}: {last}" if last else f"{argv[0]} {status}")


class StepError(HiveError):
    """A step failed on a host: why (one line), the host's own output, and the seconds its
    phases took (check, confirm, rollback). `status` is how the summary shows it."""

    status = "failed"

    def __init__(self, message: str, *, log: str = "", seconds: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.seconds = dict(seconds or {})


class RolledBackError(StepError):
    """The host was put back on the system it ran before (activation failed or timed out, a
    health check failed, or no confirmation came)."""

    status = "rolled back"


class TimedOutError(StepError):
    """The activation did not end in time, and the host could not be rolled back."""

    status = "timed out"


class UnsafeStateError(InputError):
    """A state file, its directory or a file in it is a symbolic link or not a regular file:
    nix-hive would write through it, so nothing was started. (An InputError: exit status 2.)"""


class BusyError(InputError):
    """Another nix-hive run holds the state file: nothing was started."""


def attr_path(parts: Iterable[Any]) -> str:
    """`instances."www-1.example.com".system`, as Nix would write the attribute path."""
    out = []
    for part in parts:
        text = str(part)
        if isinstance(part, int):
            out.append(f"[{part}]")
            continue
        out.append(text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_'-]*", text) else json.dumps(text))
    return ".".join(out).replace(".[", "[")
