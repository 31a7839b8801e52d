"""doit's door into nix-hive: the same task creators the `nix-hive` command runs.

    doit list config=example              tasks per system and instance
    doit build targets='www*'             build the systems of the www instances
    doit deploy targets=portico,* config=example no=build

Variables: config (file or directory, default hive.nix), targets (comma-separated patterns,
default every instance), no (steps to skip when done: build,push,activate), state (file).
doit's own `-n N` runs N tasks at once, in threads (`doit -n 10 deploy targets=...`).
Waves are chained: every activation of a pattern waits for the previous pattern's, and a
failure stops the later ones.
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path
from typing import Any

from doit import get_var

from hive import errors, tasks
from hive.evaluate import evaluate
from hive.model import Step
from hive.select import select
from hive.steps import Context, Options


def _namespace() -> dict[str, Any]:
    hive = evaluate(get_var("config", "hive.nix"))
    targets = get_var("targets", "")
    waves = select(hive, [targets] if targets else [])
    state = get_var("state", None)
    options = Options(skip=Step.parse_list(get_var("no", "")), state_file=Path(state).resolve() if state else None)
    ctx = Context(hive, waves, options)
    atexit.register(ctx.close)
    return tasks.namespace(ctx, chain_waves=True)


try:
    globals().update(_namespace())
except errors.HiveError as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(exc.exit_code) from None
