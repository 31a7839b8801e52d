"""Building systems: one `nix build` per build group (systems sharing `paths` and platform,
so Nix builds them in parallel), a GC root per result, and the `--no build` check.

`nix-build:<group>` is a doit setup task of each `build:<system>` of the group: doit runs it
only when one of them is not up to date, and each `build:<system>` then records its own
result (the unit the state file keeps, so `--no build` skips a system whatever the selection).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
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
        """The action of `nix-build:<group>`. A broken system must not fail the others: when
        the group's build fails, each system is built alone."""
        self._build(list(group.systems))
        failed = [s for s in group.systems if s in self._failures]
        return {"note": f"({', '.join(failed)} failed)" if failed else ""}

    def _build(self, systems: list[str]) -> None:
        s = self.session
        label = ",".join(systems)

        def show(line: str) -> None:  # Nix's own progress: what it builds or fetches
            text = line.strip()
            if text.startswith(("building '", "copying path '")):
                name = text.split("'")[1].split("/")[-1].split("-", 1)[-1].removesuffix(".drv")
                s.progress.step("build", label, f"{text.split()[0]} {name}")

        try:
            built = nix.build(s.hive.file, systems, s.hive.systems[systems[0]].paths, on_line=show)
            for name, path in built.items():
                nix.add_root(path, s.gcroots / name)
        except HiveError as exc:
            if len(systems) == 1:
                with self._lock:
                    self._failures[systems[0]] = exc
                return
            for name in systems:
                self._build([name])
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
