"""What a deployment would do to a fleet before it does it: `nix-hive diff` and `deploy
--diff/--confirm`.

1. The package part (hive/changes.py): the systems built, every host asked once, the hosts
   grouped by (system they run, system they get), each group's closures compared once.
2. For each group that changes, one host of it is given its new system (copied as a deploy
   copies: through its relay store) and runs `switch-to-configuration dry-activate`, which
   changes nothing, as an activation runs (host lock, detached, `--activation-timeout`): a
   deploy of those hosts with `--goal dry-activate`. What it prints is read (hive/units.py),
   and counted over the fleet by the group's number of hosts. The same host then says whether
   the new system needs a reboot (`reboot.sh needs`: another kernel, initrd or kernel
   parameters, or a changed switch inhibitor: `--reboot=auto`'s rule).
3. The changes that can cut a host off come first: ssh, the network, nix-daemon, systemd
   restarting, a kernel that needs a reboot, switch inhibitors (the deploy will not switch
   those hosts); with magic rollback on, a host that loses ssh rolls back by itself.

A group whose dry run could not be made says why; the rest is shown all the same.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from hive import changes, orchestrate, plan, reboot, text
from hive.changes import FleetDiff
from hive.diff import State
from hive.errors import HiveError
from hive.model import Goal, Step
from hive.report import Fit, emit, table
from hive.session import Session
from hive.units import DryRun, fleet_wide, parse

KERNEL_WORDS = frozenset(reboot.KERNEL_FILES)
RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


@dataclass(frozen=True)
class DryResult:
    """A group's dry run: where it ran, what it said, what its reboot check said."""

    host: str
    dry: DryRun | None = None  # None: not made (`error`)
    needs: tuple[str, ...] = ()  # reboot.sh needs' words: kernel, initrd, kernel-params, switch-inhibitors, unknown
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        found = self.dry.as_json() if self.dry else {"units": None, "systemdRestarts": None}
        return {"host": self.host, "error": self.error, **found,
                "reboot": sorted(set(self.needs) - {reboot.INHIBITED}) or None,
                "inhibited": reboot.INHIBITED in self.needs}


@dataclass(frozen=True)
class Preview:
    """The fleet's diff (packages) and each changing group's dry run (None: no dry run for it)."""

    found: FleetDiff
    dry: tuple[DryResult | None, ...] = ()
    rollback_seconds: Mapping[int, int] = field(default_factory=dict)  # group -> its magic rollback window

    @property
    def complete(self) -> bool:
        return self.found.complete and not any(d is not None and d.error for d in self.dry)

    @property
    def changing(self) -> list[str]:
        """The hosts a deploy would switch to another system (or to a first one)."""
        return [n for g in self.found.groups if g.group.state in (State.CHANGES, State.NEW) for n in g.group.instances]

    def hosts_of(self, n: int) -> tuple[str, ...]:
        return self.found.groups[n].group.instances

    def dangers(self) -> list[str]:
        """The changes that can cut a host off or will not be switched, fleet-wide, one line each."""
        lines: list[str] = []
        for n, d in enumerate(self.dry):
            if d is None or (d.dry is None and not d.needs):
                continue
            hosts = self.hosts_of(n)
            on = f"on {text.compact(hosts)} ({len(hosts)} host{'s' * (len(hosts) > 1)})"
            if d.dry is not None:
                for danger in d.dry.dangers:
                    window = self.rollback_seconds.get(n)
                    alone = (f": a host that loses ssh rolls back by itself after {window} s (magic rollback)"
                             if window else ": magic rollback is off")
                    lines.append(f"{danger} {on}{alone}")
            kernel = sorted(set(d.needs) & KERNEL_WORDS)
            if kernel:
                lines.append(f"{', '.join(kernel)} change{'s' * (len(kernel) == 1)} {on}: the new one runs only "
                             "after a reboot (deploy --reboot=auto)")
            if reboot.INHIBITED in d.needs:
                lines.append(f"switch inhibitors change {on}: deploy will not switch them (boot them: --reboot, "
                             "or switch anyway: --ignore-inhibitors)")
        return lines

    def as_json(self) -> dict[str, Any]:
        out = self.found.as_json()
        for n, g in enumerate(out["groups"]):
            d = self.dry[n] if n < len(self.dry) else None
            g["dryRun"] = d.as_json() if d is not None else None
        out["units"] = [{"unit": u.unit, "change": u.change.value, "hosts": u.hosts, "danger": u.danger}
                        for u in fleet_wide(self.dry_counts())]
        out["dangers"] = self.dangers()
        out["changing"] = len(self.changing)
        return out

    def dry_counts(self) -> list[tuple[DryRun, int]]:
        return [(d.dry, len(self.hosts_of(n))) for n, d in enumerate(self.dry) if d is not None and d.dry is not None]


def preview(session: Session, *, dry_run: bool = True) -> tuple[int, Preview]:
    """The fleet's diff, and (`dry_run`) a dry activation on one host of each changing group.
    Exit status 0 when everything was asked and made, else 1."""
    code, found = changes.fleet_diff(session)
    windows = {n: session.options.confirm_timeout or session.hive.instances[g.group.instances[0]].confirm_timeout
               for n, g in enumerate(found.groups)} if session.options.rollback else {}
    if not dry_run:
        return code, Preview(found, rollback_seconds=windows)
    dry = _dry_runs(session, found)
    result = Preview(found, dry, windows)
    return (0 if code == 0 and result.complete else 1), result


def _dry_runs(first: Session, found: FleetDiff) -> tuple[DryResult | None, ...]:
    """One dry activation per changing group, on its first host, as one deploy of those hosts
    with --goal dry-activate (the systems as the diff built them: `--no build`)."""
    hive = first.hive
    picked = {n: g.group.instances[0] for n, g in enumerate(found.groups)
              if g.group.state is State.CHANGES and not g.error}
    if not picked:
        return tuple(None for _ in found.groups)
    first.progress.line(f"dry activation on {len(picked)} host(s), one of each group that changes")
    options = dataclasses.replace(first.options, goal=Goal.DRY_ACTIVATE, skip=first.options.skip | {Step.BUILD},
                                  reboot=None, rollback_on_failure=False, keep_going=True, max_failures=None)
    hosts = [hive.instances[name] for name in picked.values()]
    the_plan = plan.make_plan(hive, [hosts], goal=Goal.DRY_ACTIVATE, skip=options.skip, final=plan.Kind.ACTIVATE,
                              keys=False)
    session = Session(hive, the_plan, options, first.progress)
    session.state_file, session.gcroots = first.state_file, first.gcroots  # what the diff built is recorded there
    _, rows = orchestrate.deploy(session)
    why = {r.instance: r.reason for r in rows}
    try:
        def one(n: int) -> DryResult:
            host = picked[n]
            log = session.dry_runs.get(host)
            if log is None:
                return DryResult(host, error=f"dry activation on {host}: {why.get(host) or 'no answer'}")
            try:
                needs = reboot.needs(session.remotes[host], found.groups[n].group.new)
            except HiveError as exc:
                needs = ("unknown",)
                first.progress.line(f"warning: {host}: whether a reboot is needed is unknown ({exc})")
            return DryResult(host, parse(log), needs)

        with ThreadPoolExecutor(max_workers=max(1, min(first.options.jobs, len(picked)))) as pool:
            done = dict(zip(picked, pool.map(one, picked), strict=True))
    finally:
        session.close()
    return tuple(done.get(n) for n in range(len(found.groups)))


# What a person reads --------------------------------------------------------------------------

def colours(stream: TextIO) -> bool:
    """Colour for a terminal, unless NO_COLOR (no-color.org) says otherwise."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def tables(result: Preview, width: int | None, *, colour: bool = False) -> str:
    """The package diff (hive/changes.py's tables), then what a switch does to units fleet-wide
    (the dangerous ones first, marked `!`), the groups' dry runs that could not be made, and
    the changes that can cut a host off, last, where the eye lands, in red on a terminal."""
    out = [changes.tables(result.found, width).rstrip("\n")]
    counts = fleet_wide(result.dry_counts())
    if counts:
        rows = table([(("! " if u.danger else "") + u.unit, u.change.value, str(u.hosts)) for u in counts],
                     ["unit", "change", "hosts"], width=width, fit=(Fit.CUT, Fit.KEEP, Fit.KEEP)).split("\n")
        # the dangerous ones first, in red on a terminal (painted once the table is laid out)
        rows = [f"{BOLD}{RED}{r}{RESET}" if colour and r.startswith("! ") else r for r in rows]
        out += ["", _fit("units (switch-to-configuration dry-activate on one host of each group):", width), *rows]
    failed = [(n, d) for n, d in enumerate(result.dry) if d is not None and d.error]
    if failed:
        out += ["", _fit(f"no dry activation: {len(failed)} group(s)", width),
                table([(text.compact(result.hosts_of(n)), d.error) for n, d in failed], ["hosts", "reason"],
                      width=width, fit=(Fit.CUT, Fit.CUT))]
    dangers = result.dangers()
    if dangers:
        out += ["", _fit(f"changes that can cut a host off, or will not switch ({len(dangers)}):", width)]
        out += [_paint("  ! " + line, width, colour) for line in dangers]
    hosts = len(result.changing)
    out += ["", _fit(f"{hosts} host(s) change" if hosts else "nothing changes on the selected hosts", width)]
    return "\n".join(out) + "\n"


def _fit(line: str, width: int | None) -> str:
    shown = text.line(line)
    return shown if width is None else text.cut(shown, max(width - 1, 1))


def _paint(line: str, width: int | None, colour: bool) -> str:
    shown = text.line(line) if width is None else textwrap.fill(text.line(line), max(width - 1, 20),
                                                                   subsequent_indent="    ")
    return f"{BOLD}{RED}{shown}{RESET}" if colour else shown


def ahead(session: Session, *, ask_first: bool, width: int | None, show: bool = True) -> Preview | None:
    """deploy --diff / --confirm, through either door (doit: diff=1, confirm=1): the fleet's
    diff, shown on stdout (`show`; else it only goes into the summary), then (`ask_first`)
    the question, unless nothing changes. None: answered no (said on stderr: nothing
    deployed)."""
    _, found = preview(session)
    if show:
        emit(tables(found, width, colour=colours(sys.stdout)))
    changing = len(found.changing)
    if ask_first and changing and not ask(f"Deploy to {changing} host{'s' * (changing > 1)}?"):
        sys.stderr.write("nothing deployed\n")
        return None
    return found


def ask(question: str) -> bool:
    """Ask `question [y/N]` on the terminal (its /dev/tty: the answer may go to a pipe, e.g.
    `--json | jq`; else standard error), the answer read from standard input (a terminal:
    the caller made sure); True for y or yes. End of input is no."""
    try:
        terminal: TextIO = open("/dev/tty", "w")  # noqa: SIM115 (closed below)
    except OSError:
        terminal = sys.stderr
    try:
        terminal.write(f"{question} [y/N] ")
        terminal.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    finally:
        if terminal is not sys.stderr:
            terminal.close()
