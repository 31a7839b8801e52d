"""Building systems: one `nix build` per build group (systems sharing `paths` and platform,
so Nix builds them in parallel), a GC root per result, and the `--no build` check.

`nix-build:<group>` is a doit setup task of each `build:<system>` of the group: doit runs it
only when one of them is not up to date, and each `build:<system>` then records its own
result (the unit the state file keeps, so `--no build` skips a system whatever the selection).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hive import nix
from hive.errors import HiveError
from hive.model import Step
from hive.plan import BuildGroup
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
        alone, so a broken one fails alone too."""
        derivations = self._evaluate(list(group.systems))
        if derivations:
            self._realise(derivations)
        failed = [s for s in group.systems if s in self._failures]
        return {"note": f"({', '.join(failed)} failed)" if failed else ""}

    def _evaluate(self, systems: list[str]) -> dict[str, str]:
        """System -> derivation, for those whose evaluation succeeded."""
        s = self.session
        paths = s.hive.systems[systems[0]].paths

        def one(name: str) -> tuple[str, str | HiveError]:
            try:
                return name, nix.instantiate(s.hive.file, name, paths)
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

    def _realise(self, derivations: dict[str, str]) -> None:
        s = self.session
        label = ",".join(derivations)

        def show(line: str) -> None:  # Nix's own progress: what it builds or fetches
            text = line.strip()
            if text.startswith(("building '", "copying path '")):
                name = text.split("'")[1].split("/")[-1].split("-", 1)[-1].removesuffix(".drv")
                s.progress.step("build", label, f"{text.split()[0]} {name}")

        try:
            outputs = nix.realise(list(derivations.values()), on_line=show)
            built = dict(zip(derivations, outputs, strict=True))
            for name, path in built.items():
                nix.add_root(path, s.gcroots / name)
        except (HiveError, ValueError) as exc:
            if len(derivations) == 1:
                with self._lock:
                    self._failures.update({name: _as_error(exc) for name in derivations})
                return
            for name, drv in derivations.items():
                self._realise({name: drv})
            return
        with self._lock:
            s.results.update(built)

    def result(self, system: str) -> dict[str, Any]:
        """The action of `build:<system>`: its result, recorded in the state file."""
        with self._lock:
            failure = self._failures.get(system)
        if failure is not None:
            raise failure
        return {"result": self.session.need_path(system)}

    def uptodate(self, system: str) -> Any:
        """`--no build`: the recorded result is still a valid path of the local store (doit
        checks the inputs: the deployment's files, `paths`, the platform)."""

        def check(task: Any, values: Mapping[str, Any]) -> bool:
            if not self.session.skips(Step.BUILD) or not self.trust_records:
                return False
            path = values.get("result")
            if not isinstance(path, str) or nix.invalid_paths([path]):
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
        return {"paths": dict(s.paths), "platform": s.platform, "file": str(self.session.hive.file)}


def _as_error(exc: Exception) -> HiveError:
    return exc if isinstance(exc, HiveError) else HiveError(f"nix-store --realise: {exc}")
