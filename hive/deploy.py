"""Orchestration of a run: the build phase, then wave after wave of pushes and activations,
each through doit (tasks.py); the summary of what happened; fleet status; `run`.

A wave is the set of instances one pattern selected. By default a failure stops later waves
(a broken jump host must not take the hosts behind it down with it); `--keep-going` carries
on; `--max-failures` stops starting new work once that many instances failed.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hive import process, ssh, tasks
from hive.errors import HiveError
from hive.model import Instance, Step
from hive.report import FAILED, OK, SKIPPED, UNCHANGED, Outcome, Row
from hive.steps import Context


def build(ctx: Context) -> int:
    """Build every selected system (nix-hive build). 0, or 1 when a build failed."""
    ns = tasks.namespace(ctx, chain_waves=False, build_only=True)
    code = tasks.run(ctx, ns, [f"build:{s}" for s in ctx.systems], jobs=ctx.options.jobs)
    return 0 if code == 0 else 1


def _blocked(ctx: Context, instance: Instance) -> str | None:
    """Why an instance cannot be attempted: a step it needs already failed in this run."""
    if ctx.outcomes.failed(f"build:{instance.system}"):
        return f"build of {instance.system} failed"
    url = instance.store
    while url is not None:  # its relay, and the relays that one substitutes from
        found = ctx.outcomes.get(f"store:{url}")
        if found is not None and found.status == FAILED:
            return f"relay store {url} failed"
        if found is not None and found.status == SKIPPED:
            return found.reason
        url = ctx.upstream(url)
    return None


def deploy(ctx: Context, *, push_only: bool = False) -> tuple[int, list[Row]]:
    """Build, then push (and activate) wave by wave. Returns the exit status and the summary."""
    ns = tasks.namespace(ctx, chain_waves=False)
    last = ctx.final_step = "push" if push_only else "activate"
    try:
        _waves(ctx, ns, last)
    except KeyboardInterrupt:
        # Ctrl-C: doit has stopped dispatching and saved the state; wait for the steps already
        # running (their ssh and nix children got the signal too), then report.
        ctx.progress.line("interrupted: waiting for the running steps (Ctrl-C again to abort)")
        ctx.wait_idle()
        for i in ctx.instances:
            if ctx.outcomes.get(f"{last}:{i.name}") is None:
                ctx.outcomes.set(f"{last}:{i.name}", Outcome(SKIPPED, "interrupted"))
    finally:
        ctx.close()
    rows = [_row(ctx, i, last) for i in ctx.instances]
    code = 0 if all(r.result in (OK, UNCHANGED) for r in rows) and not ctx.outcomes.failed() else 1
    return code, rows


def _waves(ctx: Context, ns: dict[str, Any], last: str) -> None:
    """The build phase, then one doit run per wave, applying the failure policy between."""
    stopped: str | None = None
    if ctx.hive.signing_key is None and any(i.store for i in ctx.instances):
        ctx.progress.line("warning: no signingKey: instances behind a relay take its paths only if they trust "
                          "them otherwise; if not, the deployer sends them the closure itself")
    tasks.run(ctx, ns, [f"build:{s}" for s in ctx.systems], jobs=ctx.options.jobs)
    if ctx.options.skip & {Step.PUSH, Step.ACTIVATE}:
        # `--no push/activate` asks every host what it has and runs: all at once, up front
        # (a step of this run that changes a host makes the run forget its answer).
        ctx.prefetch([i for i in ctx.instances if _blocked(ctx, i) is None])
    for number, wave in enumerate(ctx.waves, 1):
        if stopped is not None:
            for i in wave:
                ctx.outcomes.set(f"{last}:{i.name}", Outcome(SKIPPED, stopped))
            continue
        targets = []
        for i in wave:
            why = _blocked(ctx, i)
            if why is None:
                targets.append(f"{last}:{i.name}")
            else:
                ctx.outcomes.set(f"{last}:{i.name}", Outcome(SKIPPED, why))
        if len(ctx.waves) > 1:
            ctx.progress.line(f"wave {number}/{len(ctx.waves)}: {len(wave)} instance(s)")
        tasks.run(ctx, ns, targets, jobs=ctx.options.jobs)
        failed = [i.name for i in wave if _row(ctx, i, last).result == FAILED]
        stopped = ctx.stop_reason()  # --max-failures, counted over the whole run
        if stopped is None and failed and not ctx.options.keep_going:
            names = ", ".join(failed[:3]) + (", ..." if len(failed) > 3 else "")
            stopped = f"not started: wave {number} failed ({names})"


def _row(ctx: Context, i: Instance, last: str) -> Row:
    steps = {"build": f"build:{i.system}", "push": f"push:{i.name}"}
    if last == "activate":
        steps["activate"] = f"activate:{i.name}"
    if i.store:
        steps["store"] = f"store:{i.store}"
    outcomes = {k: ctx.outcomes.get(t) for k, t in steps.items()}
    seconds = {k: o.seconds for k, o in outcomes.items() if o is not None and o.seconds}
    path = ctx.path_of(i.system) or ""
    order = ("build", "store", "push", "activate")
    for key in order:
        o = outcomes.get(key)
        if o is not None and o.status == FAILED:
            if key in ("build", "store"):
                target = i.system if key == "build" else i.store
                return Row(i.name, i.system, path, SKIPPED, f"{key} of {target} failed: {o.reason}", seconds)
            return Row(i.name, i.system, path, FAILED, f"{key}: {o.reason}", seconds)
    for key in order:  # the first step not started says why
        o = outcomes.get(key)
        if o is not None and o.status == SKIPPED:
            return Row(i.name, i.system, path, SKIPPED, o.reason, seconds)
    final = outcomes.get(last)
    if final is None:
        return Row(i.name, i.system, path, SKIPPED, "not started", seconds)
    return Row(i.name, i.system, path, final.status, final.reason if final.status != OK else "", seconds)


def status(ctx: Context) -> tuple[int, list[dict[str, Any]]]:
    """Each selected host's current system against the one the hive builds now."""
    code = build(ctx)
    try:
        ctx.prefetch(ctx.instances)

        def row(i: Instance) -> dict[str, Any]:
            expected = ctx.path_of(i.system)
            found = ctx.probe(i)
            if not found.reachable:
                state = "unreachable"
            elif found.current is None:
                state = "not activated"
            elif found.current == expected:
                state = "up to date"
            else:
                state = "differs"
            return {"instance": i.name, "system": i.system, "expected": expected, "current": found.current,
                    "profile": found.profile, "state": state}

        rows = [row(i) for i in ctx.instances]
    finally:
        ctx.close()
    bad = code != 0 or any(r["state"] == "unreachable" for r in rows)
    return (1 if bad else 0), rows


def run_everywhere(setup: ssh.SshSetup, instances: Sequence[Instance], command: Sequence[str], *,
                   jobs: int) -> list[tuple[str, str]]:
    """Run `command` on every instance; output lines prefixed with the instance name, each
    host's output printed whole when it finishes. Returns the (instance, reason) that failed."""
    lock = threading.Lock()
    failed: list[tuple[str, str]] = []
    width = max((len(i.name) for i in instances), default=0)

    def one(i: Instance) -> None:
        try:
            out = process.run(ssh.command_argv(setup, i.name, command), check=False)
        except HiveError as exc:
            with lock:
                failed.append((i.name, str(exc)))
            return
        with lock:
            for line in out.stdout.splitlines():
                sys.stdout.write(f"{i.name:<{width}} | {line}\n")
            for line in out.stderr.splitlines():
                sys.stderr.write(f"{i.name:<{width}} ! {line}\n")
            sys.stdout.flush()
            if out.exit_code != 0:
                why = "ssh could not connect" if out.exit_code == 255 else f"exit status {out.exit_code}"
                failed.append((i.name, why))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, instances))
    return sorted(failed)
