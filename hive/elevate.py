"""Becoming root on a host: how (`--elevate sudo|run0|none`, `elevate` in the deployment) and
with what (`--ask-sudo-password`: a password asked once, on the terminal without echo, or
read from a private file when there is no terminal).

The password is held in memory only (`Password`, whose repr hides it) and reaches a host on
the standard input of the ssh calls that run commands as root, as the first line: the host's
side (hive/host/elevate.sh, put before each such script) reads it with a shell builtin, hands
it to `sudo -S -v` alone, once per call, and runs every command as `sudo -n`. So it is never
in an argv (of the deployer's processes or the host's), the environment, a file, `-v` output
(which never shows standard input), the report or the state file.
"""

from __future__ import annotations

import enum
import getpass
import os
import re
import secrets
import stat
import sys
import time
from dataclasses import replace
from pathlib import Path

from hive import text as text_
from hive.errors import InputError
from hive.model import Hive
from hive.resources import host_script


class Method(enum.Enum):
    """How a host's commands that need root get it, when the ssh user is not root."""

    SUDO = "sudo"  # sudo -n (a rule without password), or sudo -S with --ask-sudo-password
    RUN0 = "run0"  # systemd's run0: polkit must allow the user without asking (no terminal here)
    NONE = "none"  # the ssh user is root: nothing to become

    @classmethod
    def parse(cls, text: str, option: str = "--elevate") -> Method:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise InputError(f"{option} {text!r}: expected one of sudo, run0, none") from None


class Password:
    """The sudo password: shown nowhere (its repr and str say nothing of it)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def line(self) -> str:
        """What goes first on a root call's standard input."""
        return self._value + "\n"

    def __repr__(self) -> str:
        return "Password(***)"

    __str__ = __repr__

    def __reduce__(self) -> str:  # never pickled (a state file, a process pool)
        raise TypeError("a password is not serialised")


PASSWORD_BYTES = 4096  # the longest first line of a password file: no more of it is read


def read_file(name: str, option: str = "--sudo-password-file") -> Password:
    """The first line of a file only its owner may read (as ssh treats a private key): at most
    `PASSWORD_BYTES` of it are read, whatever the file holds after it (a 1 GB file is not
    read whole); a longer first line is refused."""
    path = Path(name)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{option} {name}: not a file")
        if st.st_mode & 0o077:
            raise InputError(f"{option} {name}: readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                             f"chmod 600 {name}")
        with path.open("rb") as fh:
            head = fh.read(PASSWORD_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{option} {name}: {exc.strerror}") from None
    first, newline, _ = head.partition(b"\n")
    if not newline and len(head) > PASSWORD_BYTES:
        raise InputError(f"{option} {name}: its first line is longer than {PASSWORD_BYTES} bytes: not a password")
    try:
        text = first.decode()
    except UnicodeDecodeError:
        raise InputError(f"{option} {name}: not text") from None
    return _checked(text.removesuffix("\r"), f"{option} {name}")


def ask(file: str | None, *, ask_flag: str = "--ask-sudo-password", option: str = "--sudo-password-file") -> Password:
    """The password: from `file` when one is named, else asked on the terminal (without echo).
    With neither, an `InputError` (exit 2), before anything ran."""
    if file is not None:
        return read_file(file, option)
    if not _terminal():
        raise InputError(f"{ask_flag}: there is no terminal to ask on: name a file only you can read "
                         f"with {option} FILE")
    try:
        text = getpass.getpass("sudo password: ")
    except (EOFError, KeyboardInterrupt):
        raise InputError(f"{ask_flag}: no password given") from None
    return _checked(text, "the sudo password")


def _terminal() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin.isatty()
    os.close(fd)
    return True


def _checked(text: str, what: str) -> Password:
    if not text:
        raise InputError(f"{what}: empty")
    if "\0" in text:
        raise InputError(f"{what}: holds a NUL character")
    return Password(text)


def apply(hive: Hive, method: str | None, password: bool, file: str | None, *, doit: bool = False) -> Hive:
    """The hive as this run elevates: `method` (`--elevate`) for every instance, over the
    deployment's `elevate`; with `password` (`--ask-sudo-password`, or a `file` named), the
    sudo password, asked now (after the deployment and options were checked, before anything
    runs) for every host. A password goes with sudo only: run0 asks polkit, which cannot read
    one from a pipe, and none has nothing to ask."""
    flag, ask_flag, file_flag = (("elevate=", "ask_sudo_password=1", "sudo_password_file=") if doit else
                                 ("--elevate", "--ask-sudo-password", "--sudo-password-file"))
    if method is not None:
        chosen = Method.parse(method, flag).value
        hive = replace(hive, instances={n: replace(i, elevate=chosen) for n, i in hive.instances.items()})
    if not password and file is None:
        return hive
    other = sorted(n for n, i in hive.instances.items() if i.elevate != Method.SUDO.value)
    if other:
        raise InputError(f"{ask_flag}: instance {other[0]} elevates with {hive.instances[other[0]].elevate}, "
                         "not sudo (only sudo takes a password)")
    return replace(hive, sudo_password=ask(file, ask_flag=ask_flag, option=file_flag))


def word(method: Method, password: Password | None) -> str:
    """elevate.sh's METHOD word."""
    return "sudo-password" if method is Method.SUDO and password is not None else method.value


def script(method: Method, password: Password | None, body: str) -> str:
    """`body` (a POSIX shell script calling `as_root`) behind elevate.sh and its call."""
    return f"{host_script('elevate.sh')}\nelevate {word(method, password)}\n{body}"


def call_id() -> str:
    """A new ID for a call's directory /run/nix-hive/ID (the shape `RULES` allow)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


REFUSALS = {90: "elevate none: the ssh user is not root", 91: "elevate run0: the host has no run0",
            93: "sudo keeps no credential between commands on this host (timestamp_timeout 0): allow "
                "nix-hive's commands without a password, or give its user a timestamp_timeout above 0",
            94: "no sudo password arrived"}


def refusal(code: int | None, stderr: str) -> str | None:
    """The one line that says why the host would not let nix-hive be root, from a root call's
    exit status and standard error (None: it was something else)."""
    if code == 92:
        if "incorrect password" in stderr or "Sorry, try again" in stderr:
            return "sudo refused the password (tried once, not again)"
        said = [ln for ln in stderr.splitlines() if ln.startswith("sudo:") or "may not run sudo" in ln]
        return f"sudo refused: {said[0].removeprefix('sudo: ')}" if said else "sudo refused to validate"
    if code in REFUSALS:
        return REFUSALS[code]
    if ("transient service unit" in stderr
            and ("Access denied" in stderr or "Interactive authentication required" in stderr)):
        return ("run0 was refused: polkit does not let the ssh user run commands as root without asking "
                "(no polkit here, or no rule for org.freedesktop.systemd1.manage-units)")
    if "sudo: a password is required" in stderr:
        return "sudo wants a password (--ask-sudo-password), or a rule without one for nix-hive's commands"
    return None


# What nix-hive runs as root for an activation (hive/host/control.sh), as sudoers rules: the
# command and a regular expression its arguments must match (sudo 1.9.10 and later), so a
# rule allows these argv shapes and nothing else (a sudoers `*` would match across spaces:
# `tee /run/nix-hive/x /etc/shadow /activate.sh`). The README shows them, tests/test_elevate.py
# deploys with them alone.
_WORD = r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}"  # an activation's or a call's ID
_BOOT_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # /proc/sys/kernel/random/boot_id
_ID = rf"/run/nix-hive/{_WORD}"
ACTIVATION_RULES: tuple[tuple[str, str], ...] = (
    ("mkdir", rf"^-p -m 755 /run/nix-hive {_ID}$"),
    ("tee", rf"^{_ID}/(activate[.]sh|reboot[.]sh|keys[.]sh|abort)$"),
    ("touch", rf"^{_ID}/confirm$"),
    ("cat", rf"^{_ID}/(state|log)$"),
    ("systemd-run", r"^--quiet --collect --no-ask-password --service-type=exec "
                    r"(--setenv=LOCALE_ARCHIVE=/nix/store/[^ ]+ )?--unit=nix-hive-activate-[0-9]{8}-[0-9]{6}-"
                    rf"[0-9a-f]{{8}} sh {_ID}/activate[.]sh [^ ]+( [^ ]+)*$"),
)


# `nix-hive rollback` (hive/host/rollback.sh): the profile's previous generation (or back to
# the current one when the switch failed), then its switch (a command given by its path: a
# sudoers `*` in a path stops at `/`).
ROLLBACK_RULES: tuple[tuple[str, str], ...] = (
    ("nix-env", r"^-p /nix/var/nix/profiles/system --switch-generation [0-9]+$"),
    ("/nix/store/*/bin/switch-to-configuration", r"^(switch|boot|test|dry-activate)$"),
)

# keys (hive/keys.py): the hashes of the destinations, the upload of a host's keys (`upload
# COUNT`, the keys on stdin), from keys.sh as reboot.sh runs (a destination with white space
# is more words).
KEYS_RULES: tuple[tuple[str, str], ...] = (
    ("sh", rf"^{_ID}/keys[.]sh (hashes|upload)( [^ ]+)+$"),
)


# `deploy --reboot`, `nix-hive reboot` (hive/reboot.py): reboot.sh's root calls, the script
# written by the `tee` above (`mkdir` makes its directory), then run from that file: a command
# with fixed argument shapes, where `sh -c SCRIPT` would need a root shell. `cancel` clears the
# one-shot entry of a reboot that did not happen (the host's boot id, a UUID, is unchanged).
REBOOT_RULES: tuple[tuple[str, str], ...] = (
    ("sh", rf"^{_ID}/reboot[.]sh (start {_WORD} (/nix/store/[^ ]+|-) [0-9]+ [A-Za-z0-9._@-]+|keep /nix/store/[^ ]+"
           rf"|cancel {_BOOT_ID}|fall-back)$"),
)
RULES = ACTIVATION_RULES + ROLLBACK_RULES + KEYS_RULES + REBOOT_RULES


# What a sudoers line can name as it is: a user (not ALL, a #uid, a %group or a +netgroup), a
# command's full path; a command's arguments escape sudoers' own `,:=\` (sudoers(5)).
_SUDOERS_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?\Z")
_SUDOERS_PATH = re.compile(r"/[A-Za-z0-9_./+-]+\Z")


def sudoers(user: str, where: dict[str, str], *, password: bool = True) -> str:
    """The sudoers lines allowing `user` nix-hive's commands (`RULES`) alone (`where`: command
    -> its full path on the host; a path stands for itself). A user or a path that sudoers
    would read as something else (`ALL`, a line break, a space, `#0`) is an `InputError`."""
    if not _SUDOERS_USER.match(user) or user == "ALL":
        raise InputError(f"sudoers: '{text_.line(user)}' is not a user name a rule can name as it is")
    for cmd, _ in RULES:
        path = where.get(cmd, cmd)
        ours = path == cmd and cmd.startswith("/")  # a rule's own path (`*` in it stops at '/')
        if not (ours or _SUDOERS_PATH.match(path)):
            raise InputError(f"sudoers: {cmd}: '{text_.line(path)}' is not a full path a rule can name as it is")
    tag = "" if password else "NOPASSWD: "
    escaped = ((cmd, "".join(f"\\{c}" if c in ",:=\\" else c for c in args)) for cmd, args in RULES)
    return "".join(f"{user} ALL=(root) {tag}{where.get(cmd, cmd)} {args}\n" for cmd, args in escaped)
