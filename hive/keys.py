"""Uploading keys (secrets) to hosts, never through the Nix store.

A key's content is read on the deployer at upload time (its file, its text, or its command's
output), kept in memory for the run, and sent over ssh standard input only: never in an argv,
never in a temporary file on the deployer, never in the state file, a report or a message.
On the host, as root, a file is created in the destination's directory, given its final owner
and mode, and only then filled; it is renamed over the destination, so no reader ever sees a
partial or a too readable key. Whether a host's key is up to date is asked of the host (a
SHA-256 of each destination), not recorded here.
"""

from __future__ import annotations

import hashlib
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hive import process
from hive.errors import HiveError, ProcessError, StepError
from hive.model import Hive, Key
from hive.remote import Remote, as_root

UPLOAD = r"""
set -eu
dest=@DEST@; user=@USER@; group=@GROUP@; mode=@MODE@
if ! id -u "$user" >/dev/null 2>&1; then echo "no user $user" >&2; exit 64; fi
if ! getent group "$group" >/dev/null 2>&1; then echo "no group $group" >&2; exit 65; fi
dir=$(dirname "$dest")
mkdir -p -m 0755 "$dir"
tmp=$(mktemp "$dir/.nix-hive-key.XXXXXX")
trap 'rm -f "$tmp"' EXIT
chown "$user:$group" "$tmp"
chmod "$mode" "$tmp"
cat > "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
"""


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
        self._lock = threading.Lock()
        self._content: dict[str, bytes] = {}

    def of(self, instance: str, *, post: bool | None = None) -> list[Key]:
        """The instance's keys (only the pre- or post-activation ones, when `post` says)."""
        keys = [self.hive.keys[n] for n in self.hive.instances[instance].keys]
        return [k for k in keys if post is None or k.post_activation == post]

    def content(self, key: Key) -> bytes:
        with self._lock:
            if key.name not in self._content:
                self._content[key.name] = self._read(key)
            return self._content[key.name]

    def _read(self, key: Key) -> bytes:
        try:
            if key.key_file is not None:
                return key.key_file.read_bytes()
            if key.command:
                return process.run(key.command).stdout.encode()
            return (key.text or "").encode()
        except ProcessError as exc:
            raise StepError(f"key {key.name}: its keyCommand failed ({exc})") from None
        except OSError as exc:
            raise StepError(f"key {key.name}: cannot read {key.key_file}: {exc.strerror}") from None

    def on_host(self, remote: Remote, keys: Sequence[Key]) -> dict[str, str]:
        """Destination -> SHA-256 of the file there (missing files are absent)."""
        script = "; ".join(f"sha256sum {shlex.quote(k.destination)} 2>/dev/null" for k in keys) + "; true"
        out = process.run(remote.shell_argv(as_root([["sh", "-c", script]])))
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
        script = UPLOAD
        for name, value in (("DEST", key.destination), ("USER", key.user), ("GROUP", key.group),
                            ("MODE", key.permissions)):
            script = script.replace(f"@{name}@", shlex.quote(value))
        try:
            process.run(remote.shell_argv(as_root([["sh", "-c", script]])), input=data)
        except ProcessError as exc:
            missing = exc.returncode in (64, 65)
            hint = (f"; if the new system creates it, upload the key after the switch: "
                    f"keys.{key.name}.uploadAt = \"post-activation\"") if missing and not key.post_activation else ""
            raise StepError(f"key {key.name} on {remote.name}: {exc}{hint}", log=exc.stderr) from None
        except HiveError as exc:
            raise StepError(f"key {key.name} on {remote.name}: {exc}") from None
