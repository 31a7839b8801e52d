"""Pushing closures: signed with the deployment's key, one `nix copy` per relay store of
everything it must hold, then each instance's system with `--substitute-on-destination`, so an
instance behind a relay fetches the closure from there and the deployer sends a reference;
and the `--no push` checks, asked of the stores themselves."""

from __future__ import annotations

import threading
from typing import Any

from hive import nix
from hive.errors import HiveError
from hive.model import Instance
from hive.plan import Kind, Relay
from hive.session import Session


class Pushes:
    """A run's pushes, and the paths it has signed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._sign_lock = threading.Lock()
        self._signed: set[str] = set()

    def _signed_paths(self, systems: tuple[str, ...] | list[str]) -> list[str]:
        paths = [self.session.need_path(s) for s in systems]
        key = self.session.hive.signing_key
        if key is not None:
            with self._sign_lock:
                todo = [p for p in paths if p not in self._signed]
                if todo:
                    nix.sign(key, todo)
                    self._signed.update(todo)
        return paths

    def relay(self, relay: Relay) -> dict[str, Any]:
        """The action of `store:<relay>`: one `nix copy` of every system it must hold; a relay
        that substitutes from another (chained) takes from there what it can."""
        s = self.session
        if relay.owner is not None:
            s.remotes[relay.owner].forget()
        paths = self._signed_paths(relay.systems)
        nix.copy(relay.target, paths, substitute=relay.upstream is not None, env=s.remotes.setup.env)
        return {"paths": paths}

    def instance(self, instance: Instance) -> dict[str, Any]:
        """The action of `push:<instance>`. An instance that is itself a relay store got its
        system with the store's copy."""
        s = self.session
        remote = s.remotes[instance.name]
        try:
            paths = self._signed_paths([instance.system])
            if any(r.owner == instance.name for r in s.plan.relays):
                return {"path": paths[0], "note": "(with its relay store copy)"}
            remote.forget()
            nix.copy(instance.url, paths, substitute=bool(instance.store), env=s.remotes.setup.env)
        finally:
            if s.plan.final is Kind.PUSH:
                remote.release()
        return {"path": paths[0]}

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
