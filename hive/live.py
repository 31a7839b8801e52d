"""The live view of a run on a terminal (issue 23): what the progress lines say, redrawn in
place instead of scrolling by. A header counts each step's outcomes so far, with the elapsed
time; then a line per host at work now (its step, for how long, the last thing it said), the
failed hosts with their reason (they stay in view), the last messages of the run. The summary
table follows when the view ends, as after the line log.

It is another `Progress` (report.py) behind the same calls, chosen by the CLI when stderr is a
terminal (`wanted`): pipes, `-q`, `-v`, CI and `TERM=dumb` keep the line log. Plain VT100
escapes, no dependency: the frame is drawn from its first line again (cursor up, each line
rewritten and erased to its end, the rest of the screen erased) as soon as something changes,
at most 4 times a second, and once a second when nothing does (the clocks go on); cut to the
terminal's size, in its columns (a wide character takes two), as it is at each redraw, and
drawn again at once when the terminal is resized (SIGWINCH). Before the run, while the
deployment is evaluated, it is one line saying so (`waiting`), erased when the wait ends. The
cursor is hidden while the view runs and shown again when it ends, whatever ends it
(`__exit__`: the run's end, Ctrl-C, SIGTERM, a crash), and whenever it stops: Ctrl-Z
(SIGTSTP) shows it before the process stops and hides it again, with a whole new frame, on
`fg` (SIGCONT); Ctrl-\\ (SIGQUIT) shows it before the process dies of it. A signal handler
takes no lock (the thread it interrupted may hold it): it writes to the descriptor itself or
sets a flag the drawing thread reads. `render` is a pure function of a `Snapshot` and a size.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, TextIO

from hive import text as text_
from hive.outcome import Status
from hive.report import Progress

REDRAW = 0.25  # seconds between two redraws, at least: 4 a second at most
TICK = 1.0  # a redraw at least this often, nothing new or not: the seconds go on
MESSAGES = 2  # the run's last messages shown (waves opened, warnings, "interrupted: ...")
OUTCOMES = frozenset(str(s) for s in Status)  # a step's status that ends it; any other says it runs
FAILURES = frozenset(str(s) for s in Status if s.is_failure)
HIDE, SHOW, ERASE_LINE, ERASE_BELOW = "\x1b[?25l", "\x1b[?25h", "\x1b[K", "\x1b[J"
MORE = text_.MORE
# Signals that stop the process or end it with a core dump, which would leave the cursor hidden
STOPS = (signal.SIGTSTP, signal.SIGCONT, signal.SIGQUIT)


def wanted(stream: TextIO, *, quiet: bool = False, verbose: bool = False, off: bool = False,
           env: Mapping[str, str] | None = None) -> bool:
    """Whether a run shows the live view on `stream`: a terminal, not `-q` (nothing to show),
    not `-v` (the commands' lines need a log), not `--no-live`, not CI (`CI` set: its log is
    read later, as text) nor a terminal that cannot move its cursor (`TERM` dumb or unset)."""
    env = os.environ if env is None else env
    if quiet or verbose or off or env.get("CI") or env.get("TERM", "dumb") in ("", "dumb"):
        return False
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


# What is drawn ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """A host (or build group) at work: its step, for how long, the last thing it said."""

    target: str
    step: str
    seconds: float
    last: str = ""


@dataclass(frozen=True)
class Failed:
    """A host whose step failed, and why."""

    target: str
    step: str
    status: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """What the view shows at one moment: `counts` is each step's outcomes so far, steps in
    the order they first appeared."""

    elapsed: float
    counts: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    working: tuple[Work, ...] = ()
    failed: tuple[Failed, ...] = ()
    messages: tuple[str, ...] = ()
    done: bool = False
    waiting: str = ""  # what the run waits for before its steps start (`evaluating hive.nix…`)


def fit(line: str, width: int) -> str:
    """`line` in `width` terminal columns, less one (a character in the last column leaves
    some terminals waiting to wrap), cut with an ellipsis."""
    return text_.cut(line, max(width - 1, 1))


def clock(seconds: float) -> str:
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m{secs:02d}s"


def _counts(snap: Snapshot, width: int) -> list[str]:
    """A group per step (`push: 3 ok, 1 failed, 2 running`), packed into lines of `width`."""
    running = collections.Counter(w.step for w in snap.working)
    steps = [s for s, _ in snap.counts] + [s for s in running if s not in dict(snap.counts)]
    done = dict(snap.counts)
    groups = []
    for step in steps:
        parts = [f"{n} {outcome}" for outcome, n in done.get(step, ())]
        if running[step]:
            parts.append(f"{running[step]} running")
        groups.append(f"{step}: {', '.join(parts)}")
    lines: list[str] = []
    for group in groups:
        if lines and text_.columns(lines[-1]) + 3 + text_.columns(group) <= width - 1:
            lines[-1] += f" | {group}"
        else:
            lines.append(group)
    return lines


def _section(title: str, entries: list[str], room: int) -> list[str]:
    """A titled list in at most `room` lines, its tail as `… and N more`."""
    if room <= 0 or not entries:
        return []
    if len(entries) < room:
        return [title, *entries]
    shown = max(room - 2, 0)
    return [title, *entries[:shown], f"  {MORE} and {len(entries) - shown} more"][:room]


def render(snap: Snapshot, width: int, height: int) -> list[str]:
    """The frame for a terminal of `width` columns and `height` rows: at most `height - 1`
    lines (the cursor's line stays free) of at most `width - 1` columns. The header and
    the counts first; then the failed hosts (at least half the room left, more if the hosts
    at work need less) and the hosts at work, longest first, each list capped."""
    width, height = max(width, 8), max(height, 2)
    working = sorted(snap.working, key=lambda w: (-w.seconds, w.target))
    state = "done" if snap.done else snap.waiting or f"{len(working)} at work"
    failed = f", {len(snap.failed)} failed" if snap.failed else ""
    head = [f"nix-hive  {clock(snap.elapsed)}  {state}{failed}", *_counts(snap, width),
            *(f"  {m}" for m in snap.messages[-MESSAGES:])]
    room = height - 1
    head = head[:room]
    room -= len(head)
    name = min(max([text_.columns(t) for t in [*(w.target for w in working), *(f.target for f in snap.failed)]],
                   default=0), 24)
    failures = [f"  {text_.pad(f.target, name)}  {f.step:<9} {_why(f)}" for f in snap.failed]
    work = [f"  {text_.pad(w.target, name)}  {w.step:<9} {clock(w.seconds):>7}  {w.last}".rstrip()
            for w in working]
    need_failed = len(failures) + 1 if failures else 0
    need_work = len(work) + 1 if work else 0
    for_failed = min(need_failed, max(room // 2 + room % 2, room - need_work))
    lines = [*head, *_section(f"failed ({len(failures)}):", failures, for_failed),
             *_section(f"at work ({len(work)}):", work, room - for_failed)]
    return [fit(ln, width) for ln in lines]


# The view -----------------------------------------------------------------------------------

class Live(Progress):
    """A `Progress` drawn as a live view on a terminal, while it is entered (`with`); before
    and after, its calls print progress lines as the line log does. A failed step's log
    (`block`) is kept and printed when the view ends, under its step's line."""

    def __init__(self, stream: TextIO | None = None, *,
                 size: Callable[[], tuple[int, int]] | None = None) -> None:
        super().__init__(stream)
        self._size = size or self._terminal_size
        self._state = threading.Lock()
        self._counts: dict[str, collections.Counter[str]] = {}
        self._working: dict[str, tuple[str, float, str]] = {}  # target -> step, since, last line
        self._failed: dict[str, Failed] = {}
        self._messages: collections.deque[str] = collections.deque(maxlen=MESSAGES)
        self._logs: list[tuple[str, str]] = []  # a failed step's line, and its log
        self._last_failed = threading.local()  # the failed step a thread reported last (for `block`)
        self._on = False
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frame: list[str] = []  # the lines drawn last
        self._sigterm: Any = None
        self._previous: dict[int, Any] = {}  # the handlers of STOPS and SIGWINCH before the view
        self._now = False  # a new frame at once: set by SIGWINCH's and SIGCONT's handlers (a flag, no lock)
        self._waiting = ""  # what the view says it waits for, while it is one line (`waiting`)

    # -- Progress's calls ------------------------------------------------------------------

    def line(self, text: str) -> None:
        if not self._on:
            super().line(text)
            return
        with self._state:
            self._messages.append(text_.lines(text)[0])
        self._dirty.set()

    def started(self, step: str, target: str) -> None:
        with self._state:
            self._working[target] = (step, time.monotonic(), "")
        self._dirty.set()

    def step(self, step: str, target: str, status: str, detail: str = "") -> None:
        if not self._on:
            super().step(step, target, status, detail)
            return
        with self._state:
            if status in OUTCOMES:
                self._working.pop(target, None)
                self._counts.setdefault(step, collections.Counter())[status] += 1
                if status in FAILURES:
                    reason = text_.lines(detail)[0] if detail else ""
                    failed = self._failed[target] = Failed(target, step, status, reason)
                    self._last_failed.line = f"{step} {target}: {_why(failed)}"  # its log's heading
            else:  # still at work: "..." and what it is doing, or what a build is doing now
                said = " ".join(p for p in (status if status != "..." else "", detail) if p)
                current = self._working.get(target)
                since = current[1] if current is not None and current[0] == step else time.monotonic()
                self._working[target] = (step, since, text_.lines(said)[0] if said else "")
        self._dirty.set()

    def block(self, text: str, indent: str = "    | ") -> None:
        if not self._on:
            super().block(text, indent)
            return
        if text.strip():
            with self._state:
                self._logs.append((getattr(self._last_failed, "line", ""), text))

    # -- the frame ---------------------------------------------------------------------------

    def snapshot(self, *, done: bool = False) -> Snapshot:
        now = time.monotonic()
        with self._state:
            return Snapshot(
                elapsed=now - self._start,
                counts=tuple((s, tuple(sorted(c.items(), key=lambda kv: _order(kv[0]))))
                             for s, c in self._counts.items()),
                working=tuple(Work(t, s, now - since, last) for t, (s, since, last) in self._working.items()),
                failed=tuple(self._failed.values()),
                messages=tuple(self._messages),
                done=done,
                waiting=self._waiting)

    def _terminal_size(self) -> tuple[int, int]:
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            return 80, 24
        return size.columns or 80, size.lines or 24

    def _draw(self, *, done: bool = False) -> None:
        width, height = self._size()
        lines = render(self.snapshot(done=done), width, height)
        if self._waiting:  # one line, redrawn where it is: what else is printed meanwhile stays
            self._put(f"\r{lines[0]}{ERASE_LINE}")
            return
        self._put(self._back(width) + "".join(f"{ln}{ERASE_LINE}\n" for ln in lines) + ERASE_BELOW)
        self._frame = lines

    def _back(self, width: int) -> str:
        """Back to the previous frame's first line: as many rows as it takes at the width now
        (narrowed, a terminal that reflows wraps its longer lines), in terminal columns."""
        up = sum(max(1, math.ceil(text_.columns(ln) / max(width, 1))) for ln in self._frame)
        return "\r" + (f"\x1b[{up}A" if up else "")

    def _put(self, data: str) -> None:
        with self._lock:
            if self.quiet:
                return
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # nobody reads any more: the run goes on
                self.quiet = True

    def _loop(self) -> None:
        """Draw a frame as soon as something changed or the terminal was resized, but never
        two within REDRAW; else one every TICK."""
        drawn = -math.inf
        while not self._stop.is_set():
            changed = self._dirty.is_set() or self._now
            wait = drawn + (REDRAW if changed else TICK) - time.monotonic()
            if wait > 0:
                if changed:
                    self._stop.wait(wait)
                else:  # a change wakes it at once; a resize (a flag: see _resize) within REDRAW
                    self._dirty.wait(min(wait, REDRAW))
                continue
            self._dirty.clear()
            self._now = False
            self._draw()
            drawn = time.monotonic()

    # -- on and off --------------------------------------------------------------------------

    def __enter__(self) -> Live:
        if self.quiet:
            return self
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                # Until the run handles SIGTERM itself (orchestrate.Signals), end as it would,
                # through `__exit__`: the default action would leave the cursor hidden.
                self._sigterm = signal.signal(signal.SIGTERM, _terminated)
            for signum in STOPS:  # the terminal as it was, whenever the process stops or quits
                self._previous[signum] = signal.signal(signum, self._stopping)
            self._previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, self._resize)
        self._on = True
        self._stop.clear()
        self._frame = []
        self._put(HIDE)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="nix-hive live view")
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._on:
            return
        try:
            self._stop.set()
            self._dirty.set()
            if self._thread is not None:
                self._thread.join(timeout=2)
            if self._waiting:  # nothing of the wait stays: what follows has the line
                self._put(f"\r{ERASE_LINE}")
            else:
                self._draw(done=True)
        finally:
            self._on = False
            self._put(SHOW)
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm = None
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = {}
        with self._state:
            logs = list(self._logs)
        for line, log in logs:  # the failed steps' logs, each under a line saying whose and why
            if line:
                self._write([line])
            super().block(log)

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """Before the run (its deployment evaluated): the view is one line saying `what`, with
        the elapsed time, redrawn where it is (a warning printed meanwhile stays whole), and
        erased when the wait ends, however it ends (the run's frame, a password prompt or an
        error line follow in its place)."""
        self._waiting = what
        try:
            with self:
                yield
        finally:
            self._waiting = ""

    def _raw(self, escape: str) -> None:
        """Write an escape from a signal handler: straight to the descriptor, taking no lock
        (the interrupted thread may hold the stream's or the view's)."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(self.stream.fileno(), escape.encode())

    def _resize(self, signum: int, frame: FrameType | None) -> None:
        """SIGWINCH: the drawing thread draws a new frame, at the new size, within REDRAW. A
        flag, nothing more: the handler may have interrupted a thread holding the view's locks."""
        self._now = True

    def _stopping(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-Z, `fg`, Ctrl-\\: the cursor shown before the process stops (or dies of
        SIGQUIT, its default action then taken), hidden again and a new frame drawn below
        whatever the shell printed meanwhile when it goes on."""
        if signum == signal.SIGCONT:
            if self._on:
                self._frame = []  # the next redraw (within REDRAW) starts a frame below the prompt
                self._now = True
                self._raw(HIDE)
            return
        self._raw(SHOW)
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signum)  # stops here (SIGTSTP) until SIGCONT, or dies (SIGQUIT)
        finally:
            signal.signal(signum, self._stopping if self._on else previous)


def _why(failed: Failed) -> str:
    """`rolled back: check health failed`, not `rolled back: rolled back: …` when the reason
    says the outcome already."""
    if not failed.reason:
        return failed.status
    return failed.reason if failed.reason.startswith(failed.status) else f"{failed.status}: {failed.reason}"


def _order(outcome: str) -> int:
    """Outcomes in Status's order: ok first."""
    values = [str(s) for s in Status]
    return values.index(outcome) if outcome in values else len(values)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
