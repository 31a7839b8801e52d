"""doit's door into nix-hive: the same plan, tasks, lock, failure policy and Ctrl-C handling
the `nix-hive` command runs (hive/orchestrate.py). A dodo file that imports it has them:

    from hive.dodo import *  # noqa: F403

(what `nix-hive init` writes beside the deployment). doit's loader reads the tasks
(`task_*`) and `DOIT_CONFIG` from the dodo file's namespace, so this module makes them when it
is imported, for the deployment in the dodo file's directory unless `config=` names another.

    doit list                                   tasks per system and instance
    doit build targets='www*'                   build the systems of the www instances
    doit deploy targets='portico,*'             the whole deployment, portico first

Variables (as `nix-hive deploy`'s options): config (file or directory, default: the dodo
file's directory's hive.nix, else its flake.nix), targets (comma-separated patterns, default
every instance), no (steps to skip when done: build,push,activate), state (file), goal
(switch|boot|test|dry-activate), jobs (instances activated at once, default 10), push_jobs
(copies at once from each source, default 10), keep_going (1/true),
max_failures (N or N%), I (name=path,… overriding NIX_PATH entries), push_only (1: the plan of
`nix-hive push`), verbose (1: print every command), rollback (0: as --no-rollback),
activation_timeout, confirm_timeout (seconds), keys (0: as --no-keys), eval_jobs (systems
evaluated at once), build_host (the host that builds every system), elevate (sudo|run0|none),
ask_sudo_password (1: ask the sudo password on the terminal), sudo_password_file (a file only
you can read: its first line is the sudo password), copy_timeout (seconds), copy_rate
(Mbit/s), connect_timeout (seconds), stop_timeout (seconds: after SIGTERM, how long the
running steps are followed; doit then exits 143 after the summary), skip_unreachable (1: as
--skip-unreachable), rollback_on_failure (1: as --rollback-on-failure), ignore_inhibitors (1: as
--ignore-inhibitors), diff (1: as --diff), confirm (1: as --confirm), yes (1: as --yes).

Exit status, doit's: 0 all done; 1 a host or step failed; 2 a task raised (a bug); 3 bad
input (a variable, the deployment file, a pattern, the state file in use): nothing started.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

from doit import get_var

from hive import errors, options, orchestrate

VARIABLES = ("config", "targets", "no", "state", "goal", "jobs", "push_jobs", "keep_going", "max_failures", "I",
             "push_only", "verbose", "rollback", "activation_timeout", "confirm_timeout", "keys", "eval_jobs",
             "build_host", "elevate", "ask_sudo_password", "sudo_password_file", "skip_unreachable",
             "rollback_on_failure", "ignore_inhibitors", "diff", "confirm", "yes",
             *(name for name, *_ in options.DEADLINES))
BAD_INPUT = 3  # doit's status for an error before any task runs (its own: an unknown task, a bad dodo file)


def dodo_directory() -> Path:
    """The directory of the file whose import runs this module: the dodo file doit loaded
    (doit runs it in that directory unless `--dir` says otherwise). The current directory
    when no file imports it."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and (frame.f_globals.get("__name__") == __name__
                                 or str(frame.f_globals.get("__name__", "")).startswith("importlib")):
        frame = frame.f_back
    found = frame.f_globals.get("__file__") if frame is not None else None
    return Path(found).resolve().parent if isinstance(found, str) else Path.cwd()


def namespace(home: Path, argv: list[str]) -> dict[str, Any]:
    """The tasks and DOIT_CONFIG of doit's command line `argv` (without the program), for the
    deployment in `home` unless `config=` names another."""
    variables = {name: value for name in VARIABLES if (value := get_var(name, None)) is not None}
    return orchestrate.from_doit(variables, connect=orchestrate.doit_reaches_hosts(argv), home=home)


try:
    _found = namespace(dodo_directory(), sys.argv[1:])
except errors.HiveError as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(BAD_INPUT) from None
globals().update(_found)
__all__ = sorted(_found)  # what `from hive.dodo import *` gives the dodo file: its tasks and DOIT_CONFIG
