"""Activating an instance: point the system profile at its system (for the goals that set
it), then run the system's `switch-to-configuration GOAL`, as root (through `sudo -n` when the
ssh user is not root); and the `--no activate` check, asked of the host."""

from __future__ import annotations

from typing import Any

from hive import nix
from hive.model import Instance
from hive.session import Session


def activate(session: Session, instance: Instance) -> dict[str, Any]:
    """The action of `activate:<instance>`."""
    path = session.need_path(instance.system)
    goal = session.options.goal
    commands = [nix.set_profile_argv(path)] if goal.sets_profile else []
    remote = session.remotes[instance.name]
    try:
        remote.run_as_root([*commands, nix.switch_argv(path, goal.value)])
    finally:
        remote.release()
    return {"path": path}


def is_active(session: Session, instance: Instance) -> bool:
    """`--no activate`: the host already is where the goal would take it."""
    path = session.path_of(instance.system)
    found = session.probe(instance.name)
    return path is not None and session.options.goal.reached(path, found.current, found.profile)
