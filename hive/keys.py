"""Uploading keys (secrets) to hosts, never through the Nix store.

A key's content is read on the deployer at upload time (its file, its text, or its command's
output), kept in memory for the run, and sent over ssh standard input only: never in an argv,
never in a temporary file on the deployer, never in the state file, a report or a message.
On the host, as root (hive/host/keys.sh, run from a file: no root shell), a file is created in
the destination's directory, given its final owner and mode, and only then filled; it is
renamed over the destination, so no reader ever sees a partial or a too readable key. Nothing
is written through a symbolic link or into a directory a user other than root could change
(issue 27): such a destination fails its key, saying which directory. Whether
a host's key is up to date is asked of the host (a SHA-256 of each destination), not recorded
here.

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

# What runs as root for keys (hive/host/keys.sh): `hashes DEST...` and `upload DEST USER GROUP
# MODE`, the key on stdin after its SHA-256 and length. It writes nothing through a symbolic
# link, nor into a directory another user could change (exit 67, one line saying why).
KEYS_SH = host_script("keys.sh")
# As the ssh user, behind elevate.sh (`Remote.root_script`): keys.sh goes to /run/nix-hive/ID/
# (a here-document: the call's standard input stays the key's) and runs as `as_root sh FILE
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


ALTERED = 66
REFUSED = 67


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
        """Send `keys` to the host; with `only_changed`, those whose content differs there."""
        if not keys:
            return Uploaded()
        there = self.on_host(remote, keys) if only_changed else {}
        sent, same = [], []
        for key in keys:
            data = self.content(key)
            if there.get(key.destination) == hashlib.sha256(data).hexdigest():
                same.append(key.name)
                continue
            self._send(remote, key, data)
            sent.append(key.name)
        return Uploaded(tuple(sent), tuple(same))

    def _send(self, remote: Remote, key: Key, data: bytes) -> None:
        header = f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()
        try:
            process.run(keys_argv(remote, "upload", key.destination, key.user, key.group, key.permissions),
                        input=remote.root_input(header + data))
        except ProcessError as exc:
            refused = elevate.refusal(exc.returncode, exc.stderr)
            if refused is not None:
                raise StepError(f"key {key.name} on {remote.name}: {refused}", log=exc.stderr) from None
            if exc.returncode in (ALTERED, REFUSED):
                raise StepError(f"key {key.name} on {remote.name}: {headline(exc.stderr)}", log=exc.stderr) from None
            missing = exc.returncode in (64, 65)
            hint = (f"; if the new system creates it, upload the key after the switch: "
                    f"keys.{key.name}.uploadAt = \"post-activation\"") if missing and not key.post_activation else ""
            raise StepError(f"key {key.name} on {remote.name}: {exc}{hint}", log=exc.stderr) from None
        except HiveError as exc:
            raise StepError(f"key {key.name} on {remote.name}: {exc}") from None
