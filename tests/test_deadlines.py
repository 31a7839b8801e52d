"""Deadlines and SIGTERM (issue 19, items 1 and 5).

In the lab: a relay whose sshd stops taking new connections (its listening process stopped,
SIGSTOP, as a hung sshd or an exhausted MaxStartups would) while the deployer's connection to
it stays up: the hosts behind it wait for its banner for ever, and only the copy's deadline ends
their push; the relay itself deploys. SIGTERM in the middle of an activation: the running step
is followed to its end (or, past --stop-timeout, stopped), the summary and the report are
written, the exit status is 143, and no process the run started (ssh masters included) is left.
Then unit tests of the options, the ssh configuration and the size of a closure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hive import nix, options, ssh
from hive.errors import HiveError, InputError
from hive.model import Hive, Instance, System, frozen_map
from hive.options import Options
from tests.conftest import REPO, STANDIN, needs_lab, needs_nix, nix_hive, wait_until, write_hive
from tests.constants import nix_env
from tests.fleet import Fleet

SOURCE = REPO / "tests" / "hives" / "rollouts"
Start = Callable[..., Fleet]


# -- the lab ---------------------------------------------------------------------------------

@pytest.fixture
def marker() -> Iterator[Path]:
    """A short TMPDIR of the run's own: every process the run starts inherits it (environment),
    and its ssh masters name their socket under it (command line)."""
    directory = Path(tempfile.mkdtemp(prefix="nh-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return None


def marked(marker: Path) -> list[str]:
    """The processes whose command line or environment name `marker`."""
    found = []
    needle = str(marker).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            words = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {words}")
    return found


class Descendants:
    """Every process under `pid` (by parent chain), sampled while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            parents: dict[int, int] = {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            tree = {self.pid}
            for _ in range(8):
                tree |= {p for p, parent in parents.items() if parent in tree}
            for p in tree - {self.pid}:
                start = _start_time(p)
                if start is not None:
                    self.seen.setdefault(p, start)

    def alive(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return [p for p, start in self.seen.items() if _start_time(p) == start]


def left_behind(marker: Path, tree: Descendants) -> list[str]:
    """What the run left running, a moment after it ended (nothing, when all is well)."""
    deadline = time.monotonic() + 3
    while True:
        found = marked(marker) + [f"{p} (a descendant)" for p in tree.alive()]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def in_deployer(fleet: Fleet, argv: list[str]) -> list[str]:
    """argv in the deployer's network namespace, as the process itself (nsenter execs it, so
    its pid is the one a signal goes to)."""
    return ["nsenter", f"--net=/run/netns/{fleet.lab.deployer_netns}", *argv]


def doit_argv(fleet: Fleet, *variables: str) -> list[str]:
    return in_deployer(fleet, [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "deploy",
                               f"config={fleet.hive}", f"I=nixpkgs={STANDIN}", *variables])


def nix_hive_argv(fleet: Fleet, *args: str) -> list[str]:
    return in_deployer(fleet, [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())",
                               "deploy", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}", *args])


def run_env(fleet: Fleet, variant: str, marker: Path) -> dict[str, str]:
    return {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO), "ROLLOUT_VARIANT": variant, "TMPDIR": str(marker)}


def summary(stdout: str) -> dict[str, str]:
    """The summary table's line of each instance."""
    return {line.split()[0]: line for line in stdout.splitlines() if line.split()[:1] and line[0].isalpha()}


def freeze_sshd(fleet: Fleet, host: str) -> str:
    """Stop host's listening sshd (the process that accepts connections; the connections it
    accepted have processes of their own and go on); its pid in the host."""
    pid = fleet.lab.systemctl(host, "show", "-p", "MainPID", "--value", "sshd.service", check=True).stdout.strip()
    assert pid.isdigit() and pid != "0", pid
    fleet.lab.run(host, ["kill", "-STOP", pid])
    return pid


@needs_lab
def test_a_relay_that_takes_no_new_connection_fails_its_hosts_within_the_deadline(
        fleet_factory: Start, marker: Path) -> None:
    fleet = fleet_factory(topology={"portico": ["pub", "int"], "www-1": ["int"], "www-2": ["int"]},
                          source=SOURCE, payload_bytes=4096)
    fleet.lab.run("portico", ["sh", "-c", "echo 2 > /run/standin-activation-delay"])
    argv = doit_argv(fleet, "targets=portico,www-*", "rollback=0", "jobs=4", "copy_timeout=5", "connect_timeout=3")
    began = time.monotonic()
    proc = subprocess.Popen(argv, env=run_env(fleet, "v1", marker), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid = None
    try:
        # portico's activation runs over the deployer's connection to it: freeze its sshd now,
        # before the hosts behind it substitute from it
        wait_until(lambda: bool(fleet.lab.activation_starts("portico")), 60, "portico's activation starts")
        pid = freeze_sshd(fleet, "portico")
        frozen = time.monotonic()
        out, err = proc.communicate(timeout=120)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid is not None:
            fleet.lab.run("portico", ["kill", "-CONT", pid], check=False)
    print(f"\nfrozen relay: deploy {ended - began:.1f} s, after the freeze {ended - frozen:.1f} s")
    assert proc.returncode == 1, err  # a failed host: 1 under doit as under nix-hive
    assert "Traceback" not in err, err
    rows = summary(out)
    assert " ok " in rows["portico"], out  # the relay itself deploys
    assert fleet.lab.current_system("portico") is not None
    for host in ("www-1", "www-2"):
        row = rows[host]
        assert "timed out" in row and "relay ssh://portico did not answer within 3 s" in row, out
        assert "--copy-timeout 5 s" in row, out  # which deadline expired
        assert fleet.lab.current_system(host) is None  # never activated
    # the copy's deadline (5 s) and the question to the relay (3 s), after portico's activation
    assert ended - frozen < 30, (ended - frozen, err)
    assert not marked(marker)  # the copies that passed their deadline were stopped, their ssh with them


def start(fleet_factory: Start) -> Fleet:
    """A relay and one host behind it, all on v1 (so that a failed activation rolls back)."""
    fleet = fleet_factory(topology={"portico": ["pub", "int"], "www-1": ["int"]}, source=SOURCE, payload_bytes=4096)
    fleet.env["ROLLOUT_VARIANT"] = "v1"
    first = fleet.deploy("portico", "*")
    assert first.returncode == 0, first.stderr
    return fleet


def terminate_mid_activation(fleet: Fleet, argv: list[str], marker: Path,
                             signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> tuple[int, str, str, float]:
    """Run argv (a deployment of the "hang" variant to www-1), SIGTERM it (or send it
    `signals`, a second apart) once www-1's activation started; its exit status, output, and
    the seconds from the first signal to its end."""
    before = len(fleet.lab.activation_starts("www-1"))
    proc = subprocess.Popen(argv, env=run_env(fleet, "hang", marker), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tree = Descendants(proc.pid)
    try:
        wait_until(lambda: len(fleet.lab.activation_starts("www-1")) > before, 90, "www-1's activation starts")
        time.sleep(0.5)
        sent = time.monotonic()
        for n, signum in enumerate(signals):
            time.sleep(1 if n else 0)
            os.kill(proc.pid, signum)  # nix-hive alone, as CI does (and Ctrl-C: nix and ssh are in groups of their own)
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not left_behind(marker, tree), left_behind(marker, tree)
    return proc.returncode, out, err, took


@needs_lab
def test_sigterm_follows_the_running_activation_then_reports(fleet_factory: Start, marker: Path,
                                                              tmp_path: Path) -> None:
    fleet = start(fleet_factory)
    report = tmp_path / "report.json"
    code, out, err, took = terminate_mid_activation(
        fleet, nix_hive_argv(fleet, "--report", str(report), "--activation-timeout", "6", "www-1"), marker)
    print(f"\nSIGTERM to exit: {took:.1f} s")
    assert code == 143, err
    assert "terminated: starting nothing more" in err and "Traceback" not in err, err
    # the running activation was followed to its end: the host timed it out and rolled back
    row = summary(out)["www-1"]
    assert "rolled back" in row and "activation timed out after 6 s" in row, out
    written = json.loads(report.read_text())
    [www] = [r for r in written["instances"] if r["instance"] == "www-1"]
    assert www["outcome"] == "rolled back" and "activation timed out after 6 s" in www["reason"], written
    assert written["outcome"] == "failed"
    assert took < 6 + 30, took  # the activation's own bound, and the rollback


@needs_lab
def test_sigterm_past_the_stop_timeout_stops_following(fleet_factory: Start, marker: Path) -> None:
    fleet = start(fleet_factory)
    code, out, err, took = terminate_mid_activation(
        # jobs=1: doit runs the activation in its main thread, where the signal arrives
        fleet, doit_argv(fleet, "targets=www-1", "activation_timeout=300", "stop_timeout=3", "jobs=1"), marker)
    print(f"\nSIGTERM to exit (stop_timeout=3): {took:.1f} s")
    assert code == 143, err
    assert "terminated: stopping the running steps (they did not end within 3 s (--stop-timeout))" in err, err
    assert "Traceback" not in err, err
    row = summary(out)["www-1"]  # doit's door prints the same summary
    assert "failed" in row and "terminated: stopped while it ran" in row and "rolls back by itself" in row, out
    assert took < 3 + 15, took


@needs_lab
def test_a_second_ctrl_c_names_the_host_left_mid_activation(fleet_factory: Start, marker: Path) -> None:
    fleet = start(fleet_factory)
    code, out, err, took = terminate_mid_activation(
        fleet, nix_hive_argv(fleet, "--activation-timeout", "300", "--confirm-timeout", "20", "www-1"), marker,
        (signal.SIGINT, signal.SIGINT))
    print(f"\nthe second Ctrl-C to exit: {took - 1:.1f} s\n{err}")
    assert code == 130, err
    assert "interrupted: waiting for the running steps (Ctrl-C again to abort)" in err, err
    assert out == "" and "Traceback" not in err, (out, err)  # no summary, as before
    said = err[err.index("interrupted again: "):].splitlines()
    assert said[0] == "interrupted again: nix-hive stopped following 1 activation(s), which go on on their hosts:"
    assert said[1] == ("  www-1: it finishes the activation (at most 300 s), then rolls back by itself unless a "
                       "confirmation comes within 20 s"), said
    assert said[2] == "error: interrupted", said


# -- options, ssh configuration, sizes -------------------------------------------------------

def test_deadline_options_parse_the_same_for_both_doors() -> None:
    parser = argparse.ArgumentParser()
    options.add_deadline_arguments(parser)
    given = parser.parse_args(["--copy-timeout", "5", "--copy-rate", "0.5", "--connect-timeout", "3",
                               "--stop-timeout", "20"])
    parsed = options.deadlines(vars(given))
    assert parsed == {"copy_timeout": 5, "copy_rate": 0.5, "connect_timeout": 3, "stop_timeout": 20}
    assert options.deadlines({"copy_timeout": "5", "copy_rate": "0.5", "connect_timeout": "3",
                              "stop_timeout": "20"}, doit=True) == parsed
    assert options.deadlines(vars(parser.parse_args([]))) == {}
    defaults = Options()
    assert (defaults.copy_timeout, defaults.copy_rate, defaults.connect_timeout, defaults.stop_timeout) == (
        60, 8.0, None, 60)
    for given_, message in ((["--copy-timeout", "0"], "--copy-timeout '0': expected a whole number of at least 1"),
                            (["--copy-rate", "fast"], "--copy-rate 'fast': expected a number above 0"),
                            (["--copy-rate", "-1"], "--copy-rate '-1': expected a number above 0"),
                            (["--copy-rate", "inf"], "--copy-rate 'inf': expected a number above 0"),
                            (["--connect-timeout", "2.5"], "--connect-timeout '2.5': expected a whole number"),
                            (["--stop-timeout", "x"], "--stop-timeout 'x': expected a whole number")):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            options.deadlines(vars(parser.parse_args(given_)))
    with pytest.raises(InputError, match="copy_timeout= '0'"):
        options.deadlines({"copy_timeout": "0"}, doit=True)


def test_a_copy_deadline_grows_with_the_closure() -> None:
    given = Options(copy_timeout=60, copy_rate=8)
    assert given.copy_deadline(0) == 60
    assert given.copy_deadline(2_000_000_000) == pytest.approx(60 + 2000)  # 2 GB at 1 MB/s
    assert given.copy_deadline(None) == 60
    assert given.explain_copy_deadline(20_000_000) == "80 s (--copy-timeout 60 s + 20.00 MB at --copy-rate 8 Mbit/s)"
    assert "size was unknown" in given.explain_copy_deadline(None)
    assert Options(copy_rate=0.5).copy_deadline(1_000_000) == pytest.approx(60 + 16)


def _hive(**instances: Instance) -> Hive:
    return Hive(file=Path("/d/hive.nix"), shown="hive.nix", paths=frozen_map(),
                systems={"s": System("s", frozen_map())}, instances=instances)


def test_every_connection_of_a_run_is_bounded(tmp_path: Path) -> None:
    h = _hive(a=Instance("a", "s", ssh=frozen_map({"Hostname": "192.0.2.1"})),
              b=Instance("b", "s", ssh=frozen_map({"Hostname": "192.0.2.2", "ConnectTimeout": "30"})))
    try:
        ssh.set_connect_timeout(4)
        setup = ssh.prepare(h, tmp_path, control=True)
    finally:
        ssh.set_connect_timeout(None)
    config = setup.config

    def effective(host: str) -> dict[str, str]:
        out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True)
        return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)

    a, b, jump = effective("a"), effective("b"), effective("jump.example")  # a host of no Host block
    assert a["connecttimeout"] == "4" and b["connecttimeout"] == "30"  # the deployment's own value wins
    assert jump["connecttimeout"] == "4"  # a jump or build host of the user's own configuration too
    for found in (a, b, jump):
        assert (found["serveraliveinterval"], found["serveralivecountmax"]) == ("15", "3")
    config = setup.config_for("a")  # written now, as the run's configuration says
    assert config != setup.config and effective("a")["connecttimeout"] == "4"
    default = ssh.render_config(h, tmp_path / "k", control_dir=tmp_path / "c")
    assert "  ConnectTimeout 10\n" in default.split("\nHost b\n")[0]  # without --connect-timeout


def test_the_size_of_a_closure_from_each_nix() -> None:
    old = json.dumps([{"path": "/nix/store/a", "narSize": 100}, {"path": "/nix/store/b", "narSize": 20}])
    new = json.dumps({"/nix/store/a": {"narSize": 100}, "/nix/store/b": {"narSize": 20}, "/nix/store/c": None})
    assert nix.closure_size(old) == nix.closure_size(new) == 120
    with pytest.raises(HiveError, match="does not understand"):
        nix.closure_size("garbage")
    assert nix.closure_argv(["/nix/store/x.drv"], "ssh-ng://b", derivation=True)[3:] == [
        "path-info", "--json", "--recursive", "--derivation", "--store", "ssh-ng://b", "/nix/store/x.drv"]


@needs_nix
def test_the_size_of_a_real_closure(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.web.configuration = {{ networking.hostName = "web"; standin.payloadBytes = 300000; }};
          instances.w = {{ system = "web"; }};
        }}
    """)
    built = nix_hive("build", "-q", "-c", str(hive))
    assert built.returncode == 0, built.stderr
    path = json.loads(built.stdout)["systems"]["web"]["result"]
    size = nix.closure_bytes([path])
    assert 300_000 < size < 400_000, size


@needs_nix
@pytest.mark.parametrize(("variable", "message"), [
    ("copy_timeout=0", "copy_timeout= '0': expected a whole number of at least 1"),
    ("copy_rate=none", "copy_rate= 'none': expected a number above 0"),
    ("connect_timeout=-3", "connect_timeout= '-3': expected a whole number of at least 1"),
    ("stop_timeout=soon", "stop_timeout= 'soon': expected a whole number of at least 1"),
])
def test_doit_deadline_variables_are_checked(variable: str, message: str, tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.web.configuration = {{ networking.hostName = "web"; }};
          instances.w = {{ system = "web"; }};
        }}
    """)
    bad = subprocess.run([sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "list", f"config={hive}",
                          variable], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3, bad.stderr  # doit's status for an error before any task runs
    assert bad.stderr.strip() == f"error: {message}", bad.stderr


def test_an_abandoned_run_reports_the_steps_it_stopped(tmp_path: Path) -> None:
    from hive import plan
    from hive.outcome import Status
    from hive.plan import Kind, TaskId
    from hive.process import ProcessKilledError
    from hive.report import Progress
    from hive.session import Session

    h = _hive(w1=Instance("w1", "s"), w2=Instance("w2", "s"))
    session = Session(h, plan.make_plan(h, [tuple(h.instances.values())]), Options(state_file=tmp_path / "state"),
                      progress=Progress(quiet=True))
    try:
        session.interrupt("terminated")
        assert session.terminated and session.stop_reason() == "terminated"
        started, release = threading.Event(), threading.Event()

        def hangs() -> dict[str, object]:
            started.set()
            release.wait(10)
            return {}

        follower = threading.Thread(target=session.perform, args=(TaskId(Kind.ACTIVATE, "w1"), hangs))
        follower.start()
        started.wait(10)
        session.abandon()

        def killed() -> dict[str, object]:
            raise ProcessKilledError(["nix", "copy"], signal.SIGTERM, "")

        session.perform(TaskId(Kind.PUSH, "w2"), killed)
        session.settle(0.1)
        w1 = session.outcomes.get(TaskId(Kind.ACTIVATE, "w1"))
        assert w1 is not None and w1.status is Status.FAILED
        assert w1.reason == ("terminated: stopped while it ran (the activation goes on on the host: it rolls "
                             "back by itself without nix-hive's confirmation)")
        w2 = session.outcomes.get(TaskId(Kind.PUSH, "w2"))
        assert w2 is not None and w2.reason == "terminated: stopped while it ran (nix killed by SIGTERM)"
        # no new build starts either
        group = session.plan.groups[0].id
        session.perform(group, lambda: {"note": ""})
        assert session.outcomes.status(group) is Status.SKIPPED
        release.set()
        follower.join(10)
    finally:
        session.close()


def test_a_second_ctrl_c_says_what_each_host_left_mid_activation_does_by_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hive import cli, orchestrate, plan
    from hive.plan import Kind, TaskId
    from hive.report import Progress
    from hive.session import Session

    h = _hive(w1=Instance("w1", "s"), w2=Instance("w2", "s"), w3=Instance("w3", "s"))
    session = Session(h, plan.make_plan(h, [tuple(h.instances.values())]), Options(state_file=tmp_path / "state"),
                      progress=Progress(quiet=True))
    try:
        session.interrupt()
        started, release = threading.Event(), threading.Event()

        def activation(name: str, state: str) -> Callable[[], dict[str, object]]:
            def run() -> dict[str, object]:
                # as activate.Activation does: the host's own course, from its last word
                session.on_its_own(TaskId(Kind.ACTIVATE, name), lambda: f"it rolls back by itself ({state})")
                started.set()
                release.wait(10)
                return {}
            return run

        followers = [threading.Thread(target=session.perform, args=(TaskId(Kind.ACTIVATE, n), activation(n, s)))
                     for n, s in (("w1", "waiting"), ("w2", "switching"))]
        for follower in followers:
            follower.start()
        wait_until(lambda: len(session._active) == 2 and started.is_set(), 10, "both activations run")
        session.perform(TaskId(Kind.ACTIVATE, "w3"), lambda: {})  # done before the second Ctrl-C
        session.abandon()  # the second Ctrl-C
        session.settle(0.1)
        assert sorted(session.left_alone()) == [("w1", "it rolls back by itself (waiting)"),
                                                ("w2", "it rolls back by itself (switching)")]
        w1 = session.outcomes.get(TaskId(Kind.ACTIVATE, "w1"))
        assert w1 is not None and w1.reason == ("interrupted: stopped while it ran (the activation goes on on the "
                                                "host: it rolls back by itself (waiting))")
        aborted = orchestrate.Aborted(session)

        def deploy(args: object) -> int:
            raise aborted

        monkeypatch.setattr(cli, "cmd_deploy", deploy)
        assert cli.main(["deploy"]) == 130
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "interrupted again: nix-hive stopped following 2 activation(s), which go on on their hosts:"
        assert sorted(err[1:3]) == ["  w1: it rolls back by itself (waiting)",
                                    "  w2: it rolls back by itself (switching)"]
        assert err[3:] == ["error: interrupted"]
        release.set()
        for follower in followers:
            follower.join(10)
    finally:
        session.close()


@needs_nix
@pytest.mark.parametrize("command", [["status"], ["check"], ["rollback"], ["reboot"], ["run", "--", "true"],
                                     ["upload-keys"]])
def test_every_command_that_logs_in_takes_connect_timeout(tmp_path: Path, command: list[str]) -> None:
    """Its ssh connections (the first one, here: an ssh that fails after saying what its
    configuration gave it) carry --connect-timeout."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    mark = tmp_path / "asked"
    real = shutil.which("ssh")
    assert real is not None
    (bin_ / "ssh").write_text(f"""#!/bin/sh
[ "$1" = -G ] && exec {real} "$@"
cfg=; host=
while [ $# -gt 0 ]; do
  case $1 in -F) cfg=$2; shift 2 ;; -o) shift 2 ;; --) host=$2; break ;; *) shift ;; esac
done
[ -n "$host" ] && {real} -G -F "$cfg" "$host" | grep -i '^connecttimeout ' >> {mark}
exit 255
""")
    (bin_ / "ssh").chmod(0o755)
    write_hive(tmp_path / "fleet", f"""
        {{
          paths.nixpkgs = {STANDIN};
          keys.token.text = "t";
          systems.web.configuration = {{ networking.hostName = "web"; }};
          systems.web.checks.up = {{ command = "true"; }};
          systems.web.keys = [ "token" ];
          instances.w = {{ system = "web"; ssh.Hostname = "192.0.2.1"; }};
        }}
    """)
    verb, *rest = command
    out = nix_hive(verb, "-c", str(tmp_path / "fleet"), "--connect-timeout", "7", "w", *rest,
                   env={"PATH": f"{bin_}:{os.environ['PATH']}"})
    assert out.returncode == 1, out.stderr  # w could not be reached
    assert mark.read_text().splitlines()[0] == "connecttimeout 7", out.stderr
