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

Every copy has a deadline (`Options.copy_deadline`): `--copy-timeout` seconds plus the size of
the closure it may move at `--copy-rate`. Not a stall timeout on progress: an instance behind a
relay substitutes from it out of this machine's sight (Nix shows a line per path at most, none
while one large path moves), so no progress is there to watch. A copy past its deadline is
stopped, with everything it started, and fails its step as "timed out"; when the store it
copies to substitutes from a relay, the relay is asked for a new ssh connection, and the cause
names it when it does not answer (a hung sshd, MaxStartups exhausted).
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Sequence
from typing import Any

from hive import nix, process, ssh
from hive.address import StoreUrl
from hive.errors import HiveError, TimedOutError, headline
from hive.model import Instance
from hive.plan import Kind, Relay
from hive.process import ProcessTimeoutError
from hive.session import Session

# Stores on this machine: a build host's closure reaches them through here.
LOCAL_SCHEMES = frozenset({"local", "file", "daemon", "auto"})


class Pushes:
    """A run's pushes, and the paths it has signed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._sign_lock = threading.Lock()
        self._signed: set[str] = set()
        self._size_lock = threading.Lock()
        self._sizes: dict[tuple[str | None, tuple[str, ...]], int | None] = {}

    def _size(self, host: str | None, paths: Sequence[str]) -> int | None:
        """The bytes a copy of `paths` (held by build host `host`, or here) may move: their
        closure's NAR size, asked of the store once per run; None when it cannot tell (the
        copy then has --copy-timeout alone, and will most likely fail for the same reason)."""
        key = (host, tuple(sorted(paths)))
        s = self.session
        with self._size_lock:  # held while asking: the instances of a system ask once, not each at once
            if key not in self._sizes:
                try:
                    # a build host's store is asked within --copy-timeout; the local one needs no
                    # deadline (and a timeout costs process.run 0.1 s)
                    self._sizes[key] = nix.closure_bytes(paths, store=f"ssh-ng://{host}" if host else None,
                                                         env=s.remotes.setup.env,
                                                         timeout=s.options.copy_timeout if host else None)
                except HiveError:
                    self._sizes[key] = None
            return self._sizes[key]

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
                        # on a build host: signatures go there, one exchange per path
                        deadline = s.options.copy_deadline(self._size(host, todo)) if host else None
                        nix.sign(key, todo, store=f"ssh-ng://{host}" if host else None, env=s.remotes.setup.env,
                                 timeout=deadline)
                        self._signed.update(todo)
        return by_host

    def _copy(self, host: str | None, to: str, paths: list[str], *, substitute: bool, relayed: bool = False,
              upstream: str | None = None, check_sigs: bool = True) -> str:
        """Copy `paths` (held by build host `host`, or here) to the store `to`, within its
        deadline; what it did, for the report when not the plain copy. `relayed`: `to`
        substitutes from a relay that already holds them, so only references cross this
        machine even from a build host. `upstream`: the relay store `to` substitutes from."""
        s = self.session
        url = StoreUrl.parse(to)
        # a copy from here to one host reads that host's own ssh files (hive/ssh.py)
        env = s.remotes.setup.env_for(url.ssh_host) if host is None else s.remotes.setup.env
        if host is not None and url.ssh_host == host.rpartition("@")[2] and url.param("remote-store") is None:
            return f"(built there by build host {host})"  # the build host's own store
        size = self._size(host, paths)
        deadline = s.options.copy_deadline(size)
        if host is None or relayed or url.scheme in LOCAL_SCHEMES:
            try:
                nix.copy(to, paths, substitute=substitute, env=env, source=f"ssh-ng://{host}" if host else None,
                         timeout=deadline, check_sigs=check_sigs)
            except ProcessTimeoutError as exc:
                raise self._late(to, size, upstream, exc.stderr) from exc
            return ""
        # The build host's own `nix copy`, over ssh: stopping the ssh at the deadline ends
        # the session, and the copy with it (at its next write, at the latest).
        remote = s.remotes[host]
        try:
            process.run(remote.shell_argv(shlex.join(nix.copy_argv(to, paths, substitute=substitute,
                                                                   check_sigs=check_sigs))),
                        timeout=deadline)
        except ProcessTimeoutError as exc:
            raise self._late(to, size, upstream, exc.stderr, host=host) from exc
        except HiveError as exc:
            raise HiveError(f"build host {host} could not copy to {to}: {exc}") from exc
        return f"(from build host {host})"

    def _late(self, to: str, size: int | None, upstream: str | None, output: str, *,
              host: str | None = None) -> TimedOutError:
        """A copy to `to` passed its deadline: why, as precisely as can be told. When `to`
        substitutes from the relay store `upstream`, the relay is asked for a new ssh
        connection (what the host behind it waits for): one that does not answer is named."""
        deadline = self.session.options.explain_copy_deadline(size)
        by = f" by build host {host}" if host else ""
        if upstream is not None and StoreUrl.parse(upstream).is_ssh:
            why = self._relay_silent(upstream)
            if why is not None:
                return TimedOutError(f"relay {upstream} {why}; the copy{by} to {to}, which substitutes from it, "
                                     f"passed its deadline of {deadline}", log=output)
            return TimedOutError(f"copy{by} to {to} did not end within its deadline of {deadline} (its relay "
                                 f"{upstream} answers nix-hive: the host's own ssh to it may hang, see its ssh "
                                 "configuration)", log=output)
        return TimedOutError(f"copy{by} to {to} did not end within its deadline of {deadline}", log=output)

    def _relay_silent(self, store: str) -> str | None:
        """Why the relay store `store` (ssh://, ssh-ng://) does not serve: it did not answer a
        new ssh connection from here (to the host nix-hive fills it through) within the connect
        timeout, or refused it; None when it answers or cannot be asked."""
        s = self.session
        relay = next((r for r in s.plan.relays if r.url == store), None)
        target = StoreUrl.parse(relay.target if relay is not None else store)
        name = relay.owner if relay is not None and relay.owner is not None else target.ssh_destination
        if name is None:
            return None
        seconds = s.options.connect_timeout or int(ssh.DEFAULTS["ConnectTimeout"])
        argv = s.remotes[name].fresh_argv("true")
        at = argv.index("--")
        argv[at:at] = ["-o", f"ConnectTimeout={seconds}"]
        try:
            out = process.run(argv, check=False, timeout=seconds + 10)
        except ProcessTimeoutError:
            return f"did not answer within {seconds} s"
        except HiveError:
            return None
        if out.exit_code == 0:
            return None
        said = headline(out.stderr)
        if "timed out" in said.lower():
            return f"did not answer within {seconds} s ({said})"
        return f"refused a new ssh connection ({said})"

    def relay(self, relay: Relay) -> dict[str, Any]:
        """The action of `store:<relay>`: one `nix copy` of every system it must hold (per
        store they come from); a relay that substitutes from another (chained) takes from
        there what it can."""
        s = self.session
        if relay.owner is not None:
            s.remotes[relay.owner].forget()
        by_host = self._signed_paths(relay.systems)
        # An ssh-ng:// relay's nix-daemon checks the signatures of what it is given against its
        # own trusted keys (an ssh:// one, `nix-store --serve --write`, never does): the relay only
        # holds the paths, the hosts behind it check them when they substitute, so it takes them
        # unchecked from a sender it trusts (its ssh user in trusted-users; root is).
        check = StoreUrl.parse(relay.target).scheme != "ssh-ng"
        notes = [self._copy(host, relay.target, paths, substitute=relay.upstream is not None, upstream=relay.upstream,
                            check_sigs=check)
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
                              relayed=bool(instance.store), upstream=instance.store)
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
            return not nix.remote_missing(relay.target, paths, env=s.remotes.setup.env,
                                          timeout=s.options.copy_timeout)
        except HiveError:
            return False

    def instance_has(self, instance: Instance) -> bool:
        """`--no push`: the instance's store holds its system (asked of the instance)."""
        path = self.session.path_of(instance.system)
        return path is not None and path in self.session.probe(instance.name, [path]).valid
