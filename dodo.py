"""doit's door into nix-hive: the same plan, tasks, lock, failure policy and Ctrl-C handling
the `nix-hive` command runs (hive/orchestrate.py).

    doit list config=example                         tasks per system and instance
    doit build targets='www*' config=example         build the systems of the www instances
    doit deploy targets=portico,* config=example     the whole deployment, portico first

Variables (as `nix-hive deploy`'s options): config (file or directory, default hive.nix),
targets (comma-separated patterns, default every instance), no (steps to skip when done:
build,push,activate), state (file), goal (switch|boot|test|dry-activate), jobs (instances at
once, default 10), keep_going (1/true), max_failures (N or N%), I (name=path,… overriding
NIX_PATH entries), push_only (1: the plan of `nix-hive push`), verbose (1: print every command),
rollback (0: as --no-rollback), activation_timeout, confirm_timeout (seconds), keys (0: as --no-keys),
eval_jobs (systems evaluated at once), build_host (the host that builds every system),
elevate (sudo|run0|none), ask_sudo_password (1: ask the sudo password on the terminal),
sudo_password_file (a file only you can read: its first line is the sudo password),
copy_timeout (seconds), copy_rate (Mbit/s), connect_timeout (seconds), stop_timeout (seconds: after
SIGTERM, how long the running steps are followed; doit then exits 143 after the summary),
skip_unreachable (1: as --skip-unreachable), rollback_on_failure (1: as --rollback-on-failure).
"""

from __future__ import annotations

import sys
from typing import Any

from doit import get_var

from hive import errors, options, orchestrate


def _namespace() -> dict[str, Any]:
    names = ("config", "targets", "no", "state", "goal", "jobs", "keep_going", "max_failures", "I", "push_only",
             "verbose", "rollback", "activation_timeout", "confirm_timeout", "keys", "eval_jobs",
             "build_host", "elevate", "ask_sudo_password", "sudo_password_file", "skip_unreachable",
             "rollback_on_failure", *(name for name, *_ in options.DEADLINES))
    variables = {name: value for name in names if (value := get_var(name, None)) is not None}
    return orchestrate.from_doit(variables, connect=orchestrate.doit_reaches_hosts(sys.argv[1:]))


try:
    globals().update(_namespace())
except errors.HiveError as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(exc.exit_code) from None
