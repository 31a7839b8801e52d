"""The doit tasks of a deployment, and the one way nix-hive runs them.

Task creators are plain functions of a `Context` (the evaluated hive, the selection, the
options). `dodo.py` and the `nix-hive` command both get their tasks from `namespace()`:
two doors, one implementation.

    build:<system>        build a system (systems sharing paths: one `nix build`)
    store:<url>           copy systems to a relay store that instances substitute from
    push:<instance>       copy the instance's system to it (substituting from its relay)
    activate:<instance>   set the system profile and switch to it
    deploy                every selected instance activated
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.tools import config_changed

from hive.evaluate import input_files
from hive.model import Instance, Step
from hive.report import Reporter
from hive.steps import Context, step_check

BACKEND = {"hive": "hive.state:JournalDB"}
# Actions print nothing; without this doit swaps sys.stdout and sys.stderr around each action,
# which from several threads at once can leave a capture buffer in place of the real stream.
NO_CAPTURE = {"capture": False}


def explain(task: str, dep: str) -> str:
    """Why `task` was not started: the dependency `dep` failed."""
    step, _, target = dep.partition(":")
    return {
        "build": f"build of {target} failed",
        "store": f"relay store {target} failed",
        "push": "push failed",
        "activate": f"an earlier wave failed ({target})",
    }.get(step, f"{dep} failed")


def namespace(ctx: Context, *, chain_waves: bool, build_only: bool = False) -> dict[str, Any]:
    """The task creators of this run, as a module namespace for doit's loader.

    With `chain_waves`, each wave's activations depend on the previous wave's: a single doit
    run then keeps the order and stops at the first failed wave (the `doit deploy` door).
    The `nix-hive` command runs one wave at a time instead (see deploy.py), to apply
    --keep-going and --max-failures between waves.
    """
    files = [str(p) for p in input_files(ctx.hive, exclude=(ctx.state_file, ctx.hive.signing_key))]
    relays = ctx.relays()
    store_of_instance = {inst.name: url for url in relays
                         if (inst := ctx.store_instance(url)) is not None}

    def task_build() -> Iterator[dict[str, Any]]:
        """Build each selected system once."""
        for s in ctx.systems:
            users = sum(1 for i in ctx.instances if i.system == s)
            yield {
                "name": s,
                "doc": f"build system {s} ({users} instance{'s' if users != 1 else ''})",
                "actions": [(ctx.build, [s])],
                "io": NO_CAPTURE,
                "file_dep": files,
                "uptodate": [ctx.build_uptodate(s), config_changed(ctx.system_inputs(s))],
            }

    def task_store() -> Iterator[dict[str, Any]]:
        """Copy systems to the relay stores instances substitute from."""
        for url, systems in relays.items():
            yield {
                "name": url,
                "doc": f"copy {', '.join(systems)} to relay store {url}",
                "actions": [(ctx.push_store, [url, systems])],
                "io": NO_CAPTURE,
                "task_dep": [f"build:{s}" for s in systems] + (
                    [f"store:{up}"] if (up := ctx.upstream(url)) is not None else []),
                "uptodate": [step_check(ctx, Step.PUSH, _bind(ctx.store_has, url, systems))],
            }

    def push_deps(i: Instance) -> list[str]:
        deps = [f"build:{i.system}"]
        if i.store:
            deps.append(f"store:{i.store}")
        if i.name in store_of_instance and store_of_instance[i.name] != i.store:
            deps.append(f"store:{store_of_instance[i.name]}")
        return deps

    def task_push() -> Iterator[dict[str, Any]]:
        """Copy each selected instance's system to it."""
        for i in ctx.instances:
            via = f" from {i.store}" if i.store else ""
            yield {
                "name": i.name,
                "doc": f"copy {i.system} to {i.name}{via}",
                "actions": [(ctx.push, [i, i.name in store_of_instance])],
                "io": NO_CAPTURE,
                "task_dep": push_deps(i),
                "uptodate": [step_check(ctx, Step.PUSH, _bind(ctx.instance_has, i))],
            }

    def task_activate() -> Iterator[dict[str, Any]]:
        """Switch each selected instance to its system, wave after wave."""
        previous: list[str] = []
        for wave in ctx.waves:
            for i in wave:
                yield {
                    "name": i.name,
                    "doc": f"activate {i.system} on {i.name} ({ctx.options.goal.value})",
                    "actions": [(ctx.activate, [i])],
                    "io": NO_CAPTURE,
                    "task_dep": [f"push:{i.name}", *(previous if chain_waves else [])],
                    "uptodate": [step_check(ctx, Step.ACTIVATE, _bind(ctx.is_active, i))],
                }
            previous = [f"activate:{i.name}" for i in wave]

    def task_deploy() -> dict[str, Any]:
        """Build, push and activate the selected instances."""
        return {"actions": None, "task_dep": [f"activate:{i.name}" for i in ctx.instances]}

    if build_only:  # `nix-hive build`: no need to make a task per instance
        return {"task_build": task_build, "DOIT_CONFIG": doit_config(ctx)}
    return {
        "task_build": task_build,
        "task_store": task_store,
        "task_push": task_push,
        "task_activate": task_activate,
        "task_deploy": task_deploy,
        "DOIT_CONFIG": doit_config(ctx),
    }


def _bind(fn: Callable[..., bool], *args: Any) -> Callable[[], bool]:
    return lambda: fn(*args)


def doit_config(ctx: Context) -> dict[str, Any]:
    return {
        "backend": "hive",
        "dep_file": str(ctx.state_file),
        "reporter": Reporter(ctx.outcomes, ctx.progress, explain),
        "verbosity": 0,
        "par_type": "thread",
        "default_tasks": ["build"],
    }


def run(ctx: Context, ns: dict[str, Any], targets: Sequence[str], *, jobs: int = 1,
        keep_going: bool = True) -> int:
    """Run the named tasks (and what they depend on) through doit; doit's exit status."""
    if not targets:
        return 0
    args = ["run"]
    if keep_going:
        args.append("--continue")
    if jobs > 1:
        args += ["-n", str(jobs), "-P", "thread"]
    main = DoitMain(ModuleTaskLoader(ns), config_filenames=(), extra_config={"BACKEND": BACKEND})
    return int(main.run([*args, *targets]))
