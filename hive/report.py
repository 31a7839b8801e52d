"""What the user sees: progress lines while work runs, tables at the end, JSON for programs.

Progress goes to stderr, one line per step, whole lines only (threads share a lock). The
summary is read from the run's outcomes (outcome.py) by orchestrate.py.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

from tabulate import tabulate

from hive import text as text_


class Progress:
    """Whole progress lines on a stream, safe to call from several threads.

    Every line is made printable (hive/text.py): a host's output, in a reason or a failed
    step's log, never reaches the terminal raw. A stream that can no longer be written (its
    reader went away: `nix-hive deploy 2>&1 | head`) silences the progress, never the run: a
    step must not fail half-way because nobody reads about it."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def _write(self, shown: Iterable[str]) -> None:
        with self._lock:
            if self.quiet:
                return
            try:
                for ln in shown:
                    self.stream.write(f"{ln}\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nobody reads progress any more
                self.quiet = True

    def line(self, text: str) -> None:
        if self.quiet:
            return
        first, *rest = text_.lines(text)
        self._write([f"[{time.monotonic() - self._start:7.1f}s] {first}", *rest])

    def started(self, step: str, target: str) -> None:
        """A step began (the line log says so only for builds and stores: `step(..., "...")`);
        a live view (hive/live.py) shows the host at work."""

    def step(self, step: str, target: str, status: str, detail: str = "") -> None:
        self.line(f"{step:<9}{target:<28}{status}{'  ' + detail if detail else ''}")

    def block(self, text: str, indent: str = "    | ") -> None:
        """A failed step's full log, indented under its progress line."""
        if self.quiet or not text.strip():
            return
        self._write(f"{indent}{ln}" for ln in text_.lines(text.rstrip()))

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Before the run starts (its deployment evaluated): a live view says `what` it waits
        for; the line log says nothing."""
        yield

    # A run's progress is entered while the run goes (`with session.progress:`): the line log
    # has nothing to start or end, a live view (hive/live.py) has its frame and the cursor.
    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


# Tables -------------------------------------------------------------------------------------

class Fit(enum.Enum):
    """How a table's column gives way when the table is wider than the terminal (`table`)."""

    KEEP = "keep"  # names, outcomes, numbers: cut only when nothing else is left to cut
    CUT = "cut"  # free text (a reason, a check's output): cut with an ellipsis to what the others leave
    PATH = "path"  # a store path: shown short (`nixos-system-www (lg1j8zk…)`), moved last, dropped first
    DROP = "drop"  # a detail another column sums up (a serial): moved last and dropped first, as a path


FREE = 30  # columns of free text a table keeps before it drops its store paths
GAP = "  "  # between two columns, as tabulate's "simple" format
NARROWEST = 4  # columns a column keeps, at the least, in a terminal too narrow for its header


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, limit: int = text_.LIMIT,
          width: int | None = None, fit: Sequence[Fit] = ()) -> str:
    """A table whose every cell is one printable line of at most `limit` characters (and the
    marker): a host's answer (a reason, a path it reports) cannot reach the terminal raw.

    `width`: the terminal's columns (`fitting`); each row then stays one line of the terminal,
    the columns giving way as `fit` says (KEEP by default). None (piped, `-v`): the whole
    table, every cell whole."""
    plain = _plain(rows, limit)
    if width is None:
        named = "".join(headers)
        if plain == "ascii" and headers and named.isascii() and named.isprintable():
            return _simple(list(headers), rows)
        return tabulate(_cells(rows, limit, plain), headers=list(headers), tablefmt="simple", disable_numparse=True)
    kinds = [fit[i] if i < len(fit) else Fit.KEEP for i in range(len(headers))]
    return _fitted([text_.cell(h) for h in headers], _cells(rows, limit, plain), kinds, max(width - 1, 1))


def _plain(rows: Sequence[Sequence[Any]], limit: int) -> str | None:
    """Whether every value of `rows` is a printable string of at most `limit` characters, which
    a table shows as it is: "ascii" when they are printable ASCII too (one column each), "text"
    when not; None when some value needs `text_.cell`. Looked at in one go (issue 29: the
    10,000 rows of a plan)."""
    flat = list(itertools.chain.from_iterable(rows))
    if not set(map(type, flat)) <= {str}:
        return None
    every = "".join(flat)
    if not every.isprintable() or max(map(len, flat), default=0) > limit:
        return None
    return "ascii" if every.isascii() else "text"


def _cells(rows: Sequence[Sequence[Any]], limit: int, plain: str | None) -> list[list[str]]:
    """Each value as `text_.cell(value, limit)`: a table of printable strings none longer than
    `limit` (`plain`) as it is; any other one by one. Lists of their own (`_fitted` changes them)."""
    if plain is not None:
        return [list(row) for row in rows]
    return [[text_.cell(c, limit) for c in row] for row in rows]


def _simple(headers: list[str], rows: Sequence[Sequence[str]]) -> str:
    """tabulate's "simple" table of these printable ASCII strings (each character one column),
    numbers not parsed, byte for byte: the table of a large fleet (tabulate looks at each
    cell's type: 0.15 s of `plan`'s 10,000 tasks); any other table is tabulate's own
    (tests/test_report.py compares the two)."""
    if any(len(row) != len(headers) for row in rows):
        return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    # tabulate strips every cell (not the headers), left-aligns strings in columns as wide as
    # their widest cell and at least their header and 2, joins them with GAP, and strips each line
    stripped = [tuple(map(str.strip, row)) for row in rows]
    columns = list(zip(*stripped, strict=True)) or [()] * len(headers)  # rows as long as headers: checked above
    widths = [max(len(h) + 2, max(map(len, column), default=0)) for h, column in zip(headers, columns, strict=True)]
    line = GAP.join(f"%-{w}s" for w in widths)  # each cell left-aligned in its column's width
    return "\n".join([(line % tuple(headers)).rstrip(), GAP.join("-" * w for w in widths),
                      *[(line % row).rstrip() for row in stripped]])


def fitting(stream: TextIO | None = None, *, verbose: bool = False) -> int | None:
    """The width a table printed on `stream` (stdout) fits: the terminal's columns; None (the
    whole table) when it is no terminal (a pipe, a file: what a program reads) or with `-v`."""
    out = stream if stream is not None else sys.stdout
    if verbose:
        return None
    try:
        if not out.isatty():
            return None
        return os.get_terminal_size(out.fileno()).columns or None
    except (OSError, ValueError, AttributeError):
        return None


def _fitted(headers: list[str], cells: list[list[str]], kinds: list[Fit], room: int) -> str:
    """The table in `room` columns, in this order, stopping as soon as it fits: as it is; its
    store paths short and, with its details (DROP), last (a column of none dropped); those
    dropped, the first first, while they would leave the free text fewer than FREE columns (or
    fewer than it needs); the
    free text cut, widest column first; then the other columns, down to their headers' width,
    then to NARROWEST. A row that still does not fit (a terminal a few columns wide) is as
    narrow as it can be."""
    order = list(range(len(headers)))

    def natural(col: int) -> int:
        return max([text_.columns(headers[col]), *(text_.columns(r[col]) for r in cells)])

    def total(widths: Mapping[int, int]) -> int:
        return sum(widths.values()) + len(GAP) * (len(widths) - 1)

    widths = {c: natural(c) for c in order}
    paths = [c for c in order if kinds[c] in (Fit.PATH, Fit.DROP)]
    if total(widths) > room and paths:
        for row in cells:
            for c in paths:
                if kinds[c] is Fit.PATH:
                    row[c] = text_.short_path(row[c])
        paths = [c for c in paths if any(row[c] not in ("", "-") for row in cells)]  # a column of "-" goes
        order = [c for c in order if kinds[c] not in (Fit.PATH, Fit.DROP)] + paths
        widths = {c: natural(c) for c in order}
        free = [c for c in order if kinds[c] is Fit.CUT]
        while paths and total({c: min(w, FREE) if c in free else w for c, w in widths.items()}) > room:
            dropped = paths.pop(0)
            order.remove(dropped)
            del widths[dropped]
    widths = {c: widths[c] for c in order}
    headed = {c: min(widths[c], text_.columns(headers[c])) for c in order}
    for cuttable, floors in (([c for c in order if kinds[c] is Fit.CUT], headed), (order, headed),
                             (order, {c: min(widths[c], NARROWEST) for c in order})):
        _shrink(widths, cuttable, floors, total(widths) - room)
    lines = [[headers[c] for c in order], ["-" * widths[c] for c in order],
             *([row[c] for c in order] for row in cells)]
    return "\n".join(GAP.join(text_.pad(text_.cut(ln[i], widths[c]), widths[c]) for i, c in enumerate(order)).rstrip()
                     for ln in lines)


def _shrink(widths: dict[int, int], columns: Sequence[int], floors: Mapping[int, int], excess: int) -> None:
    """Take `excess` columns from `columns` (of `widths`), the widest first, none below its
    floor: the cap `c` is the largest width at which cutting every column above it frees enough."""
    if excess <= 0 or not columns:
        return

    def freed(cap: int) -> int:
        return sum(widths[c] - max(cap, floors[c]) for c in columns if widths[c] > max(cap, floors[c]))

    cap = max(widths[c] for c in columns)
    while cap > 0 and freed(cap) < excess:
        cap -= 1
    for c in columns:
        widths[c] = min(widths[c], max(cap, floors[c]))


def emit(text: str, stream: TextIO | None = None) -> None:
    """Write `text` whole on `stream` (stdout), or raise: with PYTHONUNBUFFERED, a text stream
    writes straight to the file and drops what a partial write left (a pipe whose reader goes
    away mid-write), so the bytes go to the binary layer here, until all are written. A
    reader gone for good is then a BrokenPipeError, as without PYTHONUNBUFFERED."""
    out = stream if stream is not None else sys.stdout
    binary = getattr(out, "buffer", None)
    if binary is None:
        out.write(text)
        return
    out.flush()
    data = memoryview(text.encode(out.encoding, out.errors or "strict"))
    while data:
        written = binary.write(data)
        if written is None:  # a non-blocking file that is full for now
            time.sleep(0.01)
        data = data[written or 0:]
    binary.flush()


def dump_json(data: Any, stream: TextIO | None = None, *, hosts: bool = False) -> None:
    """`data` as JSON on `stream` (stdout). `hosts`: data holding what hosts said (reasons,
    check output, the paths they report), whose strings are then bounded (text.bounded);
    JSON escapes control characters itself."""
    out = stream if stream is not None else sys.stdout
    if hosts:
        data = text_.bounded(data)
    # Indented for a person at a terminal; compact (and several times faster) for a program.
    emit(json.dumps(data, indent=2 if out.isatty() else None) + "\n", out)


def join(items: Iterable[str]) -> str:
    return ",".join(items)


@dataclass(frozen=True)
class Row:
    """One instance's line in the deploy summary."""

    instance: str
    system: str
    path: str
    result: str
    reason: str
    seconds: Mapping[str, float] = field(default_factory=dict)
    # a deploy's timeline (issue 23): when each step started (seconds since the run began),
    # each step's outcome, the instance's wave; absent from other commands' rows
    started: Mapping[str, float] = field(default_factory=dict)
    steps: Mapping[str, str] = field(default_factory=dict)
    wave: int | None = None
    # `deploy --goal dry-activate`: what its activation would do (hive/units.py's DryRun.as_json)
    dry_run: Mapping[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"instance": self.instance, "system": self.system, "path": self.path,
                               "outcome": self.result, "reason": self.reason, "seconds": dict(self.seconds)}
        if self.wave is not None:
            out.update(wave=self.wave, started=dict(self.started), steps=dict(self.steps))
        if self.dry_run is not None:
            out["dryRun"] = dict(self.dry_run)
        return out


# Phases of an activation: their seconds are part of the activation's, not added to them.
PHASES = frozenset({"post-keys", "check", "confirm", "boot"})  # boot: a reboot's wait for the host


def total_seconds(seconds: Mapping[str, float]) -> float:
    """A row's time: its steps', without counting an activation's phases twice."""
    phases = PHASES | ({"rollback"} if "activate" in seconds else set())
    return sum(v for k, v in seconds.items() if k not in phases)


WHOLE_SHOWN = 10  # texts a terminal's table shows whole below it, when it had to cut them


def summary_table(rows: Sequence[Row], width: int | None = None) -> str:
    """The summary of a command over instances (deploy, push, reboot, rollback, upload-keys);
    `width`: fitted to a terminal (`table`), a line per instance, and then the reasons it cut
    (`with_whole`)."""
    shown = table([(r.instance, r.system, r.path or "-", r.result,
                    f"{total_seconds(r.seconds):.1f}", r.reason) for r in rows],
                  ["instance", "system", "store path", "result", "seconds", "reason"], width=width,
                  fit=(Fit.KEEP, Fit.KEEP, Fit.PATH, Fit.KEEP, Fit.KEEP, Fit.CUT))
    return with_whole(shown, [(r.instance, r.reason) for r in rows], width)


def with_whole(shown: str, said: Sequence[tuple[str, str]], width: int | None, what: str = "reasons") -> str:
    """`shown`, a table `table` fitted to `width` columns (None: whole, returned as it is) with a
    line per row after its header, and below it each row's text of `said` (instance, text)
    that its line does not hold whole (the part that says why is often the end: "…: Could not
    resolve hostname portico"), wrapped, each text once with its instances, the first
    WHOLE_SHOWN of them."""
    if width is None:
        return shown
    lines = shown.split("\n")[2:]  # a line per row, after the header and its rule
    cut: dict[str, list[str]] = {}  # the same text once, with its instances (a wave skipped, one cause)
    for (name, said_), line in zip(said, lines, strict=False):
        if said_ and text_.cell(said_) not in line:
            cut.setdefault(text_.cell(said_), []).append(name)
    if not cut:
        return shown
    room = max(width - 1, 1)
    out = [shown, "", text_.cut(f"{what} cut above, whole:", room)]
    for whole, names in list(cut.items())[:WHOLE_SHOWN]:
        out += text_.wrap(f"{text_.cell(text_.compact(names))}: {whole}", room)
    if len(cut) > WHOLE_SHOWN:
        out.append(text_.cut(f"and {len(cut) - WHOLE_SHOWN} more: -v or --json shows every one whole", room))
    return "\n".join(out)


# The inventory ------------------------------------------------------------------------------

def inventory_json(hive: Any, selected: set[str], result_of: Callable[[str], str | None] | None = None,
                   ssh_config: str | None = None) -> dict[str, Any]:
    """The inventory as `nix-hive build` prints it: the original tool's shape (top-level
    `paths`, `systems.<s>.result`, `ssh`, `instances.<i>` with system, store, tags), plus more."""
    systems: dict[str, Any] = {}
    users_of: dict[str, list[str]] = {}  # in one pass: a scan per system grows as systems times instances
    for i in sorted(hive.instances.values(), key=lambda i: i.name):
        users_of.setdefault(i.system, []).append(i.name)
    for name, s in sorted(hive.systems.items()):
        users = users_of.get(name, [])
        systems[name] = {
            "result": result_of(name) if result_of is not None else None,
            "paths": {**dict.fromkeys(s.unevaluated), **s.paths},  # null: not evaluated (builds nothing)
            "system": s.platform,
            "tags": list(s.tags),
            "nixpkgs": s.nixpkgs,
            "buildHost": s.build_host,
            "instances": users,
            "selected": any(u in selected for u in users),
        }
    instances = {
        name: {
            "system": i.system,
            "store": i.store,
            "tags": list(i.tags),
            "ssh": dict(i.ssh),
            "hostKey": i.host_key,
            "keys": {k: hive.keys[k].describe() for k in i.keys},
            "address": i.address,
            "selected": name in selected,
        }
        for name, i in sorted(hive.instances.items())
    }
    out: dict[str, Any] = {"file": str(hive.file), "paths": {**dict.fromkeys(hive.unevaluated), **hive.paths},
                           "systems": systems, "instances": instances}
    if hive.flake is not None:
        out["flake"] = {"ref": hive.flake, "attr": hive.attr, **dict(hive.flake_inputs or {})}
    if ssh_config is not None:
        out["ssh"] = ssh_config
    return out


def instance_rows(hive: Any, selected: set[str]) -> list[tuple[Any, ...]]:
    return [(n, i.system, i.store or "-", join(i.tags) or "-", i.address)
            for n, i in sorted(hive.instances.items()) if n in selected]


def system_rows(hive: Any, selected: set[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    users = collections.Counter(i.system for n, i in hive.instances.items() if n in selected)
    for name, s in sorted(hive.systems.items()):
        if users[name]:
            paths = " ".join(f"{k}={v}" for k, v in sorted(s.paths.items()))
            if s.unevaluated:  # a command that builds nothing: named, not evaluated
                paths = f"{' '.join(sorted(s.unevaluated))} (not evaluated) {paths}".strip()
            if s.nixpkgs:  # a flake input: the paths' nixpkgs is not used
                paths = f"nixpkgs={s.nixpkgs} (given)"
            rows.append((name, str(users[name]), join(s.tags) or "-", paths or "-"))
    return rows


# A cell of the plan's table: `deploy` waits for every instance's last step, and a table pads
# every row to its widest cell, so one whole list would make the table grow as the square of
# the instances (750 MB at 5,000). `nix-hive plan --json` has every list whole.
PLAN_CELL = 200
# a task's "waits for" (the deploy task waits for every instance): a long list is summed up in
# this much (its count, its first and last tasks), not padding every row of a 5,000-instance
# plan to 200 characters
PLAN_DEPS = 80


def plan_rows(plan: Any) -> list[tuple[str, ...]]:
    """`nix-hive plan`: a row per task, in the order the plan lists them, each cell at most
    about PLAN_CELL characters, what it waits for PLAN_DEPS (a long list summarised: its count,
    its first and last items)."""
    skipped: dict[Any, str] = {s: s.value for s in plan.skip}
    return [(str(t.id), text_.summary(list(map(str, (*t.setup, *t.deps))), "tasks", PLAN_DEPS) or "-",
             skipped.get(t.skippable, "-"), text_.bound(t.doc, PLAN_CELL))
            for t in plan.tasks]
