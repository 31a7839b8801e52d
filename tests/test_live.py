"""The live view (hive/live.py): its frames as a pure function of a snapshot and a terminal
size, the view's escapes on a stream, and a real deployment to the lab on a pseudo-terminal
whose screen is rebuilt by a small VT100 emulation and read as a person would."""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import unicodedata
from pathlib import Path

import pytest

from hive import cli, live
from hive.live import Failed, Live, Snapshot, Work, render
from tests.conftest import REPO, needs_lab, needs_nix, nix_hive_on_terminal, write_hive
from tests.constants import STANDIN, nix_env

MORE = "…"


def columns(line: str) -> int:
    """The terminal columns a line takes, measured here apart from hive/text.py: a wide
    character (east Asian width W or F) two, a combining mark none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def snapshot(working: int = 3, failed: int = 1, *, last: str = "checking health") -> Snapshot:
    return Snapshot(
        elapsed=73.4,
        counts=(("build", (("ok", 1),)), ("activate", (("ok", 3), ("rolled back", failed)))),
        working=tuple(Work(f"www-{i}", "activate", float(i), last) for i in range(working)),
        failed=tuple(Failed(f"bad-{i}", "activate", "rolled back", f"check health failed ({i})")
                     for i in range(failed)),
        messages=("wave 2/3: 12 instance(s)",))


# Frames -------------------------------------------------------------------------------------

def test_a_frame_has_the_header_the_counts_the_failed_and_the_hosts_at_work() -> None:
    lines = render(snapshot(), 100, 30)
    assert lines[0] == "nix-hive  1m13s  3 at work, 1 failed"
    assert lines[1] == "build: 1 ok | activate: 3 ok, 1 rolled back, 3 running"
    assert "  wave 2/3: 12 instance(s)" in lines
    failed = lines.index("failed (1):")
    assert lines[failed + 1] == "  bad-0  activate  rolled back: check health failed (0)"
    work = lines.index("at work (3):")
    assert lines[work + 1].split() == ["www-2", "activate", "2.0s", "checking", "health"]  # longest first
    assert len(lines) == work + 4


@pytest.mark.parametrize(("width", "height"), [(100, 30), (60, 12), (30, 8), (12, 4), (1, 1)])
def test_a_frame_fits_the_terminal(width: int, height: int) -> None:
    lines = render(snapshot(working=50, failed=20, last="x" * 300), width, height)
    assert len(lines) <= max(height, 2) - 1
    assert all(len(ln) <= max(width, 8) - 1 for ln in lines)


def test_long_lines_are_cut_with_an_ellipsis() -> None:
    lines = render(snapshot(working=1, failed=0, last="y" * 500), 40, 20)
    assert max(len(ln) for ln in lines) == 39
    assert lines[-1].endswith("y…")


def test_a_long_list_ends_with_how_many_more_and_failures_stay_in_view() -> None:
    lines = render(snapshot(working=200, failed=3), 80, 20)
    assert len(lines) == 19
    failed = lines.index("failed (3):")
    assert [ln.split() for ln in lines[failed + 1:failed + 4]] == [
        f"bad-{i} activate rolled back: check health failed ({i})".split() for i in range(3)]
    work = lines.index("at work (200):")
    shown = 19 - work - 2
    assert lines[-1] == f"  … and {200 - shown} more"


def test_many_failures_take_at_least_half_the_room() -> None:
    lines = render(snapshot(working=200, failed=200), 80, 24)
    failed, work = lines.index("failed (200):"), lines.index("at work (200):")
    assert work - failed >= (23 - failed) // 2
    assert lines[work - 1].startswith("  … and ") and lines[-1].startswith("  … and ")


def test_a_finished_view_says_done_and_counts_without_work() -> None:
    lines = render(Snapshot(elapsed=5.0, counts=(("push", (("ok", 2),)),), done=True), 80, 24)
    assert lines == ["nix-hive  5.0s  done", "push: 2 ok"]


def test_wide_characters_are_cut_by_the_columns_they_take() -> None:
    said = "ホストが応答しません" * 20
    snap = Snapshot(elapsed=1.0, working=(Work("www-1", "activate", 1.0, said),),
                    failed=(Failed("ウェブ-2", "activate", "rolled back", said),))
    lines = render(snap, 60, 10)
    assert all(columns(ln) <= 59 for ln in lines), lines
    assert lines[-1].endswith(MORE) and columns(lines[-1]) >= 58  # cut at the edge, not before
    failed = lines.index("failed (1):")
    assert lines[failed + 1].startswith("  ウェブ-2  activate  rolled back: ホスト")
    assert lines[-1].startswith("  www-1     activate ")  # names padded to the same columns


def test_before_the_run_the_view_says_what_it_waits_for() -> None:
    lines = render(Snapshot(elapsed=2.5, waiting="evaluating hive.nix…"), 80, 24)
    assert lines == ["nix-hive  2.5s  evaluating hive.nix…"]


# The view on a stream -----------------------------------------------------------------------

class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_view_is_for_terminals_only() -> None:
    env = {"TERM": "xterm"}
    assert live.wanted(Tty(), env=env)
    assert not live.wanted(io.StringIO(), env=env)
    assert not live.wanted(Tty(), env={"TERM": "dumb"})
    assert not live.wanted(Tty(), env={})
    assert not live.wanted(Tty(), env={**env, "CI": "true"})
    assert not live.wanted(Tty(), quiet=True, env=env)
    assert not live.wanted(Tty(), verbose=True, env=env)
    assert not live.wanted(Tty(), off=True, env=env)
    assert cli.parser().parse_args(["deploy", "--no-live"]).no_live
    assert cli.parser().parse_args(["reboot", "--no-live"]).no_live


def test_the_view_hides_the_cursor_and_shows_it_again_even_after_a_crash() -> None:
    out = Tty()
    view = Live(out, size=lambda: (60, 20))
    with pytest.raises(RuntimeError), view:
        view.started("push", "www-1")
        view.step("push", "www-1", "failed", "copy refused")
        view.block("the copy's log\nlast line")
        raise RuntimeError("crash")
    text = out.getvalue()
    assert text.startswith(live.HIDE) and live.SHOW in text
    frame, after = text.rsplit(live.SHOW, 1)
    assert "nix-hive  " in frame and "done, 1 failed" in frame and "www-1  push      failed: copy refused" in frame
    assert after.startswith("push www-1: failed: copy refused\n")  # the log after the view, under whose it is
    assert "    | last line" in after
    view.line("after the view")  # a line log again
    assert out.getvalue().endswith("after the view\n")


def test_a_redraw_goes_back_over_the_previous_frame_as_wide_as_it_is_now() -> None:
    out = Tty()
    sizes = [(80, 20)]
    view = Live(out, size=lambda: sizes[-1])
    view._on = True
    view.step("activate", "www-1", "...", "z" * 70)
    view._draw()
    rows = len(view._frame)
    sizes.append((40, 20))  # narrowed: the 70-character line now takes two rows
    view._draw()
    assert f"\r\x1b[{rows + 1}A" in out.getvalue()
    assert all(len(ln) <= 39 for ln in view._frame)


def test_a_frame_with_wide_characters_is_drawn_over_itself() -> None:
    """Cut by characters, a line of wide characters took two rows and the next frame went up
    one: the frame drifted down, a header left behind at each redraw."""
    out = Tty()
    view = Live(out, size=lambda: (40, 12))
    view._on = True
    view.step("activate", "www-1", "...", "ホストが応答しません" * 10)
    for _ in range(13):
        view._draw()
    screen = Screen(40, 12)
    screen.feed(out.getvalue().replace("\n", "\r\n"))  # as a terminal's line discipline sends it
    assert screen.text().count("nix-hive") == 1, screen.text()
    assert all(columns(r) <= 39 for r in screen.text().splitlines())


class Clocked(Tty):
    """A terminal that notes when each frame ends (its erase below)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[float] = []

    def write(self, s: str) -> int:
        if live.ERASE_BELOW in s:
            self.frames.append(time.monotonic())
        return super().write(s)


def test_a_change_is_drawn_at_once_4_frames_a_second_at_most_and_the_clock_every_second() -> None:
    out = Clocked()
    view = Live(out, size=lambda: (80, 24))
    with view:
        time.sleep(2.3)  # nothing changes: the clocks go on, once a second
        idle = list(out.frames)
        changed = time.monotonic()
        view.step("activate", "www-1", "...", "switching")
        time.sleep(0.1)
        assert out.frames[-1] >= changed, "a change after a quiet second is drawn at once"
        for n in range(40):  # a change every 25 ms for a second
            view.step("activate", "www-1", "...", f"line {n}")
            time.sleep(0.025)
        busy = [t for t in out.frames if t >= changed]
    assert len(idle) == 3 and all(0.95 <= b - a <= 1.1 for a, b in itertools.pairwise(idle)), idle
    assert 4 <= len(busy) <= 6 and all(b - a >= live.REDRAW - 0.01 for a, b in itertools.pairwise(busy)), busy


def test_the_wait_before_the_run_is_one_line_that_leaves_nothing_behind() -> None:
    out = Tty()
    view = Live(out, size=lambda: (60, 20))
    with view.waiting("evaluating hive.nix…"):
        time.sleep(0.2)
    wait = out.getvalue()
    assert "\rnix-hive  0.0s  evaluating hive.nix…\x1b[K" in wait or "\rnix-hive  0.1s  evaluating" in wait, wait
    assert "\n" not in wait and wait.endswith(f"\r{live.ERASE_LINE}{live.SHOW}")
    with view:
        view.started("push", "www-1")
    screen = Screen(60, 20)
    screen.feed(out.getvalue().replace("\n", "\r\n"))
    assert screen.text().startswith("nix-hive  ") and "evaluating" not in screen.text(), screen.text()
    assert "done" in screen.text().splitlines()[0] and screen.cursor


def test_a_build_group_is_one_label_with_one_outcome_and_its_time(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two systems built by one nix build: `build portico+www` at work, Nix's lines under that
    label, then one `ok` with the build's own seconds; nothing left at work, no 0.0 s."""
    from hive import nix, plan
    from hive.model import Hive, Instance, System, frozen_map
    from hive.options import Options
    from hive.plan import Kind, TaskId
    from hive.report import Progress
    from hive.session import Session
    from hive.tasks import Steps

    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(),
             systems={"portico": System("portico", frozen_map()), "www": System("www", frozen_map())},
             instances={"portico": Instance("portico", "portico"), "www-1": Instance("www-1", "www")})

    def realise(derivations: list[str], *, on_line: object = None) -> list[str]:
        assert callable(on_line)
        for drv in derivations:
            on_line(f"building '{drv}'...")
        time.sleep(0.3)
        return [drv.removesuffix(".drv") for drv in derivations]

    monkeypatch.setattr(nix, "instantiate", lambda source, directory, system, paths:
                        f"/nix/store/{'d' * 32}-nixos-system-{system}.drv")
    monkeypatch.setattr(nix, "realise", realise)
    monkeypatch.setattr(nix, "add_root", lambda path, link: None)

    def build(progress: Progress) -> None:
        session = Session(h, plan.make_plan(h, [tuple(h.instances.values())]),
                          Options(state_file=tmp_path / "state"), progress=progress)
        try:
            [group] = session.plan.groups
            steps = Steps(session)
            for task in (group.id, *(TaskId(Kind.BUILD, s) for s in group.systems)):
                action = steps.action(task)
                assert action is not None
                action()
            assert sorted(session.results) == ["portico", "www"]
        finally:
            session.close()

    log = io.StringIO()
    build(Progress(log))
    said = [ln.split("] ", 1)[1].split() for ln in log.getvalue().splitlines()]
    assert said[:3] == [["build", "portico+www", "..."],
                        ["build", "portico+www", "building", "nixos-system-portico"],
                        ["build", "portico+www", "building", "nixos-system-www"]], said
    assert said[3][:3] == ["build", "portico+www", "ok"] and float(said[3][3].removesuffix("s")) >= 0.3, said
    assert len(said) == 4, said  # one outcome: no line per system (0.0 s each)
    view = Live(Tty(), size=lambda: (80, 24))
    view._on = True
    build(view)
    snap = view.snapshot()
    assert snap.working == () and snap.counts == (("build", (("ok", 1),)),), snap


# A real deployment on a pseudo-terminal ------------------------------------------------------

class Screen:
    """Enough of a VT100 for what nix-hive writes: printable characters with wrapping (a wide
    character takes two columns, a combining mark none), CR, LF, cursor up (CSI n A, bounded
    by the screen's top row), erase to the end of the line (CSI K) and below (CSI J), the
    cursor shown or hidden (CSI ? 25 h/l), a resize that reflows the rows (as most terminals
    do). The screen's rows scroll into a history above it, which cursor-up cannot reach."""

    CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows: list[list[str]] = [[]]
        self.x = self.y = 0
        self.cursor = True

    def feed(self, data: str) -> None:
        i = 0
        while i < len(data):
            c = data[i]
            if c == "\x1b":
                m = self.CSI.match(data, i)
                if m is not None:
                    self._csi(m.group(1), m.group(2))
                    i = m.end()
                    continue
            elif c == "\r":
                self.x = 0
            elif c == "\n":
                self._down()
            elif c >= " " and (wide := columns(c)):
                if self.x + wide > self.width:
                    self.x = 0
                    self._down()
                row = self.rows[self.y]
                row.extend(" " * (self.x + wide - len(row)))
                row[self.x:self.x + wide] = [c, *[""] * (wide - 1)]  # a wide character's second cell is empty
                self.x += wide
            i += 1

    def resize(self, width: int, height: int) -> None:
        """A terminal that reflows: each row wider than the new width wraps onto more rows."""
        rows: list[list[str]] = []
        for y, row in enumerate(self.rows):
            if y == self.y:
                self.y, self.x = len(rows) + self.x // width, self.x % width
            rows += [row[i:i + width] for i in range(0, max(len(row), 1), width)]
        self.rows, self.width, self.height = rows, width, height
        self.rows += [[] for _ in range(self.y + 1 - len(self.rows))]

    def _down(self) -> None:
        self.y += 1
        if self.y == len(self.rows):
            self.rows.append([])

    def _csi(self, params: str, final: str) -> None:
        if final == "A":
            top = max(0, len(self.rows) - self.height)
            self.y = max(top, self.y - int(params or "1"))
        elif final == "K":
            del self.rows[self.y][self.x:]
        elif final == "J":
            del self.rows[self.y][self.x:]
            del self.rows[self.y + 1:]
        elif params == "?25":
            self.cursor = final == "h"

    def text(self) -> str:
        return "\n".join("".join(r).rstrip() for r in self.rows).rstrip() + "\n"


def test_screen_emulation() -> None:
    s = Screen(10, 5)
    s.feed("one\ntwo\n\x1b[?25l\r\x1b[2Aaaaaaaaaaaaa\x1b[K\n\x1b[J")
    assert s.text() == "aaaaaaaaaa\naa\n" and not s.cursor


def start_on_pty(argv: list[str], env: dict[str, str], width: int, height: int) -> tuple[subprocess.Popen[bytes], int]:
    """Start argv with a pseudo-terminal of width x height as its stdin, stdout and stderr;
    the process, and the terminal's master side (to read, resize, close)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    return proc, master


def view_on_pty(script: str, width: int, height: int) -> tuple[subprocess.Popen[bytes], int]:
    """A Python script (that shows a live view) started on a pseudo-terminal (`start_on_pty`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm"}
    return start_on_pty([sys.executable, "-c", script], env, width, height)


def run_on_pty(argv: list[str], env: dict[str, str], width: int, height: int, timeout: float) -> tuple[int, str]:
    """Run argv on a pseudo-terminal of width x height (`start_on_pty`); return its exit
    status and everything it wrote there."""
    proc, master = start_on_pty(argv, env, width, height)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def summary_lines(raw: str) -> list[str]:
    """The summary's lines as written, after the view and the failed steps' logs (which are
    whole, as the line log has them: the full reason and the host's own lines)."""
    after = raw.rsplit(live.SHOW, 1)[1].replace("\r", "").split("\n")
    return after[next(i for i, ln in enumerate(after) if ln.startswith("instance ")):]


@needs_lab
def test_a_deployment_on_a_terminal_shows_the_live_view(fleet_factory: object, tmp_path: Path) -> None:
    from tests.test_rollouts import start  # the lab fleet of the rollout tests, deployed once (v1)

    fleet, _ = start(fleet_factory)  # type: ignore[arg-type]
    env = {k: v for k, v in {**nix_env(), **fleet.env}.items() if k != "CI"}
    env.update(PYTHONPATH=str(REPO), ROLLOUT_VARIANT="unhealthy", TERM="xterm")
    argv = fleet.nix_hive_argv("deploy", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", "www-1", "www-*")
    width, height = 80, 24  # the summary (about 170 columns whole here) fits the terminal
    code, raw = run_on_pty(argv, env, width, height, timeout=400)
    screen = Screen(width, height)
    screen.feed(raw)
    shown = screen.text()
    (tmp_path / "screen.txt").write_text(shown)
    print(shown)  # the screenshot: pytest -s shows it
    assert code == 1, shown
    # hidden while the deployment is evaluated, then while the run goes; shown again after each
    assert raw.count(live.HIDE) == 2 and raw.count(live.SHOW) == 2 and raw.rindex(live.SHOW) > raw.rindex(live.HIDE)
    assert screen.cursor, "the cursor is visible again"
    assert "evaluating " in raw and "evaluating " not in shown, "said while it lasted, then erased"
    assert "at work (" in raw, "hosts were shown at work while the run went"
    assert shown.count("nix-hive  ") == 1, shown  # one frame, redrawn over itself
    assert re.search(r"^nix-hive  \S+  done, 1 failed$", shown, re.M), shown
    assert re.search(r"^build: 1 ok \| .*^activate: .*1 rolled back$", shown, re.M | re.S), shown
    assert "at work" not in shown[:shown.index("instance ")], "nothing left at work when the run is done"
    failure = r"^failed \(1\):\n  www-1 +activate +rolled back: check (health|http) failed"
    assert re.search(failure, shown, re.M), shown
    summary = shown[shown.index("instance "):].splitlines()
    assert summary[0].split() == ["instance", "system", "result", "seconds", "reason"], summary
    assert [r.split()[0] for r in summary[2:] if r] == ["www-1", "www-2", "www-3"], summary  # a line each
    assert re.match(r"www-1 .* rolled back +\S+ +activate: check (health|http) failed", summary[2]), summary
    assert re.match(r"www-2 .* skipped .*wave 1 failed \(www-1\)", summary[3]), summary
    assert all(columns(ln) < width for ln in summary_lines(raw)), summary_lines(raw)
    frame = shown[:shown.index("\nactivate www-1: rolled back: check")]  # the last frame, before the step's log
    assert all(columns(ln) < width for ln in frame.splitlines()), frame


CHILD = """
import os, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGQUIT's default action, without a core file
pid = os.fork()
if pid:  # a session leader stays, as a shell would: the view's process group is not orphaned
    os.waitpid(pid, 0)
    sys.exit(0)
os.setpgid(0, 0)
from hive.live import Live
with Live(sys.stderr, size=lambda: (60, 10)) as view:
    view.started("push", "www-1")
    print(f"pid {os.getpid()}", file=sys.stderr, flush=True)
    time.sleep(60)
"""


def test_the_cursor_is_shown_whenever_the_view_stops_or_quits() -> None:
    """Ctrl-Z: the cursor comes back before the process stops, and goes away again (a new
    frame) on `fg`; Ctrl-\\\\: it comes back before the process dies of SIGQUIT."""
    proc, master = view_on_pty(CHILD, 60, 10)
    seen = b""

    def read_until(wanted: bytes, after: int = 0, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while wanted not in seen[after:]:
            assert time.monotonic() < deadline, (wanted, seen)
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)

    def state(pid: int) -> str:
        """The process's state letter; "gone" once it was reaped (it may go between two looks)."""
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return "gone"

    try:
        read_until(b"pid ")
        read_until(b"\n", seen.index(b"pid "))
        view = int(seen[seen.index(b"pid ") + 4:].split(b"\r")[0].split(b"\n")[0])
        assert live.HIDE.encode() in seen and live.SHOW.encode() not in seen
        mark = len(seen)
        os.kill(view, signal.SIGTSTP)
        read_until(live.SHOW.encode(), mark)
        deadline = time.monotonic() + 10
        while state(view) != "T":  # stopped, as after Ctrl-Z
            assert time.monotonic() < deadline
            time.sleep(0.05)
        mark = len(seen)
        os.kill(view, signal.SIGCONT)
        read_until(live.HIDE.encode(), mark)
        read_until(b"nix-hive", mark)  # a whole new frame
        mark = len(seen)
        os.kill(view, signal.SIGQUIT)
        read_until(live.SHOW.encode(), mark)
        deadline = time.monotonic() + 10
        while state(view) not in ("Z", "gone"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError, ValueError, NameError):
            os.kill(view, signal.SIGKILL)
        os.close(master)


RESIZED = """
import sys, time
from hive.live import Live
with Live(sys.stderr) as view:
    view.started("activate", "www-1")
    view.step("activate", "www-1", "...", "w" * 200)
    time.sleep(3)
"""


def test_a_resize_draws_a_new_frame_at_once_and_the_last_frame_is_clean() -> None:
    proc, master = view_on_pty(RESIZED, 80, 24)
    seen = b""

    def read(timeout: float) -> bool:
        nonlocal seen
        if not select.select([master], [], [], timeout)[0]:
            return False
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the view's process has ended
            return False
        seen += data
        return bool(data)

    try:
        deadline = time.monotonic() + 20
        while b"w" + MORE.encode() not in seen or read(0.4):  # its frame drawn, then a quiet moment
            assert time.monotonic() < deadline, seen
            read(0.5)
        mark = len(seen)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
        resized = time.monotonic()
        os.kill(proc.pid, signal.SIGWINCH)  # what the kernel sends the terminal's foreground group
        while live.ERASE_BELOW.encode() not in seen[mark:]:
            assert time.monotonic() - resized < 0.5, "a new frame at once, not at the next second's redraw"
            read(0.05)
        while read(5):
            pass
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    screen = Screen(80, 24)
    screen.feed(seen[:mark].decode(errors="replace"))
    screen.resize(50, 24)  # the terminal reflowed the frame drawn at 80 columns
    screen.feed(seen[mark:].decode(errors="replace"))
    shown = screen.text()
    assert shown.count("nix-hive") == 1 and "www-1" in shown, shown
    assert all(columns(r) <= 49 for r in shown.splitlines()), shown


@needs_nix
def test_status_and_check_on_a_terminal_show_what_they_cut_whole(tmp_path: Path) -> None:
    """Hosts that refuse the connection (127.0.0.1, port 1): `status` and `check` cut their
    state and detail to 80 columns, and say each whole below, once for the hosts it is alike."""
    hive = write_hive(tmp_path / "fleet", f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.web.configuration = {{ networking.hostName = "web"; }};
          systems.web.checks.up = {{ command = "true"; retries = 0; }};
          instances = builtins.listToAttrs (map (n: {{
            name = "www-${{toString n}}";
            value = {{ system = "web"; ssh = {{ Hostname = "127.0.0.1"; Port = "1"; }}; }};
          }}) [ 1 2 3 ]);
        }}
    """)
    refused = "ssh: connect to host 127.0.0.1 port 1: Connection refused"
    for command, what, said in (("status", "states", f"www-1{MORE}www-3: unreachable: {refused}"),
                                ("check", "details", f"www-1{MORE}www-3: exit 255: {refused}")):
        code, shown = nix_hive_on_terminal(command, "-c", str(hive), timeout=300)
        lines = shown.rstrip("\n").splitlines()
        assert code == 1 and all(columns(ln) < 80 for ln in lines), shown
        at = lines.index(f"{what} cut above, whole:")
        assert lines[at - 1] == "" and [ln.split()[0] for ln in lines[2:at - 1]] == ["www-1", "www-2", "www-3"]
        assert " ".join(ln.strip() for ln in lines[at + 1:]) == said, shown


@needs_nix
def test_a_deploy_on_a_terminal_says_it_evaluates_then_fits_its_summary(tmp_path: Path) -> None:
    """Without a lab: hosts that refuse the connection (127.0.0.1, port 1) fail at once, after
    the deployment's evaluation (said while it lasts) and before anything is built."""
    hive = write_hive(tmp_path / "fleet", f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.web.configuration = {{ networking.hostName = "web"; }};
          instances = builtins.listToAttrs (map (n: {{
            name = "www-${{toString n}}";
            value = {{ system = "web"; ssh = {{ Hostname = "127.0.0.1"; Port = "1"; }}; }};
          }}) [ 1 2 3 ]);
        }}
    """)
    env = {k: v for k, v in nix_env().items() if k != "CI"}
    env.update(PYTHONPATH=str(REPO), TERM="xterm")
    argv = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", "deploy", "-c", str(hive)]
    width, height = 80, 24
    code, raw = run_on_pty(argv, env, width, height, timeout=120)
    screen = Screen(width, height)
    screen.feed(raw)
    shown = screen.text()
    print(shown)
    assert code == 1, shown
    evaluating = raw.index(f"\rnix-hive  0.0s  evaluating {str(hive)[:40]}")  # (cut at the terminal's width)
    assert evaluating < raw.index("nix-hive  ", evaluating + 1) and "evaluating" not in shown, raw
    assert shown.startswith("nix-hive  ") and "done, 3 failed" in shown.splitlines()[0], shown
    summary = shown[shown.index("instance "):].splitlines()
    assert [r.split()[0] for r in summary[2:5]] == ["www-1", "www-2", "www-3"], summary  # a line each
    assert summary[2].endswith(MORE) and "unreachable: ssh: connect to host 127.0.0.1" in summary[2], summary
    # then the reasons it cut, whole (wrapped; the same one once): the end says why
    assert summary[5:7] == ["", "reasons cut above, whole:"], summary
    whole = " ".join(ln.strip() for ln in summary[7:])
    assert whole == f"www-1{MORE}www-3: unreachable: ssh: connect to host 127.0.0.1 port 1: Connection refused", summary
    assert all(columns(ln) < width for ln in summary_lines(raw)), summary_lines(raw)
