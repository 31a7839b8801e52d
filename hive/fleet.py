"""Commands over the selected hosts that are no deployment: `run` (a command everywhere),
`check` (the health checks alone) and `rollback` (back to the previous generation). Each
works over one run's shared connections (a jump host authenticates once), `-j` hosts at once,
wave after wave."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hive import elevate, health, process
from hive.activate import LOCK_MARGIN
from hive.errors import HiveError, ProcessError, ssh_reason
from hive.keys import Keys
from hive.model import Goal, Hive, Instance
from hive.options import Options
from hive.plan import Plan
from hive.remote import SYSTEM_PROFILE, Remote, Remotes
from hive.report import Row
from hive.resources import host_script
from hive.session import gate


def _each(hive: Hive, plan: Plan, jobs: int, one: Callable[[Remote, Instance], Any]) -> list[Any]:
    """`one(remote, instance)` for every instance, wave after wave, `jobs` at once."""
    results: list[Any] = []
    with Remotes(hive, plan.hubs, jobs=jobs) as remotes, ThreadPoolExecutor(max_workers=jobs) as pool:
        for wave in plan.waves:
            results += pool.map(lambda i: one(remotes[i.name], i), wave)
    return results


def run_everywhere(hive: Hive, plan: Plan, command: Sequence[str], *, jobs: int) -> list[tuple[str, str]]:
    """Run `command` on every instance; output lines prefixed with the instance name, each
    host's output printed whole when it finishes. Returns the (instance, reason) that failed."""
    lock = threading.Lock()
    width = max((len(i.name) for i in plan.instances), default=0)

    def one(remote: Remote, i: Instance) -> tuple[str, str] | None:
        try:
            out = process.run(remote.command_argv(command), check=False)
        except HiveError as exc:
            return i.name, str(exc)
        with lock:
            for line in out.stdout.splitlines():
                sys.stdout.write(f"{i.name:<{width}} | {line}\n")
            for line in out.stderr.splitlines():
                sys.stderr.write(f"{i.name:<{width}} ! {line}\n")
            sys.stdout.flush()
        if out.exit_code != 0:
            if out.exit_code != 255:
                return i.name, f"exit status {out.exit_code}"
            return i.name, f"ssh could not connect: {ssh_reason(out.stderr, remote.pinned, remote.connect_timeout)}"
        return None

    return sorted(r for r in _each(hive, plan, jobs, one) if r is not None)


def check(hive: Hive, plan: Plan, *, jobs: int) -> list[dict[str, Any]]:
    """Every selected instance's health checks, as rows (instance, check, healthy, detail,
    tries, seconds); an instance without checks has one row saying so."""

    def one(remote: Remote, i: Instance) -> list[dict[str, Any]]:
        if not i.checks:
            return [{"instance": i.name, "check": None, "healthy": None, "detail": "no checks", "tries": 0,
                     "seconds": 0.0}]
        out = []
        for c in i.checks:
            result = health.run(remote, c)
            out.append({"instance": i.name, "check": c.name, "healthy": result.healthy, "detail": result.detail,
                        "tries": result.tries, "seconds": result.seconds})
        return out

    return [row for rows in _each(hive, plan, jobs, one) for row in rows]


def rollback_argv(remote: Remote, goal: Goal, lock_wait: int) -> list[str]:
    """The ssh call running hive/host/rollback.sh on `remote` as the ssh user, behind
    elevate.sh (its two commands that need root go through `as_root`, each of a shape a sudoers
    rule allows: hive/elevate.py), with the profile, whether it moves, the goal, a call's ID
    and how long it waits for the host lock as its arguments."""
    script = remote.root_script(host_script("rollback.sh"))
    return remote.shell_argv(script, args=[SYSTEM_PROFILE, str(int(goal.sets_profile)), goal.value,
                                           elevate.call_id(), str(lock_wait)])


# rollback.sh's own failures, each with one line on standard error that says why: nothing to
# roll back to (3), a previous generation the host cannot run (4), its switch failed (5),
# another run held the host lock (6)
SAID = (3, 4, 5, 6)


def _why(exc: HiveError) -> str:
    """Why a host's rollback failed, in one line."""
    if not isinstance(exc, ProcessError):
        return str(exc)
    said = [ln.strip() for ln in exc.stderr.splitlines() if ln.strip()]
    if exc.returncode in SAID and said:
        return said[-1]
    return elevate.refusal(exc.returncode, exc.stderr) or str(exc)


def rollback(hive: Hive, plan: Plan, goal: Goal, *, jobs: int, keep_going: bool = False) -> list[Row]:
    """Switch every selected instance to the previous generation of its system profile (for
    `switch` and `boot`, the profile with it), unless that generation is no system the host can
    run: then the instance fails and its profile stays. A failed wave stops the later ones
    unless `keep_going`."""

    def one(remote: Remote, i: Instance) -> Row:
        start = time.monotonic()
        try:
            # the host lock: as long as an activation's (its confirmation window, then a margin)
            wait = i.confirm_timeout + LOCK_MARGIN
            out = process.run(rollback_argv(remote, goal, wait), input=remote.root_input(),
                              timeout=wait + i.activation_timeout + 60)
        except HiveError as exc:
            return Row(i.name, i.system, "", "failed", f"rollback: {_why(exc)}", {"rollback": _since(start)})
        path = next((ln[5:] for ln in out.stdout.splitlines() if ln.startswith("path=")), "")
        return Row(i.name, i.system, path, "ok", "", {"rollback": _since(start)})

    rows: list[Row] = []
    stopped: str | None = None
    with Remotes(hive, plan.hubs, jobs=jobs) as remotes, ThreadPoolExecutor(max_workers=jobs) as pool:
        for number, wave in enumerate(plan.waves, 1):
            if stopped is not None:
                rows += [Row(i.name, i.system, "", "skipped", stopped) for i in wave]
                continue
            done = list(pool.map(lambda i: one(remotes[i.name], i), wave))
            rows += done
            failed = [r.instance for r in done if r.result == "failed"]
            stopped = gate(number, failed, len(failed), Options(keep_going=keep_going))
    return rows


def _since(start: float) -> float:
    return round(time.monotonic() - start, 2)


def upload_keys(hive: Hive, plan: Plan, *, jobs: int) -> list[Row]:
    """Every selected instance's keys (pre- and post-activation alike: after a reboot cleared
    /run/keys, the system already runs)."""
    keys = Keys(hive)

    def one(remote: Remote, i: Instance) -> Row:
        start = time.monotonic()
        try:
            done = keys.upload(remote, keys.of(i.name), only_changed=False)
        except HiveError as exc:
            return Row(i.name, i.system, "", "failed", str(exc), {"keys": _since(start)})
        return Row(i.name, i.system, "", "ok", done.note() if i.keys else "no keys", {"keys": _since(start)})

    return list(_each(hive, plan, jobs, one))
