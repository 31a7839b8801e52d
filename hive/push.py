"""Pushing closures: signed with the deployment's key, one `nix copy` per relay store of
everything it must hold, then each instance's system with `--substitute-on-destination`, so an
instance behind a relay fetches the closure from there and the deployer sends a reference;
and the `--no push` checks, asked of the stores themselves.

A system built on a build host is signed in the host's store (the key stays here) and copied
from there: to a store that is the build host itself, nothing; to a store on this machine
(file://, a local path), through here; to any other, by the build host's own `nix copy` (host
to host, with the build host's ssh configuration and credentials); to an instance behind a
relay, from here with `--from` the build host and substitution on the instance, so only
references cross this machine's link.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Sequence
from typing import Any

from hive import nix
from hive.address import StoreUrl
from hive.errors import HiveError
from hive.model import Instance
from hive.plan import Kind, Relay
from hive.session import Session

# Stores on this machine: a build host's closure reaches them through here.
LOCAL_SCHEMES = frozenset({"local", "file", "daemon", "auto"})


class Pushes:
    """A run's pushes, and the paths it has signed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._sign_lock = threading.Lock()
        self._signed: set[str] = set()

    def _signed_paths(self, systems: Sequence[str]) -> dict[str | None, list[str]]:
        """The systems' paths by the build host holding them (None: this machine), each
        signed with the deployment's key in that store (once per run)."""
        s = self.session
        by_host: dict[str | None, list[str]] = {}
        for system in systems:
            by_host.setdefault(s.hive.systems[system].build_host, []).append(s.need_path(system))
        key = s.hive.signing_key
        if key is not None:
            with self._sign_lock:
                for host, paths in by_host.items():
                    todo = [p for p in paths if p not in self._signed]
                    if todo:
                        nix.sign(key, todo, store=f"ssh-ng://{host}" if host else None, env=s.remotes.setup.env)
                        self._signed.update(todo)
        return by_host

    def _copy(self, host: str | None, to: str, paths: list[str], *, substitute: bool, relayed: bool = False) -> str:
        """Copy `paths` (held by build host `host`, or here) to the store `to`; what it did,
        for the report when not the plain copy. `relayed`: `to` substitutes from a relay that
        already holds them, so only references cross this machine even from a build host."""
        s = self.session
        env = s.remotes.setup.env
        if host is None:
            nix.copy(to, paths, substitute=substitute, env=env)
            return ""
        url = StoreUrl.parse(to)
        if url.ssh_host == host.rpartition("@")[2] and url.param("remote-store") is None:
            return f"(built there by build host {host})"  # the build host's own store
        if relayed or url.scheme in LOCAL_SCHEMES:
            nix.copy(to, paths, substitute=substitute, env=env, source=f"ssh-ng://{host}")
            return ""
        try:
            s.remotes[host].run_script(shlex.join(nix.copy_argv(to, paths, substitute=substitute)))
        except HiveError as exc:
            raise HiveError(f"build host {host} could not copy to {to}: {exc}") from exc
        return f"(from build host {host})"

    def relay(self, relay: Relay) -> dict[str, Any]:
        """The action of `store:<relay>`: one `nix copy` of every system it must hold (per
        store they come from); a relay that substitutes from another (chained) takes from
        there what it can."""
        s = self.session
        if relay.owner is not None:
            s.remotes[relay.owner].forget()
        by_host = self._signed_paths(relay.systems)
        notes = [self._copy(host, relay.target, paths, substitute=relay.upstream is not None)
                 for host, paths in by_host.items()]
        return {"paths": [p for paths in by_host.values() for p in paths],
                "note": " ".join(n for n in dict.fromkeys(notes) if n)}

    def instance(self, instance: Instance) -> dict[str, Any]:
        """The action of `push:<instance>`. An instance that is itself a relay store got its
        system with the store's copy."""
        s = self.session
        remote = s.remotes[instance.name]
        try:
            [(host, paths)] = self._signed_paths([instance.system]).items()
            if any(r.owner == instance.name for r in s.plan.relays):
                return {"path": paths[0], "note": "(with its relay store copy)"}
            remote.forget()
            note = self._copy(host, instance.url, paths, substitute=bool(instance.store),
                              relayed=bool(instance.store))
        finally:
            if s.plan.final is Kind.PUSH:
                remote.release()
        return {"path": paths[0], "note": note}

    def relay_has(self, relay: Relay) -> bool:
        """`--no push`: the store already holds every path (asked of the store itself)."""
        s = self.session
        try:
            paths = [s.need_path(system) for system in relay.systems]
            if relay.owner is not None:
                return set(paths) <= s.probe(relay.owner, paths).valid
            return not nix.remote_missing(relay.target, paths, env=s.remotes.setup.env)
        except HiveError:
            return False

    def instance_has(self, instance: Instance) -> bool:
        """`--no push`: the instance's store holds its system (asked of the instance)."""
        path = self.session.path_of(instance.system)
        return path is not None and path in self.session.probe(instance.name, [path]).valid
