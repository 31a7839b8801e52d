"""Building systems: one `nix build` per build group (systems sharing `paths`, platform and
build host, so Nix builds them in parallel), a GC root per result, and the `--no build` check.

A group with a build host is evaluated here and built there: its derivations are copied to
the host's store (`ssh-ng://host`), built by the host's Nix, and the results stay there, with
a GC root each on the host (so a later `--no build` finds them); pushes copy from there.

`nix-build:<group>` is a doit setup task of each `build:<system>` of the group: doit runs it
only when one of them is not up to date, and each `build:<system>` then records its own
result (the unit the state file keeps, so `--no build` skips a system whatever the selection).
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hive import nix
from hive.errors import HiveError, ProcessError, StepError, TimedOutError, undownloaded
from hive.evaluate import nix_message
from hive.model import Step
from hive.plan import BuildGroup
from hive.process import ProcessTimeoutError
from hive.session import Session


class Builds:
    """A run's builds: results and failures per system."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._lock = threading.Lock()
        self._failures: dict[str, HiveError] = {}
        self._recorded: dict[str, str] = {}  # system -> result the state file holds (--no build)
        self.trust_records = True  # False when no input files could be found: always build

    def build_group(self, group: BuildGroup) -> dict[str, Any]:
        """The action of `nix-build:<group>`: its systems evaluated in parallel (up to
        `--eval-jobs` at once: with real NixOS each evaluation costs seconds and about a
        gigabyte), then built by one `nix-store --realise`, so Nix builds them in parallel. A
        system whose evaluation fails fails alone; when the build fails, each system is built
        alone, so a broken one fails alone too. What Nix says shows under the group's own
        label (`a+b`), whichever of its systems is being built."""
        derivations = self._evaluate(list(group.systems))
        label = group.id.target
        if derivations and group.host is not None:
            self._realise_on(group.host, derivations, label)
        elif derivations:
            self._realise(derivations, build=lambda some: self._local_build(some, label))
        failed = [s for s in group.systems if s in self._failures]
        return {"note": f"({', '.join(failed)} failed)" if failed else ""}

    def _evaluate(self, systems: list[str]) -> dict[str, str]:
        """System -> derivation, for those whose evaluation succeeded."""
        s = self.session
        paths = s.hive.systems[systems[0]].paths
        source = nix.deployment_env(s.hive.file, s.hive.flake, s.hive.attr)

        def one(name: str) -> tuple[str, str | HiveError]:
            try:
                return name, nix.instantiate(source, s.hive.directory, name, paths)
            except ProcessError as exc:
                return name, self._unevaluated(name, paths, exc)
            except HiveError as exc:
                return name, exc

        with ThreadPoolExecutor(max_workers=max(1, min(s.options.eval_jobs, len(systems)))) as pool:
            evaluated = list(pool.map(one, systems))
        out: dict[str, str] = {}
        for name, found in evaluated:
            if isinstance(found, HiveError):
                with self._lock:
                    self._failures[name] = found
            else:
                out[name] = found
        return out

    def _unevaluated(self, system: str, paths: Mapping[str, str], exc: ProcessError) -> HiveError:
        """A system whose evaluation failed, in one line naming what the user wrote: the entry
        of `paths` Nix could not download (offline, a wrong URL), else the system's
        configuration and Nix's message with its place in the user's files. Nix's whole output
        follows it only with --show-trace (its trace through nix-hive's own nix/build.nix is no
        help otherwise)."""
        shown = self.session.hive.shown
        log = exc.stderr if nix.show_trace() else ""
        unfetched = undownloaded(exc.stderr)
        if unfetched is not None:
            url, why = unfetched
            entry = next((k for k, v in sorted(paths.items()) if v == url), None)
            named = f"paths.{entry}" if entry is not None else f"the Nix search path entry {url}"
            return StepError(f"{shown}: {named}: cannot evaluate: cannot download {url}: {why}", log=log)
        hint = "" if nix.show_trace() else " (--show-trace: Nix's whole trace)"
        return StepError(f"{shown}: systems.{system}.configuration: cannot evaluate: {nix_message(exc.stderr)}{hint}",
                         log=log)

    def _local_build(self, derivations: dict[str, str], label: str) -> dict[str, str]:
        """Build here, with a GC root beside the state file for each result."""
        s = self.session

        def show(line: str) -> None:  # Nix's own progress: what it builds or fetches
            text = line.strip()
            if text.startswith(("building '", "copying path '")):
                s.progress.step("build", label, f"{text.split()[0]} {_named(text)}")

        built = dict(zip(derivations, nix.realise(list(derivations.values()), on_line=show), strict=True))
        for name, path in built.items():
            nix.add_root(path, s.gcroots / name)
        return built

    def _realise(self, derivations: dict[str, str], *, build: Callable[[dict[str, str]], dict[str, str]],
                 where: str = "") -> None:
        """Build `derivations` in one call (`build`: here, or on a build host); when that fails,
        each alone, so a broken system fails alone."""
        s = self.session
        try:
            built = build(derivations)
        except (HiveError, ValueError, KeyError) as exc:
            if len(derivations) == 1:
                with self._lock:
                    self._failures.update({name: _as_error(exc, where) for name in derivations})
                return
            for name, drv in derivations.items():
                self._realise({name: drv}, build=build, where=where)
            return
        with self._lock:
            s.results.update(built)

    def _realise_on(self, host: str, derivations: dict[str, str], label: str) -> None:
        """Build on `host`: the derivations copied there once (a host that cannot be reached
        fails the group at once), then built as `_realise` builds here, with GC roots there."""
        s = self.session
        store = f"ssh-ng://{host}"
        env = s.remotes.setup.env
        s.progress.step("build", label, f"asking build host {host} for its Nix version")
        try:
            version = nix.checked_version(s.remotes[host].run_script(shlex.join(nix.version_argv())).stdout,
                                          "it")  # the message reads "build host H: it runs …"
            s.progress.step("build", label, f"copying derivations to build host {host} ({version})")
            drvs = list(derivations.values())
            try:
                size: int | None = nix.closure_bytes(drvs, derivation=True)  # the local store
            except HiveError:
                size = None  # the copy gets --copy-timeout alone
            try:
                nix.copy_derivations(store, drvs, env=env, timeout=s.options.copy_deadline(size))
            except ProcessTimeoutError as exc:
                raise TimedOutError("copying the derivations did not end within its deadline of "
                                    f"{s.options.explain_copy_deadline(size)}", log=exc.stderr) from exc
        except HiveError as exc:
            why = f"build host {host}: {exc}"
            failure = TimedOutError(why, log=exc.log) if isinstance(exc, TimedOutError) else HiveError(why)
            with self._lock:
                self._failures.update({name: failure for name in derivations})
            return

        def show(line: str) -> None:
            text = line.strip()
            if text.startswith("building '"):
                s.progress.step("build", label, f"building {_named(text)} on {host}")

        def build(some: dict[str, str]) -> dict[str, str]:
            built = dict(zip(some, nix.build_in(store, list(some.values()), env=env, on_line=show), strict=True))
            s.remotes[host].run_script(self._root_script(built))
            return built

        self._realise(derivations, build=build, where=f"on build host {host}")

    def _root_script(self, built: Mapping[str, str]) -> str:
        """A shell script making a GC root on the build host for each result, under the
        ssh user's state directory, one directory per deployment (state file) and deployer."""
        key = hashlib.sha256(f"{platform.node()}:{self.session.state_file}".encode()).hexdigest()[:16]
        script = f'd="${{XDG_STATE_HOME:-$HOME/.local/state}}/nix-hive/gcroots/{key}"; mkdir -p "$d" && cd "$d"'
        for name, path in sorted(built.items()):  # each link named by its system, in $d
            script += f" && {shlex.join(nix.add_root_argv(path, name))} >/dev/null"
        return script

    def result(self, system: str) -> dict[str, Any]:
        """The action of `build:<system>`: its result, recorded in the state file."""
        with self._lock:
            failure = self._failures.get(system)
        if failure is not None:
            raise failure
        return {"result": self.session.need_path(system)}

    def uptodate(self, system: str) -> Any:
        """`--no build`: the recorded result is still a valid path of the store it was built in
        (here, or the build host's; doit checks the inputs: the deployment's files, `paths`,
        the platform, the build host)."""
        store = self.session.hive.systems[system].build_store

        def check(task: Any, values: Mapping[str, Any]) -> bool:
            if not self.session.skips(Step.BUILD) or not self.trust_records:
                return False
            path = values.get("result")
            if not isinstance(path, str):
                return False
            try:
                missing = (nix.remote_missing(store, [path], env=self.session.remotes.setup.env) if store
                           else nix.invalid_paths([path]))
            except HiveError:
                return False  # the build host cannot say: build (which reports why)
            if missing:
                return False
            with self._lock:
                self._recorded[system] = path
            return True

        return check

    def adopt(self, system: str) -> None:
        """doit found `build:<system>` up to date: its recorded result is this run's."""
        with self._lock:
            path = self._recorded.get(system)
            if path is not None:
                self.session.results.setdefault(system, path)

    def inputs(self, system: str) -> dict[str, Any]:
        """What a build depends on besides the files of the deployment."""
        s = self.session.hive.systems[system]
        out = {"paths": dict(s.paths), "platform": s.platform, "file": str(self.session.hive.file),
               "buildHost": s.build_host, "nixpkgs": s.nixpkgs}
        if self.session.hive.flake_inputs is not None:  # the flake's files and locked inputs
            out["flake"] = dict(self.session.hive.flake_inputs)
        return out


def _named(line: str) -> str:
    """The name of the store path Nix's progress line quotes (`building '/nix/store/…-x.drv'`)."""
    return line.split("'")[1].split("/")[-1].split("-", 1)[-1].removesuffix(".drv")


def _as_error(exc: Exception, where: str = "") -> HiveError:
    if isinstance(exc, HiveError):
        return HiveError(f"{exc} ({where})") if where else exc
    return HiveError(f"nix build{' ' + where if where else ''}: {exc}")
