"""The process seam for real: children in their own session (a terminal Ctrl-C is nix-hive's
alone), deaths by signal as ProcessError, timeouts that take the whole group, and -v lines."""

from __future__ import annotations

import gc
import io
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hive import process
from hive.errors import HiveError, ProcessError
from tests.conftest import poll_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    yield
    process.set_verbose(None)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:  # gone between open and read too: ProcessLookupError
        return True


def test_output_status_and_env() -> None:
    out = process.run(["sh", "-c", 'echo "$HIVE_T"; cat; echo err >&2; exit 3'], env={"HIVE_T": "x y"},
                      input="from stdin\n", check=False)
    assert out == process.Result(stdout="x y\nfrom stdin\n", stderr="err\n", exit_code=3, killed_by=None)
    with pytest.raises(ProcessError) as caught:
        process.run(["sh", "-c", "echo 'error: broken' >&2; exit 3"])
    assert caught.value.returncode == 3
    assert str(caught.value) == "sh exited 3: error: broken"


def test_on_stderr_gets_lines() -> None:
    lines: list[str] = []
    process.run(["sh", "-c", "echo one >&2; echo two >&2"], on_stderr=lines.append)
    assert lines == ["one", "two"]


def test_command_not_found() -> None:
    with pytest.raises(ProcessError, match="could not start"):
        process.run(["no-such-command-for-hive"])
    with pytest.raises(ProcessError, match="could not start"):
        process.interactive(["no-such-command-for-hive"])


def test_child_has_its_own_session_and_group() -> None:
    # Fields 5 and 6 of /proc/self/stat (after the parenthesised name): process group, session.
    out = process.run(["sh", "-c", "cut -d')' -f2 /proc/$$/stat"])
    pgrp, session = (int(field) for field in out.stdout.split()[2:4])
    assert pgrp != os.getpgid(0)
    assert session != os.getsid(0)
    assert pgrp == session  # a session leader, whose group holds whatever it starts


def test_terminal_ctrl_c_reaches_nix_hive_alone() -> None:
    """A terminal's Ctrl-C is SIGINT to its foreground group. Play it in a Python process that
    has a group of its own (not pytest's, whose group may hold more than pytest): the main
    thread gets KeyboardInterrupt while a step thread's child runs to its end."""
    script = textwrap.dedent("""
        import os, signal, threading, time
        from hive import process
        results = []
        step = threading.Thread(target=lambda: results.append(process.run(["sh", "-c", "sleep 1; echo done"])))
        step.start()
        time.sleep(0.3)
        try:
            os.killpg(0, signal.SIGINT)
            time.sleep(10)
        except KeyboardInterrupt:
            print("interrupted")
        step.join()
        print(results[0].stdout.strip(), results[0].exit_code)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, start_new_session=True, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["interrupted", "done 0"]


def test_interrupted_caller_stops_its_child(tmp_path: Path) -> None:
    """When the waiting thread itself is interrupted, the child is not left running unseen."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(f"""
        import os, signal, threading
        from hive import process
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            process.run(["sh", "-c", "echo $$ > {pid_file}; sleep 30 & wait"])
        except KeyboardInterrupt:
            print("interrupted")
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, start_new_session=True, capture_output=True,
                          text=True, timeout=30)
    assert proc.stdout == "interrupted\n", proc.stderr
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)


def test_signal_death_is_a_process_error() -> None:
    with pytest.raises(process.ProcessKilledError) as caught:
        process.run(["sh", "-c", "echo 'about to die' >&2; kill -9 $$"])
    assert isinstance(caught.value, ProcessError) and isinstance(caught.value, HiveError)
    assert caught.value.signal == signal.SIGKILL
    assert caught.value.returncode == 128 + 9
    assert str(caught.value) == "sh killed by SIGKILL: about to die"


def test_signal_death_unchecked() -> None:
    out = process.run(["sh", "-c", "kill -TERM $$"], check=False)
    assert out.exit_code == 128 + 15
    assert out.killed_by == signal.SIGTERM
    assert process.run(["sh", "-c", "exit 143"], check=False).killed_by is None  # same number, no signal


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(process.ProcessTimeoutError) as caught:
        # The grandchild holds stdout and stderr open: it too must die, or the wait would not end.
        process.run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; echo slow >&2; wait"], timeout=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, ProcessError)
    assert caught.value.returncode is None
    assert str(caught.value) == "sh timed out after 0.5 s: slow"
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
    # A timeout raises even without check: there is no status to return.
    with pytest.raises(process.ProcessTimeoutError):
        process.run(["sleep", "5"], timeout=0.2, check=False)


def test_stdout_as_it_comes_and_a_silent_command_killed(tmp_path: Path) -> None:
    """`on_stdout` hears each line when it is printed (a host reporting its state); a command
    silent for `idle_timeout` seconds is killed with its group (a channel whose other end
    froze), however long its own `timeout`."""
    heard: list[str] = []
    answer = tmp_path / "heard-one"

    def on_line(line: str) -> None:
        heard.append(line)
        answer.touch()  # the command prints its second line only once its first one was heard

    out = process.run(["sh", "-c", f"echo one; while [ ! -e {answer} ]; do sleep 0.05; done; echo two"],
                      on_stdout=on_line, idle_timeout=30, timeout=60)
    assert out.stdout == "one\ntwo\n" and heard == ["one", "two"]
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(process.ProcessTimeoutError) as caught:
        process.run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; echo alive; echo err >&2; wait"],
                    idle_timeout=1, timeout=60)
    assert 1 <= time.monotonic() - started < 25  # killed for its silence, long before its own end (30 s)
    assert caught.value.silent and str(caught.value) == "sh printed nothing for 1 s: err"
    deadline = time.monotonic() + 5
    while not _gone(int(pid_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(int(pid_file.read_text()))
    # a command that keeps talking is not silent
    assert process.run(["sh", "-c", "for i in 1 2 3 4; do echo $i; sleep 0.4; done"], idle_timeout=1).exit_code == 0


def test_input_from_a_queue_as_it_is_filled(tmp_path: Path) -> None:
    """A queue is written to stdin as it is filled (the word that confirms an activation,
    sent once the checks passed); None closes it."""
    go: queue.Queue[str | None] = queue.Queue()
    started = tmp_path / "started"
    running_before_the_word: list[bool] = []

    def send() -> None:
        # the word comes once the command runs (as a confirmation comes once the host answered):
        # a run that waited for the whole input before starting it never sees the file
        running_before_the_word.append(poll_until(started.exists, 10))
        go.put("confirm\n")
        go.put(None)

    sender = threading.Thread(target=send)
    sender.start()
    out = process.run(["sh", "-c", 'touch "$1"; read -r w; echo "got $w"; cat', "sh", str(started)], input=go)
    sender.join()
    assert running_before_the_word == [True], "the command started only once the whole input was there"
    assert out.stdout == "got confirm\n"  # it waited for the word
    closed: queue.Queue[str | None] = queue.Queue()
    closed.put(None)
    assert process.run(["sh", "-c", "read -r w || echo eof"], input=closed).stdout == "eof\n"


def test_interactive_status() -> None:
    assert process.interactive(["true"]) == 0
    assert process.interactive(["sh", "-c", "exit 4"]) == 4
    assert process.interactive(["sh", "-c", "kill -9 $$"]) == 128 + 9
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_verbose_line() -> None:
    stream = io.StringIO()
    process.set_verbose(stream)
    process.run(["sh", "-c", "cat >/dev/null; exit 0", "arg with space", "it's"],
                env={"NIX_SSHOPTS": "-F /tmp/x y", "HOME": os.environ["HOME"]}, input="the secret\n")
    process.interactive(["true"])
    process.run(["sh", "-c", "exit 1"], check=False)
    assert stream.getvalue() == (
        "$ NIX_SSHOPTS='-F /tmp/x y' sh -c 'cat >/dev/null; exit 0' 'arg with space' 'it'\"'\"'s'\n"
        "$ true\n"
        "$ sh -c 'exit 1'\n"
    )
    assert "secret" not in stream.getvalue()  # stdin is never shown
    process.set_verbose(None)
    process.run(["true"])
    assert stream.getvalue().count("\n") == 3


def test_command_line_round_trips_through_a_shell() -> None:
    argv = ["printf", "%s|", "a b", "it's", "$HOME", "*", ""]
    line = process.command_line(argv)
    assert subprocess.run(["sh", "-c", line], capture_output=True, text=True).stdout == "a b|it's|$HOME|*||"


def test_verbose_whole_lines_from_threads() -> None:
    class Slow(io.StringIO):
        """Writes that yield midway, to let interleaving show if there were any."""

        def write(self, s: str) -> int:
            for ch in s:
                super().write(ch)
                time.sleep(0)
            return len(s)

    stream = Slow()
    process.set_verbose(stream)
    threads = [threading.Thread(target=process.run, args=(["echo", f"thread-{i}", "x" * 50],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert sorted(lines) == sorted(f"$ echo thread-{i} {'x' * 50}" for i in range(16))


def test_terminate_children() -> None:
    results: list[process.Result] = []
    step = threading.Thread(target=lambda: results.append(process.run(["sleep", "30"], check=False)))
    step.start()
    deadline = time.monotonic() + 5
    while not process.terminate_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    step.join(10)
    assert results and results[0].killed_by == signal.SIGTERM
    assert process.terminate_children() == 0


def test_no_child_is_forked_with_the_collector_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """sh's child is a copy of one thread of a threaded nix-hive: a finalizer run there by the
    garbage collector could wait for ever on a lock another thread held at the fork. sh turns
    the collector off around its fork, but two starts at once race: one turns it back on while
    the other forks. Every fork must see it off (the sleep widens the race)."""
    seen: list[bool] = []
    fork = os.fork

    def watched_fork() -> int:
        time.sleep(0.002)
        seen.append(gc.isenabled())
        return fork()

    monkeypatch.setattr(os, "fork", watched_fork)
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda _: process.run(["true"]).exit_code, range(48)))
    assert codes == [0] * 48 and len(seen) == 48
    assert not any(seen), f"{sum(seen)} of 48 children were forked with the garbage collector on"
    assert gc.isenabled()


def test_starts_from_threads_do_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    """Python 3.12+ warns of os.fork() in a threaded process; nix-hive's starts are made safe
    (above) and accept that warning by name: none reaches the caller, and others still do."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda n: process.run(["echo", str(n)]).stdout, range(8))) == [f"{n}\n" for n in range(8)]
    assert [str(w.message) for w in recwarn] == []


def test_a_run_raises_its_limit_of_open_files_as_far_as_it_may() -> None:
    """A login session's soft limit (often 1,024) is raised to the hard one, up to 65,536."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard})); from hive import process; "
            "print(process.allow_open_files(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    for hard, expected in ((4096, "4096 4096"), (1024, "1024 1024")):
        out = subprocess.run([sys.executable, "-c", code.format(hard=hard)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        assert out.stdout.split() == expected.split()
