"""Uploading keys (secrets) to hosts, never through the Nix store.

A key's content is read on the deployer at upload time (its file, its text, or its command's
output), kept in memory for the run, and sent over ssh standard input only: never in an argv,
never in a temporary file on the deployer, never in the state file, a report or a message.
On the host, as root (hive/host/keys.sh, run from a file: no root shell), a file is created in
a private directory of root's inside the destination's directory, given its final owner and
mode, and only then filled; it is renamed over the destination, so no reader ever sees a
partial or a too readable key. Nothing is written through a symbolic link or into a directory
a user other than root could change (issue 27): such a destination fails its key, saying
which directory. Whether a host's key is up to date is asked of the host (a SHA-256 of each
destination, one call), not recorded here.

All the keys of one upload to a host (an instance's keys step, its post-activation keys, its
keys after a reboot, `upload-keys`) travel together, in one ssh call (issue 29: 200 keys had
been 200 round trips, each with its own elevation and its own copy of keys.sh): a line per
key (its SHA-256, length, mode, user, group and destination), then the contents back to back.
The keys of a host stand or fall each on its own: a key that fails (its user missing, its
directory refused, its content altered on the way, or its content unreadable here) is not
installed, the others are, each atomically as above, and then the step fails naming every
key that failed (the first few with why, the others by name): a careful operator wants the
good keys in place and the whole list of bad ones, not a host left with whichever keys came
before the first bad one. A call that fails as a whole (the host unreachable, root refused)
fails all the keys it carried; keys already installed stay installed.

Content is bytes from source to host, never text: a keyCommand's output is taken as written
(decoding it turned invalid UTF-8 into replacement characters: 10 bytes arrived as 16, 50 MB
of random bytes as 90 MB). Its SHA-256 and length go first on the same standard input, and the
host installs the file only if what arrived has that SHA-256: a truncated or altered stream
(a connection cut, nix-hive killed half-way) fails the key instead of installing it. (The
hash travels on stdin, not in the remote command line, where other users of the host could
read it and try passwords against it.)

A keyCommand runs under a deadline (keyCommandTimeout, 60 s by default) and on a lifeline
(hive/process.py): it and whatever it started are killed when the deadline passes, when the
call is abandoned, and when nix-hive ends in any way (Ctrl-C, SIGTERM, even SIGKILL). A key
is read once per run, success or failure: the hosts that share a key that hangs wait for
one deadline, not one each, and other keys are read meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hive import elevate, process
from hive.errors import HiveError, ProcessError, StepError, headline
from hive.model import Hive, Key
from hive.remote import Remote
from hive.resources import host_script

# What runs as root for keys (hive/host/keys.sh): `hashes DEST...` and `upload COUNT`, a host's
# keys on stdin (`upload_stream`), those it did not install on stdout (`parse_failures`). It
# writes nothing through a symbolic link, nor into a directory another user could change (67,
# one line saying why).
KEYS_SH = host_script("keys.sh")
# As the ssh user, behind elevate.sh (`Remote.root_script`): keys.sh goes to /run/nix-hive/ID/
# (a here-document: the call's standard input stays the keys') and runs as `as_root sh FILE
# CALL ARGS`, a fixed argv shape a sudoers rule allows (hive/elevate.py), never `sh -c` as root.
# keys.sh removes itself (it runs from its open file).
KEYS_CALL = f"""d=/run/nix-hive/$1
shift
as_root mkdir -p -m 755 /run/nix-hive "$d"
as_root tee "$d/keys.sh" > /dev/null << 'NIX_HIVE_KEYS_SH'
{KEYS_SH.strip()}
NIX_HIVE_KEYS_SH
as_root sh "$d/keys.sh" "$@"
"""


def keys_argv(remote: Remote, call: str, *args: str) -> list[str]:
    """The ssh call running `keys.sh CALL ARGS` as root on `remote` (see `KEYS_CALL`); its
    standard input is `remote.root_input(…)`'s."""
    return remote.shell_argv(remote.root_script(KEYS_CALL), args=[elevate.call_id(), call, *args])


MISSING = (64, 65)  # a user or group the host lacks
ALTERED = 66  # the content (or, for the whole call, the key lines) arrived altered
REFUSED = 67  # a destination keys.sh will not write through
SOME_FAILED = 68  # keys.sh upload: some keys were not installed (each told on stdout)


@dataclass(frozen=True)
class Uploaded:
    """What one host got: the keys sent, and those already there with the same content."""

    sent: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def note(self) -> str:
        parts = [f"{len(self.sent)} key(s) uploaded"] if self.sent else []
        if self.unchanged:
            parts.append(f"{len(self.unchanged)} unchanged")
        return f"({', '.join(parts)})" if parts else ""


class Keys:
    """A run's keys: contents read once, uploaded to hosts."""

    def __init__(self, hive: Hive) -> None:
        self.hive = hive
        self._lock = threading.Lock()  # guards the dictionaries; each key is read under its own lock
        self._reading: dict[str, threading.Lock] = {}
        self._content: dict[str, bytes] = {}
        self._failed: dict[str, str] = {}  # key name -> why it could not be read (once per run)

    def of(self, instance: str, *, post: bool | None = None) -> list[Key]:
        """The instance's keys (only the pre- or post-activation ones, when `post` says)."""
        keys = [self.hive.keys[n] for n in self.hive.instances[instance].keys]
        return [k for k in keys if post is None or k.post_activation == post]

    def content(self, key: Key) -> bytes:
        """The key's content, read on first use. A failure is kept too: every host that has the
        key fails with the same reason, without running a hung command again."""
        with self._lock:
            reading = self._reading.setdefault(key.name, threading.Lock())
        with reading:
            if key.name in self._failed:
                raise StepError(self._failed[key.name])
            if key.name not in self._content:
                try:
                    self._content[key.name] = self._read(key)
                except StepError as exc:
                    self._failed[key.name] = str(exc)
                    raise
            return self._content[key.name]

    def _read(self, key: Key) -> bytes:
        try:
            if key.key_file is not None:
                return key.key_file.read_bytes()
            if key.command:
                out = process.run(key.command, binary=True, lifeline=True, timeout=key.command_timeout)
                return out.stdout_bytes
            return (key.text or "").encode()
        except process.ProcessTimeoutError:
            raise StepError(f"key {key.name}: keyCommand did not finish within {key.command_timeout} s "
                            f"(keys.{key.name}.keyCommandTimeout)") from None
        except ProcessError as exc:
            raise StepError(f"key {key.name}: its keyCommand failed ({exc})") from None
        except OSError as exc:
            raise StepError(f"key {key.name}: cannot read {key.key_file}: {exc.strerror}") from None

    def on_host(self, remote: Remote, keys: Sequence[Key]) -> dict[str, str]:
        """Destination -> SHA-256 of the file there (missing files are absent)."""
        out = process.run(keys_argv(remote, "hashes", *(k.destination for k in keys)), input=remote.root_input())
        found: dict[str, str] = {}
        for line in out.stdout.splitlines():
            digest, _, path = line.partition("  ")
            found[path] = digest
        return found

    def upload(self, remote: Remote, keys: Sequence[Key], *, only_changed: bool) -> Uploaded:
        """Send `keys` to the host, all in one ssh call; with `only_changed`, those whose
        content differs there. A key that fails (unreadable here, refused or altered there)
        leaves the others be; then a `StepError` names every key that failed."""
        if not keys:
            return Uploaded()
        contents: dict[str, bytes] = {}
        failed: list[Failure] = []
        for key in keys:
            try:
                contents[key.name] = self.content(key)
            except StepError as exc:
                failed.append(((key.name,), str(exc)))
        readable = [k for k in keys if k.name in contents]
        there = self.on_host(remote, readable) if only_changed and readable else {}
        same = [k for k in readable if there.get(k.destination) == hashlib.sha256(contents[k.name]).hexdigest()]
        unchanged = {k.name for k in same}
        sending = [k for k in readable if k.name not in unchanged]
        log = self._send(remote, [(k, contents[k.name]) for k in sending], failed) if sending else ""
        if failed:
            raise StepError(failures(failed), log=log)
        return Uploaded(tuple(k.name for k in sending), tuple(k.name for k in same))

    def _send(self, remote: Remote, keys: Sequence[tuple[Key, bytes]], failed: list[Failure]) -> str:
        """Install `keys` on the host in one call (`keys.sh upload COUNT`, `upload_stream` on
        its standard input); add each key it did not install to `failed`, with why (all of
        them at once when the call failed as a whole). Returns what the host said on stderr."""
        argv = keys_argv(remote, "upload", str(len(keys)))
        try:
            result = process.run(argv, input=remote.root_input(upload_stream(keys)), check=False)
        except HiveError as exc:
            failed.append((tuple(k.name for k, _ in keys), f"{named(keys)} on {remote.name}: {exc}"))
            return ""
        reported = parse_failures(result.stdout, len(keys)) if result.exit_code == SOME_FAILED else {}
        for index, (code, why) in sorted(reported.items()):
            key = keys[index][0]
            missing = code in MISSING and not key.post_activation
            hint = (f"; if the new system creates it, upload the key after the switch: "
                    f"keys.{key.name}.uploadAt = \"post-activation\"") if missing else ""
            failed.append(((key.name,), f"key {key.name} on {remote.name}: {why}{hint}"))
        if result.exit_code != 0 and not reported:  # the call failed as a whole
            said = headline(result.stderr) if result.exit_code == ALTERED else None
            why = elevate.refusal(result.exit_code, result.stderr) or said or str(
                ProcessError(argv, result.exit_code, result.stderr))
            failed.append((tuple(k.name for k, _ in keys), f"{named(keys)} on {remote.name}: {why}"))
        return result.stderr


Failure = tuple[tuple[str, ...], str]  # the keys a failure is about, and the line that says why


def upload_stream(keys: Sequence[tuple[Key, bytes]]) -> bytes:
    """What `keys.sh upload COUNT` reads: a line per key, "SHA-256 LENGTH MODE USER GROUP
    DEST" (the destination last, as it is: the schema lets it hold spaces, never a control
    character), then the contents back to back."""
    lines = [f"{hashlib.sha256(data).hexdigest()} {len(data)} {key.permissions} {key.user} {key.group} "
             f"{key.destination}\n" for key, data in keys]
    return "".join(lines).encode("utf-8", "surrogateescape") + b"".join(data for _, data in keys)


def parse_failures(stdout: str, count: int) -> dict[int, tuple[int, str]]:
    """keys.sh upload's lines `N CODE WHY` (N from 1): key index (from 0) -> (code, why)."""
    found: dict[int, tuple[int, str]] = {}
    for line in stdout.splitlines():
        number, _, rest = line.partition(" ")
        code, _, why = rest.partition(" ")
        if number.isdigit() and code.isdigit() and 1 <= int(number) <= count:
            found[int(number) - 1] = (int(code), why)
    return found


SHOWN = 5  # failures told in full in a step's reason; the others by name


def named(keys: Sequence[tuple[Key, bytes]]) -> str:
    """`key a`, `keys a, b and c`; past `SHOWN` keys, `keys a, b, c, d, e and 195 more`."""
    names = [k.name for k, _ in keys]
    if len(names) == 1:
        return f"key {names[0]}"
    if len(names) <= SHOWN:
        return f"keys {', '.join(names[:-1])} and {names[-1]}"
    return f"keys {', '.join(names[:SHOWN])} and {len(names) - SHOWN} more"


def failures(failed: Sequence[Failure]) -> str:
    """One line for a host's failed keys: the first `SHOWN` reasons in full, then the keys of
    the others by name."""
    text = "; ".join(why for _, why in failed[:SHOWN])
    rest = [name for names, _ in failed[SHOWN:] for name in names]
    if rest:
        text += f"; and {len(rest)} more failed: {', '.join(rest)}"
    return text
