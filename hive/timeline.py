"""A picture of where a deploy's time went (issue 23): `nix-hive report FILE --svg OUT`, or
`deploy --timeline OUT`, draws the run that `--report FILE` recorded as plain SVG.

One row per instance, grouped by wave, with a bar per step (build, store, push, keys,
activate) from when it started, coloured by its outcome; an activation's phases (keys after
it, a reboot's wait, checks, the confirmation or the rollback) as a strip inside its bar, laid
end to end up to its end (the report gives their seconds, not their start). Above the waves,
a row per build group and per relay store's copy; a dashed line where each wave opened.
Every bar has a `<title>` (hover: what, when, how long, why). A report of an older nix-hive
has no start times: its steps are laid end to end from 0, and the picture says so.

The SVG is built as text, every piece of text escaped into well-formed XML (a host's reason
may hold anything); no plotting dependency. A report read from a file is checked field by
field: a malformed one is one error line naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hive import text as text_
from hive.errors import InputError, attr_path

STEPS = ("build", "store", "push", "keys", "activate")
PHASES = ("post-keys", "boot", "check", "confirm", "rollback")  # in the order they happen

# Fill colours by outcome: a darker and a lighter tone, alternating along a row's steps so
# that two bars side by side stay apart.
OUTCOME_COLOURS: Mapping[str, tuple[str, str]] = {
    "ok": ("#2e7d32", "#66bb6a"),
    "unchanged": ("#78909c", "#b0bec5"),
    "skipped": ("#bdbdbd", "#e0e0e0"),
    "failed": ("#c62828", "#ef5350"),
    "rolled back": ("#ef6c00", "#ffa726"),
    "timed out": ("#6a1b9a", "#ab47bc"),
}
UNKNOWN_COLOURS = ("#5d4037", "#8d6e63")
PHASE_COLOURS: Mapping[str, str] = {
    "post-keys": "#5e35b1", "boot": "#6d4c41", "check": "#1565c0", "confirm": "#00838f", "rollback": "#d84315",
}

# Layout, in pixels.
MARGIN = 16
CHART = 1000  # the time axis' length
FEW = 60  # up to this many rows, roomy rows; more: thin ones


def colour(outcome: str, light: bool = False) -> str:
    """The fill of a bar of this outcome."""
    return OUTCOME_COLOURS.get(outcome, UNKNOWN_COLOURS)[1 if light else 0]


@dataclass(frozen=True)
class Bar:
    """One step (or an activation's phase) on a row: when, how long, how it ended."""

    step: str
    start: float
    seconds: float
    outcome: str
    phase: bool = False

    @property
    def end(self) -> float:
        return self.start + self.seconds


@dataclass(frozen=True)
class Lane:
    """A row of the picture: an instance, a build group or a relay store's copy."""

    label: str
    kind: str  # "instance", "build" or "relay"
    outcome: str
    bars: tuple[Bar, ...]
    about: str = ""  # the row's hover text: its reason, the instances behind a relay
    wave: int = 0  # an instance's wave (1-based); 0 for builds and relays


@dataclass(frozen=True)
class Timeline:
    """A run, ready to draw."""

    title: str
    lanes: tuple[Lane, ...]
    waves: tuple[tuple[int, float], ...]  # (wave, seconds since the run began when it opened)
    seconds: float  # the run's length (at least the last bar's end)
    estimated: bool = False  # an older report: no start times, steps laid end to end


# Reading a report --------------------------------------------------------------------------
#
# A report may have been edited by hand, or be anything named FILE.json: every field the
# picture reads is checked for its type and range, and the first that is not what nix-hive
# writes is one `InputError` naming the file and the field (exit 2), never a traceback.
# Fields a report may lack (an older nix-hive's) take their defaults; unknown ones are left.

MAX_SECONDS = 1e9  # about 31 years: no run lasts longer (a start plus a length stays finite)
MAX_WAVE = 1_000_000
NOT_A_REPORT = ("not a nix-hive report (expected what deploy --report writes: an object whose instances "
                "each have an instance name and seconds)")


def load(path: Path) -> Timeline:
    """The timeline of the report in `path`; an `InputError` (exit 2) when it cannot be read
    or is not a nix-hive report."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise InputError(f"{path}: not a nix-hive report (not JSON)") from None
    except RecursionError:
        raise InputError(f"{path}: not a nix-hive report (JSON nested too deeply)") from None
    return parse(data, str(path))


class _Fields:
    """The checked reading of one report: each getter returns the field's value or raises
    the `InputError` that names it."""

    def __init__(self, shown: str) -> None:
        self.shown = shown

    def fail(self, where: list[str | int], what: str) -> NoReturn:
        raise InputError(f"{self.shown}: not a nix-hive report: {text_.line(attr_path(where), 200)}: {what}")

    def mapping(self, value: Any, where: list[str | int]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"{_kind(value)} is not an object")
        return value

    def array(self, value: Any, where: list[str | int]) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(where, f"{_kind(value)} is not a list")
        return value

    def text(self, value: Any, where: list[str | int], default: str = "") -> str:
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(where, f"{_kind(value)} is not a string")
        return value

    def texts(self, value: Any, where: list[str | int]) -> list[str]:
        return [self.text(v, [*where, n]) for n, v in enumerate(self.array(value, where))]

    def seconds(self, value: Any, where: list[str | int]) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, f"{_kind(value)} is not a number of seconds")
        if not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value <= MAX_SECONDS:
            self.fail(where, f"{_kind(value)} is not a number of seconds from 0 to {MAX_SECONDS:.0e}")
        return float(value)

    def seconds_map(self, value: Any, where: list[str | int]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, v in self.mapping({} if value is None else value, where).items():
            if (n := self.seconds(v, [*where, key])) is not None:
                out[key] = n
        return out

    def wave(self, value: Any, where: list[str | int]) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WAVE:
            self.fail(where, f"{_kind(value)} is not a wave number from 1 to {MAX_WAVE:,}")
        return value


def _kind(value: Any) -> str:
    """A value as an error line names it: short, one line."""
    if isinstance(value, dict | list):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 30:
        return f"a number of {len(str(abs(value)))} digits"
    return text_.line(json.dumps(value), 60)


def _changes(found: Any) -> str:
    """deploy --diff/--confirm's groups that change, for the title: "; changing: web-1…web-9
    (web), db-1, db-2 (db)" (nothing when the report has none, or another shape)."""
    groups = found.get("groups") if isinstance(found, dict) else None
    if not isinstance(groups, list):
        return ""
    shown = [f"{text_.compact([str(i) for i in g['instances']])} ({', '.join(str(s) for s in g.get('systems', []))})"
             for g in groups if isinstance(g, dict) and g.get("state") in ("changes", "new")
             and isinstance(g.get("instances"), list)]
    return f"; changing: {text_.line(', '.join(shown), 300)}" if shown else ""


def parse(data: Any, shown: str) -> Timeline:
    """The timeline of a report's JSON (`deploy --report FILE`); `shown` names it in errors."""
    rows = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and isinstance(r.get("instance"), str) and isinstance(r.get("seconds"), dict)
            for r in rows):
        raise InputError(f"{shown}: {NOT_A_REPORT}")
    assert isinstance(data, dict)
    f = _Fields(shown)
    estimated = any("started" not in r for r in rows)
    lanes = [*_shared_lanes(f, data.get("builds"), "build"), *_shared_lanes(f, data.get("relays"), "relay")]
    lanes += [_instance_lane(f, r, ["instances", n], estimated) for n, r in enumerate(rows)]
    lanes.sort(key=lambda lane: (lane.kind != "build", lane.kind != "relay", lane.wave))  # stable: order kept
    waves: list[tuple[int, float]] = []
    for n, w in enumerate(f.array(data.get("waves"), ["waves"])):
        w = f.mapping(w, ["waves", n])
        wave, at = f.wave(w.get("wave"), ["waves", n, "wave"]), f.seconds(w.get("started"), ["waves", n, "started"])
        if at is not None:
            waves.append((wave, at))
    ends = [b.end for lane in lanes for b in lane.bars]
    length = max([*ends, f.seconds(data.get("seconds"), ["seconds"]) or 0.0, 0.1])
    counts: dict[str, int] = {}
    for lane in lanes:
        if lane.kind == "instance":
            counts[lane.outcome] = counts.get(lane.outcome, 0) + 1
    tally = ", ".join(f"{n} {o}" for o, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    began = f.text(data.get("began"), ["began"])
    f.text(data.get("outcome"), ["outcome"])
    title = (f"nix-hive deploy{' at ' + began if began else ''}: {len(rows)} instance{'s' if len(rows) != 1 else ''}"
             f"{' (' + tally + ')' if tally else ''}, {length:.1f} s{_changes(data.get('diff'))}")
    return Timeline(title, tuple(lanes), tuple(waves), length, estimated)


def _shared_lanes(f: _Fields, items: Any, kind: str) -> list[Lane]:
    """The rows of the work instances share: build groups, relay stores' copies."""
    lanes: list[Lane] = []
    field = "builds" if kind == "build" else "relays"
    for n, item in enumerate(f.array(items, [field])):
        at: list[str | int] = [field, n]
        item = f.mapping(item, at)
        systems = f.texts(item.get("systems"), [*at, "systems"])
        if kind == "build":
            label = "build " + "+".join(systems)
            host = f.text(item.get("host"), [*at, "host"])
            if host:
                label += f" on {host}"
            about = ""
        else:
            label = f"store {f.text(item.get('store'), [*at, 'store'], '?')}"
            for extra in ("owner", "upstream"):
                f.text(item.get(extra), [*at, extra])
            behind = f.texts(item.get("instances"), [*at, "instances"])
            about = f"{len(behind)} instance(s) substitute from it: {text_.summary(behind, 'instances')}"
        outcome = f.text(item.get("outcome"), [*at, "outcome"]) or "skipped"
        start = f.seconds(item.get("started"), [*at, "started"])
        seconds = f.seconds(item.get("seconds"), [*at, "seconds"])
        bars = (Bar(kind if kind == "build" else "store", start, seconds, outcome),) if (
            start is not None and seconds) else ()
        reason = f.text(item.get("reason"), [*at, "reason"])
        lanes.append(Lane(label, kind, outcome, bars, "; ".join(x for x in (about, reason) if x)))
    return lanes


def _instance_lane(f: _Fields, row: Mapping[str, Any], where: list[str | int], estimated: bool) -> Lane:
    seconds = f.seconds_map(row.get("seconds"), [*where, "seconds"])
    started = f.seconds_map(row.get("started"), [*where, "started"])
    outcome = f.text(row.get("outcome"), [*where, "outcome"], "?")
    reason = f.text(row.get("reason"), [*where, "reason"])
    for extra in ("system", "path"):
        f.text(row.get(extra), [*where, extra])
    steps = None
    if row.get("steps") is not None:
        given = f.mapping(row["steps"], [*where, "steps"])
        steps = {k: f.text(v, [*where, "steps", k]) for k, v in given.items()}
    failed_step = reason.split(":", 1)[0] if outcome != "ok" else ""
    bars: list[Bar] = []
    cursor = 0.0
    for step in STEPS:
        if step not in seconds and step not in started:  # a step that took no time has a start only
            continue
        # an older report has no steps: the step its reason names failed, those before it went well
        result = steps.get(step, "ok") if steps is not None else outcome if step == failed_step else "ok"
        start = cursor if estimated else started.get(step, cursor)
        bars.append(Bar(step, start, seconds.get(step, 0.0), result))
        cursor = start + seconds.get(step, 0.0)
    activation = next((b for b in bars if b.step == "activate"), None)
    if activation is not None:  # its phases, end to end up to its end
        phases = [(p, seconds[p]) for p in PHASES if seconds.get(p)]
        at = max(activation.start, activation.end - sum(s for _, s in phases))
        for name, length in phases:
            length = min(length, max(0.0, activation.end - at))
            bars.append(Bar(name, at, length, "rolled back" if name == "rollback" else "ok", phase=True))
            at += length
    wave = f.wave(row["wave"], [*where, "wave"]) if row.get("wave") is not None else 1
    return Lane(row["instance"], "instance", outcome, tuple(bars), reason, wave)


# Drawing -----------------------------------------------------------------------------------

def _esc(value: Any, limit: int = 400) -> str:
    """Text for SVG: one printable line (control characters shown as escapes, as on a
    terminal, and invalid in XML anyway), bounded, XML-escaped (quotes too: attributes)."""
    return text_.xml(str(value), limit)


def _tick(length: float) -> float:
    """A round tick interval (1, 2 or 5 times a power of ten) giving about 10 ticks."""
    raw = length / 10
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def _fit(label: str, chars: int) -> str:
    return label if len(label) <= chars else label[:max(1, chars - 1)] + "…"


def render(timeline: Timeline) -> str:
    """The SVG document."""
    instances = sum(1 for lane in timeline.lanes if lane.kind == "instance")
    few = len(timeline.lanes) <= FEW
    row_h, bar_h, font = (20.0, 14.0, 12.0) if few else (12.0, 9.0, 9.5)
    char_w = font * 0.6
    label_w = int(min(320, max(120, max((len(lane.label) for lane in timeline.lanes), default=10) * char_w + 28)))
    left = MARGIN + label_w
    width = left + CHART + MARGIN
    scale = CHART / timeline.seconds

    def x(t: float) -> float:
        return left + t * scale

    out: list[str] = []
    y = MARGIN + 16.0
    out.append(f'<text x="{MARGIN}" y="{y}" font-size="15" font-weight="bold">{_esc(timeline.title)}</text>')
    y += 20
    if timeline.estimated:
        out.append(f'<text x="{MARGIN}" y="{y}" font-size="12" fill="#c62828">This report has no start times '
                   '(an older nix-hive wrote it): each row\'s steps are laid end to end from 0.</text>')
        y += 18
    y = _legend(out, y)
    axis_top = y + 14
    top = axis_top + 10
    body: list[str] = []
    bands: list[str] = []
    cy: float = top
    section = None
    for lane in timeline.lanes:
        heading = {"build": "builds", "relay": "relay stores"}.get(lane.kind, f"wave {lane.wave}")
        if heading != section:
            section = heading
            count = sum(1 for other in timeline.lanes if other.kind == lane.kind and other.wave == lane.wave)
            opened = next((at for n, at in timeline.waves if n == lane.wave), None) if lane.kind == "instance" else None
            note = f"{count} instance{'s' if count != 1 else ''}" if lane.kind == "instance" else f"{count}"
            if opened is not None:
                note += f", opened at {opened:.1f} s"
            cy += 4
            bands.append(f'<rect x="{MARGIN}" y="{cy}" width="{width - 2 * MARGIN}" height="16" fill="#eceff1"/>')
            body.append(f'<text x="{MARGIN + 4}" y="{cy + 12}" font-size="11" font-weight="bold" fill="#37474f">'
                        f'{_esc(heading)} <tspan font-weight="normal">({_esc(note)})</tspan></text>')
            cy += 18
        _lane(body, lane, cy, row_h, bar_h, font, label_w, x)
        cy += row_h
    bottom = cy + 4
    grid = _axis(timeline, axis_top, top, bottom, x, left)
    marks = []
    for n, at in timeline.waves:
        if n == 1:
            continue
        marks.append(f'<line x1="{x(at):.1f}" y1="{top}" x2="{x(at):.1f}" y2="{bottom}" stroke="#455a64" '
                     f'stroke-width="1.2" stroke-dasharray="5,3"><title>wave {n} opened at {at:.1f} s</title></line>')
        marks.append(f'<text x="{x(at) + 3:.1f}" y="{top + 9}" font-size="10" fill="#455a64">wave {n}</text>')
    height = bottom + 40
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
            f'viewBox="0 0 {width} {height:.0f}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif" '
            f'data-instances="{instances}">')
    background = f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>'
    footer = (f'<text x="{left}" y="{height - 8}" font-size="10" fill="#607d8b">seconds since the run began; '
              'hover a bar for its step, start, length and reason</text>')
    return "\n".join([head, f"<title>{_esc(timeline.title)}</title>", background, *out, *bands, *grid, *body, *marks,
                      footer, "</svg>"]) + "\n"


def _legend(out: list[str], y: float) -> float:
    """The colours: outcomes, then an activation's phases. Returns the next free y."""
    at = float(MARGIN)
    items: list[tuple[str, str]] = [(colour(o), o) for o in OUTCOME_COLOURS]
    items += [(c, p) for p, c in PHASE_COLOURS.items()]
    out.append(f'<text x="{at}" y="{y + 10}" font-size="11" fill="#37474f">outcome:</text>')
    at += 58
    for n, (fill, name) in enumerate(items):
        if n == len(OUTCOME_COLOURS):
            at += 10
            out.append(f'<text x="{at}" y="{y + 10}" font-size="11" fill="#37474f">phases of an activation:</text>')
            at += 138
        out.append(f'<rect x="{at}" y="{y + 1}" width="12" height="11" fill="{fill}"/>')
        out.append(f'<text x="{at + 16}" y="{y + 10}" font-size="11">{_esc(name)}</text>')
        at += 16 + len(name) * 6.6 + 12
    out.append(f'<text x="{MARGIN}" y="{y + 26}" font-size="11" fill="#37474f">steps, left to right: build, store '
               '(the relay\'s copy), push, keys, activate; shades alternate between neighbouring steps</text>')
    return y + 32


def _axis(timeline: Timeline, axis_top: float, top: float, bottom: float, x: Callable[[float], float],
          left: float) -> list[str]:
    """Tick labels above the rows and below them, and light vertical grid lines."""
    step = _tick(timeline.seconds)
    out = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#90a4ae"/>']
    n = 0
    while n * step <= timeline.seconds + 1e-9:
        t = n * step
        label = f"{t:g} s"
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{bottom}" stroke="#eceff1"/>')
        for ty in (axis_top, bottom + 12):
            out.append(f'<text x="{x(t):.1f}" y="{ty}" font-size="10" fill="#607d8b" text-anchor="middle">'
                       f'{_esc(label)}</text>')
        n += 1
    return out


def _lane(out: list[str], lane: Lane, y: float, row_h: float, bar_h: float, font: float, label_w: int,
          x: Callable[[float], float]) -> None:
    """One row: a status square, the label (whole in its hover text), the bars."""
    mid = y + row_h / 2
    dot = bar_h - 2
    about = f"{lane.label}: {lane.outcome}" + (f" ({lane.about})" if lane.about else "")
    bad = lane.outcome not in ("ok", "unchanged", "skipped")  # failed rows stand out among hundreds
    emphasis = f' font-weight="bold" fill="{colour(lane.outcome)}"' if bad else ""
    out.append(f'<g><title>{_esc(about, 1200)}</title>'
               f'<rect x="{MARGIN + 2}" y="{mid - dot / 2:.1f}" width="{dot}" height="{dot}" '
               f'fill="{colour(lane.outcome)}"/>'
               f'<text x="{MARGIN + dot + 6}" y="{mid + font * 0.35:.1f}" font-size="{font}"{emphasis}>'
               f'{_esc(_fit(lane.label, int((label_w - dot - 12) / (font * 0.6))))}</text></g>')
    light = False
    for bar in lane.bars:
        if bar.phase:
            continue
        _bar(out, lane, bar, x, y + (row_h - bar_h) / 2, bar_h, colour(bar.outcome, light), font)
        light = not light
    strip = max(3.0, bar_h * 0.4)
    for bar in lane.bars:
        if bar.phase:
            _bar(out, lane, bar, x, y + (row_h + bar_h) / 2 - strip, strip,
                 PHASE_COLOURS.get(bar.step, "#000000"), font)


def _bar(out: list[str], lane: Lane, bar: Bar, x: Callable[[float], float], top: float, height: float,
         fill: str, font: float) -> None:
    left = x(bar.start)
    width = max(1.5, x(bar.end) - left)
    what = f"{lane.label} · {bar.step} · {bar.outcome} · started at {bar.start:.2f} s · {bar.seconds:.2f} s"
    if bar.outcome not in ("ok", "unchanged") and lane.about:
        what += f" · {lane.about}"
    out.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{fill}" '
               f'stroke="#ffffff" stroke-width="0.6" data-step="{_esc(bar.step)}" data-outcome="{_esc(bar.outcome)}">'
               f'<title>{_esc(what, 1200)}</title></rect>')
    if not bar.phase and width >= len(bar.step) * font * 0.6 + 6 and height >= 12:
        out.append(f'<text x="{left + 3:.1f}" y="{top + height / 2 + font * 0.35:.1f}" font-size="{font - 1}" '
                   f'fill="#ffffff" pointer-events="none">{_esc(bar.step)}</text>')


def write(timeline: Timeline, target: Path) -> None:
    """Write the SVG to `target` whole (a new name, then renamed over it)."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(render(timeline), encoding="utf-8")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
