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


def _error_index(lines: list[str]) -> int | None:
    """Where Nix's message is among `lines` (stripped, none blank): its first `error: …` line,
    as Nix 2.8 prints it (the message first, then the `… while` frames, innermost first);
    when that line is a bare `error:` (Nix 2.10 on: the frames come first, outermost first,
    and the message last, as a nested `error: …`), the last `error: …` line."""
    errors = [n for n, ln in enumerate(lines) if ln.startswith("error:")]
    if not errors:
        return None
    if lines[errors[0]] != "error:":
        return errors[0]
    told = [n for n in errors if lines[n] != "error:"]
    return told[-1] if told else errors[0]


_AT = re.compile(r"at (/\S+:\d+:\d+):?$")


def nix_error(stderr: str, *, skip: str = "") -> tuple[str, str | None]:
    """Nix's error message and the place in the user's files it points at (`FILE:LINE:COL`),
    from any Nix version's report. The place is the location printed with the message, else
    the one nearest to it in the trace (2.8: the first after it; later: the last before),
    skipping files under `skip` (nix-hive's own)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    index = _error_index(lines)
    if index is None:
        return (lines[-1] if lines else ""), None
    message = lines[index].removeprefix("error:").strip()
    places = [(n, m.group(1)) for n, ln in enumerate(lines) if (m := _AT.match(ln))]
    mine = [(n, where) for n, where in places if not (skip and where.startswith(skip))]
    after = [where for n, where in mine if n > index]
    before = [where for n, where in mine if n < index]
    return message, (after[0] if after else before[-1] if before else None)


def headline(stderr: str) -> str:
    """One line that says why a command failed: Nix's error (else the last line), and what ssh
    said, if it spoke."""
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.strip().startswith("(use '--show-trace'")]
    index = _error_index(lines)
    last = lines[index] if index is not None else lines[-1] if lines else ""
    if index is not None and lines[index + 1:index + 2] and lines[index + 1].startswith("Reason:"):
        last += " " + lines[index + 1]  # Nix 2.29 on: "error: Cannot build '….drv'." / "Reason: …"
    ssh = next((ln for d in SSH_DIAGNOSTICS for ln in lines if d in ln), None)  # in order of priority
    if ssh and ssh != last:
        return f"{last} ({ssh.strip('@ ')})" if last else ssh
    return last


_UNDOWNLOADED = re.compile(r"Nix search path entry '([^']+)' cannot be downloaded")
_DOWNLOAD = re.compile(r"unable to download '([^']+)': (.+?)(?:; retrying in \d+ ms.*)?$", re.M)  # 2.34: (attempt N/M)


def undownloaded(stderr: str) -> tuple[str, str] | None:
    """A search path entry (`paths.nixpkgs = "https://…"`) Nix could not download, and why
    (its last try's error), from any Nix version's output; None if there was none."""
    entry = _UNDOWNLOADED.search(stderr)
    if entry is None:
        return None
    why = [m.group(2).strip() for m in _DOWNLOAD.finditer(stderr) if m.group(1) == entry.group(1)]
    return entry.group(1), why[-1] if why else "cannot be downloaded"


_OFFERED = re.compile(r"The fingerprint for the (\S+) key sent by the remote host is\s+(\S+?)\.?$", re.M)


# What ssh says when nothing answered within ConnectTimeout although a connection was made:
# the host's TCP answered but its sshd did not, or (far more often) the host is behind a jump
# host, whose channel to it never opened (down, cut off, wrong address): no more is known.
_NO_BANNER = "Connection timed out during banner exchange"
NO_ANSWER = "did not answer ssh within"  # how ssh_reason words it


def ssh_reason(stderr: str, pinned: str | None = None, connect_timeout: float | None = None) -> str:
    """Why ssh could not reach a host, in one line: what it said that tells most (its warning
    banners and advice left out), else its last line. A host key that is not the expected one
    says which key the host offered, and `pinned`, the attribute that holds the expected one
    (`instances.www-1.hostKey`), if the deployment pins it. A connection nothing answered says
    so, with the `connect_timeout` that expired (ssh's words name a banner exchange, which a
    host behind a jump host that is down never reached)."""
    stderr = stderr.replace("\r\n", "\n")  # ssh ends these lines with \r\n
    offered = _OFFERED.search(stderr)
    if offered is not None and "Host key verification failed" in stderr:
        key = f"{offered.group(1)} {offered.group(2)}"
        if pinned is not None:
            return f"its host key is not {pinned} (it offered {key})"
        return f"its host key is not the one your known_hosts has for it (it offered {key})"
    lines = [ln.strip().strip("@ ").strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    told = next((ln for d in SSH_DIAGNOSTICS for ln in lines if d in ln), None)
    if told is not None and _NO_BANNER in told:
        return f"it {NO_ANSWER} " + (f"{connect_timeout:g} s" if connect_timeout is not None else "ConnectTimeout")
    return told or (lines[-1] if lines else "ssh failed and said nothing")


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
