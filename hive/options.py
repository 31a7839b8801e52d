"""What the user asked for beyond the selection, parsed the same way for both doors: the
`nix-hive` options and the `doit` variables. Every bad value is an `InputError` naming the
option (exit 2, nothing started)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hive.errors import InputError
from hive.model import Goal, Hive, Step
from hive.resources import schema_file


@dataclass(frozen=True)
class Options:
    """A run's options."""

    skip: frozenset[Step] = frozenset()
    state_file: Path | None = None  # default: .hive.state beside the deployment file
    jobs: int = 10
    push_jobs: int | None = None  # copies at once from each source (hive/lanes.py); None: its default
    goal: Goal = Goal.SWITCH
    keep_going: bool = False
    max_failures: int | None = None  # absolute number, computed from N or N%
    rollback: bool = True  # automatic and magic rollback (--no-rollback)
    activation_timeout: int | None = None  # seconds; overrides the deployment's (--activation-timeout)
    confirm_timeout: int | None = None  # seconds; overrides the deployment's (--confirm-timeout)
    eval_jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  # systems evaluated at once
    # Deadlines (see DEADLINES): a copy may take copy_timeout seconds plus its closure's size
    # at copy_rate Mbit/s; None: ssh's ConnectTimeout as the deployment says (else 10 s).
    copy_timeout: int = 60
    copy_rate: float = 8.0
    connect_timeout: int | None = None
    stop_timeout: int = 60  # after SIGTERM: how long the running steps are followed
    reboot: str | None = None  # deploy --reboot: "always", or "auto" (only hosts whose kernel changed)
    reboot_timeout: int | None = None  # seconds; overrides the deployment's rebootTimeout (--reboot-timeout)
    skip_unreachable: bool = False  # an instance that does not answer first is skipped, not a failure
    rollback_on_failure: bool = False  # a failed run puts the hosts it switched back (all or nothing)
    ignore_inhibitors: bool = False  # switch even when a switch inhibitor changed (NIXOS_NO_CHECK=1)

    def copy_deadline(self, size: int | None) -> float:
        """Seconds a copy of a closure of `size` bytes may take: `copy_timeout` (connecting,
        asking what the destination holds) plus the whole closure at `copy_rate` (None: a
        size nobody could tell, `copy_timeout` alone)."""
        return self.copy_timeout + (size or 0) * 8 / (self.copy_rate * 1e6)

    def explain_copy_deadline(self, size: int | None) -> str:
        """How `copy_deadline(size)` came about, as the report says it."""
        if size is None:
            return f"{self.copy_deadline(size):.0f} s (--copy-timeout; the closure's size was unknown)"
        return (f"{self.copy_deadline(size):.0f} s (--copy-timeout {self.copy_timeout} s + {size / 1e6:.2f} MB "
                f"at --copy-rate {self.copy_rate:g} Mbit/s)")


# The deadlines of steps that talk to other machines, both doors: (field, option, doit
# variable, what it is, metavar). Parsed by `deadlines`.
DEADLINES: tuple[tuple[str, str, str, str, str], ...] = (
    ("copy_timeout", "--copy-timeout", "copy_timeout=",
     "a copy's deadline: this many seconds plus its closure at --copy-rate (default: 60)", "SECONDS"),
    ("copy_rate", "--copy-rate", "copy_rate=",
     "the slowest a copy may move its closure, in Mbit/s (default: 8)", "MBIT"),
    ("connect_timeout", "--connect-timeout", "connect_timeout=",
     "ssh's ConnectTimeout (a new connection's TCP, banner and key exchange) for every host whose "
     "deployment sets none (default: 10)", "SECONDS"),
    ("stop_timeout", "--stop-timeout", "stop_timeout=",
     "after SIGTERM, follow the running steps this long before stopping them (default: 60)", "SECONDS"),
)


def default_state_file(hive: Hive) -> Path:
    """`.hive.state` beside the deployment file. A flake's goes to the user's state directory
    instead (`$XDG_STATE_HOME/nix-hive/<flake>-<hash>.state`): Nix copies every file of a path
    flake into the store, so a state file inside it would change the flake at every run."""
    if hive.flake is None:
        return hive.directory / ".hive.state"
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "nix-hive"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = hashlib.sha256(f"{hive.flake}#{hive.attr}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", hive.flake.rstrip("/").rsplit("/", 1)[-1]) or "flake"
    return base / f"{name}-{key}.state"


def overrides(values: Iterable[str] | None, option: str = "-I") -> dict[str, str]:
    """`-I NAME=PATH`, as often as given."""
    out: dict[str, str] = {}
    for item in values or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{option} {item!r}: expected NAME=PATH")
        out[name] = value
    return out


def max_failures(text: str | None, total: int, option: str = "--max-failures") -> int | None:
    """`N` (more than N failed instances stop new work) or `N%` of the selected instances."""
    if text is None:
        return None
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return int(total * pct / 100)
        value = int(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise InputError(f"{option} {text!r}: expected a number N or a percentage N%") from None


def positive(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{option} {text!r}: expected a whole number of at least 1")
    return value


def rate(text: str, option: str) -> float:
    """A number above 0 (a rate: `--copy-rate 0.5`)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise InputError(f"{option} {text!r}: expected a number above 0")
    return value


def deadlines(values: Mapping[str, Any], *, doit: bool = False) -> dict[str, Any]:
    """The deadline options among `values` (argparse's namespace as a dict, or the doit
    variables), parsed, as keywords of `Options`; those not given keep its defaults. A bad
    value is an `InputError` naming the option as its door spells it."""
    out: dict[str, Any] = {}
    for name, flag_, variable, _, _ in DEADLINES:
        text = values.get(name)
        if text is None:
            continue
        option = variable if doit else flag_
        out[name] = rate(str(text), option) if name == "copy_rate" else positive(str(text), option)
    return out


def add_deadline_arguments(parser: argparse.ArgumentParser, *, only: str | None = None) -> None:
    """`--copy-timeout`, `--copy-rate`, `--connect-timeout`, `--stop-timeout` (see DEADLINES);
    `only`: that one (`connect_timeout`, for the commands that log in to hosts and copy nothing)."""
    for name, flag_, _, helptext, metavar in DEADLINES:
        if only is None or name == only:
            parser.add_argument(flag_, dest=name, metavar=metavar, help=helptext)


def goal(text: str, option: str = "--goal") -> Goal:
    try:
        return Goal(text)
    except ValueError:
        names = ", ".join(g.value for g in Goal)
        raise InputError(f"{option} {text!r}: expected one of {names}") from None


REBOOT_MODES = ("always", "auto")


def reboot_mode(text: str | None, option: str = "--reboot") -> str | None:
    """`--reboot` ("always"), `--reboot=auto`, or none (None; the doit door's "0", "no", "")."""
    if text is None or text.strip().lower() in ("", "0", "no", "false", "off"):
        return None
    low = text.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return "always"
    if low not in REBOOT_MODES:
        raise InputError(f"{option} {text!r}: expected --reboot, --reboot=always or --reboot=auto")
    return low


def flag(text: str, option: str) -> bool:
    """A doit variable meaning yes or no."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise InputError(f"{option}={text!r}: expected 1 or 0 (true or false)")


def writable(path: Path) -> bool:
    """Whether a file can be written at `path` (checked before any work starts): its directory
    takes new files, and the file, if there, can be written."""
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)


def state_file(given: str | None, hive: Hive, option: str = "--state FILE") -> Path:
    path = Path(given).resolve() if given else default_state_file(hive)
    if path.is_dir():
        raise InputError(f"state file {path} is a directory ({option})")
    if not writable(path):
        raise InputError(f"cannot write the state file {path} (choose another with {option})")
    return path


def build_host(text: str | None, option: str = "--build-host") -> str | None:
    """The host that builds every system: an ssh host name (never an option to ssh), by the
    schema's own rule for `buildHost`."""
    if text is None or text == "":
        return None
    pattern = json.loads(schema_file().read_text())["$defs"]["buildHost"]["pattern"]
    if not re.match(pattern, text):
        raise InputError(f"{option} {text!r}: expected an ssh host name (an instance or a host of your ssh "
                         "configuration)")
    return text
