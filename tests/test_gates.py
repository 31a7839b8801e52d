"""The one rule of every gate (issue 26), without hosts: an instance failed when any task it
needs failed (its connection, its system's build, its relays' copies, its push, keys,
activation), and the wave gate, --max-failures, the summary and the exit status all read
that rule. The same on lab hosts: tests/test_gates_lab.py."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from hive import orchestrate, plan, tasks
from hive.errors import ssh_reason
from hive.model import Hive, Instance, Key, System, frozen_map
from hive.options import Options
from hive.outcome import NotStarted, Outcome, Status
from hive.plan import Kind, TaskId
from hive.remote import Probe
from hive.report import Progress
from hive.session import Session, open_wave

RELAY = "ssh://portico"


def fleet(tmp_path: Path, **given: object) -> Session:
    """portico (edge, a relay) in wave 1 with www-1 (web, behind portico, with a key); www-2
    and www-3 in wave 2."""
    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(),
             systems={"edge": System("edge", frozen_map()), "web": System("web", frozen_map())},
             instances={"portico": Instance("portico", "edge"),
                        **{f"www-{n}": Instance(f"www-{n}", "web", store=RELAY, keys=("k",) if n == 1 else ())
                           for n in (1, 2, 3)}},
             keys={"k": Key("k", "/run/keys/k", text="x")})
    i = h.instances
    waves = [(i["portico"], i["www-1"]), (i["www-2"], i["www-3"])]
    options = Options(state_file=tmp_path / "state", **given)  # type: ignore[arg-type]
    return Session(h, plan.make_plan(h, waves), options, progress=Progress(quiet=True))


def settle_wave_1(session: Session, failed: TaskId) -> None:
    """Wave 1's outcomes with `failed` failed and the rest ok (or skipped behind it)."""
    for name in ("portico", "www-1"):
        for task in session.plan.instance_tasks(next(i for i in session.plan.instances if i.name == name)):
            if task == failed:
                session.outcomes.set(task, Outcome(Status.FAILED, "it broke"))
            elif session.outcomes.get(task) is None:
                late = session.outcomes.failed() and task.kind in (Kind.PUSH, Kind.KEYS, Kind.ACTIVATE)
                session.outcomes.set(task, Outcome(Status.SKIPPED, "a dependency failed") if late
                                     else Outcome(Status.OK))


@pytest.mark.parametrize(("failed", "reason"), [
    (TaskId(Kind.CONNECT, "www-1"), "it broke"),
    (TaskId(Kind.CONNECT, "portico"), "relay host portico it broke"),
    (TaskId(Kind.NIX_BUILD, "edge+web"), "build of web failed: it broke"),  # one nix build of both
    (TaskId(Kind.BUILD, "web"), "build of web failed: it broke"),
    (TaskId(Kind.STORE, RELAY), f"store of {RELAY} failed: it broke"),
    (TaskId(Kind.PUSH, "www-1"), "push: it broke"),
    (TaskId(Kind.KEYS, "www-1"), "keys: it broke"),
    (TaskId(Kind.ACTIVATE, "www-1"), "activate: it broke"),
])
def test_any_failed_step_of_a_wave_closes_its_gate(failed: TaskId, reason: str, tmp_path: Path) -> None:
    session = fleet(tmp_path)
    settle_wave_1(session, failed)
    assert session.instance_failure("www-1") is not None
    assert session.failed_instances() >= {"www-1"}
    done = open_wave(session, 2)
    assert isinstance(done, NotStarted) and done.reason.startswith("not started: wave 1 failed (")
    assert "www-1" in done.reason
    row = orchestrate.row(session, session.plan.instances[1])
    assert (row.result, row.reason) == ("failed", reason)
    assert session.halted == done.reason
    assert orchestrate.run_failed(session) == done.reason.removeprefix("not started: ")


def test_a_relay_waits_for_every_system_it_holds(tmp_path: Path) -> None:
    """portico's own copy holds web too (its hosts substitute from it): web's failed build
    fails portico, named so, though its own system built."""
    session = fleet(tmp_path)
    session.outcomes.set(TaskId(Kind.BUILD, "edge"), Outcome(Status.OK))
    session.outcomes.set(TaskId(Kind.BUILD, "web"), Outcome(Status.FAILED, "it broke"))
    row = orchestrate.row(session, session.plan.instances[0])
    assert (row.instance, row.result, row.reason) == ("portico", "failed", "build of web failed: it broke")


def test_keep_going_opens_the_gate_and_an_ok_wave_opens_it(tmp_path: Path) -> None:
    session = fleet(tmp_path, keep_going=True)
    settle_wave_1(session, TaskId(Kind.PUSH, "www-1"))
    assert open_wave(session, 2) == {}
    ok = fleet(tmp_path)
    settle_wave_1(ok, TaskId(Kind.PUSH, "nothing"))
    assert open_wave(ok, 2) == {} and ok.failed_instances() == set() and ok.halted is None


def test_max_failures_counts_every_failed_step(tmp_path: Path) -> None:
    """Two pushes failed in one wave: more than --max-failures 1, though no activation failed."""
    session = fleet(tmp_path, max_failures=1, keep_going=True)
    assert session.stop_reason() is None
    session.outcomes.set(TaskId(Kind.PUSH, "portico"), Outcome(Status.FAILED, "no"))
    assert session.stop_reason() is None
    session.outcomes.set(TaskId(Kind.PUSH, "www-1"), Outcome(Status.FAILED, "no"))
    assert session.stop_reason() == "not started: more than 1 instance(s) failed"
    # a failed relay copy fails every instance behind it at once
    other = fleet(tmp_path, max_failures=2)
    other.outcomes.set(TaskId(Kind.STORE, RELAY), Outcome(Status.FAILED, "no"))
    assert other.failed_instances() == {"portico", "www-1", "www-2", "www-3"}
    assert other.stop_reason() == "not started: more than 2 instance(s) failed"


def _probes(unreachable: set[str]) -> object:
    def probe_all(wanted: dict[str, frozenset[str]], **_: object) -> dict[str, Probe]:
        return {n: Probe(reachable=False, reason="Connection refused") if n in unreachable
                else Probe(reachable=True, current=f"/nix/store/{n}-before") for n in wanted}
    return probe_all


def test_an_unreachable_canary_blocks_everything_before_any_work(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    session = fleet(tmp_path)
    monkeypatch.setattr(session.remotes, "probe_all", _probes({"www-1"}))
    session.connect_all()
    assert session.blocked == {"www-1": "unreachable: Connection refused",
                               "www-2": "not started: wave 1 failed (www-1)",
                               "www-3": "not started: wave 1 failed (www-1)"}
    assert session.before["portico"] == "/nix/store/portico-before"
    # the blocked instances' steps wait for nothing (no build, no copy) and say why at once
    ns = tasks.namespace(session)
    pushes = {t["name"]: t for t in ns["task_push"]()}
    assert pushes["www-2"]["task_dep"] == [] and pushes["portico"]["task_dep"] != []
    done = pushes["www-2"]["actions"][0]()
    assert isinstance(done, NotStarted) and done.reason == "not started: wave 1 failed (www-1)"
    row = orchestrate.row(session, session.plan.instances[1])
    assert (row.result, row.reason) == ("failed", "unreachable: Connection refused")


def test_skip_unreachable_skips_without_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = fleet(tmp_path, skip_unreachable=True)
    monkeypatch.setattr(session.remotes, "probe_all", _probes({"www-1", "portico"}))
    session.connect_all()
    # portico is also www-2's and www-3's relay host: they are skipped with it, and say so
    assert session.blocked == {"portico": "unreachable: Connection refused",
                               "www-1": "unreachable: Connection refused",
                               "www-2": "relay host portico unreachable: Connection refused",
                               "www-3": "relay host portico unreachable: Connection refused"}
    assert session.failed_instances() == set() and session.halted is None
    row = orchestrate.row(session, session.plan.instances[1])
    assert (row.result, row.reason) == ("skipped", "unreachable: Connection refused")
    assert orchestrate.settled_well(session, row)


def test_doit_opens_connections_only_for_runs_that_reach_hosts() -> None:
    reaches = orchestrate.doit_reaches_hosts
    assert reaches(["deploy", "targets=portico,*"]) and reaches(["push:www-1"]) and reaches(["-n", "2", "deploy"])
    assert not reaches(["list", "config=example"]) and not reaches(["info", "deploy"])
    assert not reaches([]) and not reaches(["build", "targets=www*"]) and not reaches(["-f", "x/dodo.py"])


def test_the_gate_waits_for_the_previous_wave(tmp_path: Path) -> None:
    """In a worker thread, wave 2's gate waits until wave 1 settled (any failed step counts)."""
    session = fleet(tmp_path)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(open_wave(session, 2)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got
    settle_wave_1(session, TaskId(Kind.KEYS, "www-1"))
    waiter.join(5)
    assert isinstance(got[0], NotStarted) and "wave 1 failed (www-1)" in got[0].reason


HOST_KEY_CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:RRyZ4WqcZNjnExDgXnv3Jv3VPgp1MheGXl7hBFjiWGw.
Please contact your system administrator.
Add correct host key in /tmp/fleet/.hive.state.d/ssh/known_hosts to get rid of this message.
Offending ED25519 key in /tmp/fleet/.hive.state.d/ssh/known_hosts:2
  remove with:
  ssh-keygen -f "/tmp/fleet/.hive.state.d/ssh/known_hosts" -R "www-1"
Host key for www-1 has changed and you have requested strict checking.
Host key verification failed.
"""  # OpenSSH 9.2, as a lab host with another host's key made it say


def test_a_host_key_that_is_not_the_pinned_one_is_named_in_one_line() -> None:
    offered = "it offered ED25519 SHA256:RRyZ4WqcZNjnExDgXnv3Jv3VPgp1MheGXl7hBFjiWGw"
    pinned = "instances.www-1.hostKey"
    assert ssh_reason(HOST_KEY_CHANGED, pinned) == f"its host key is not instances.www-1.hostKey ({offered})"
    assert ssh_reason(HOST_KEY_CHANGED) == f"its host key is not the one your known_hosts has for it ({offered})"
    assert ssh_reason(HOST_KEY_CHANGED.replace("\n", "\r\n"), pinned) == ssh_reason(HOST_KEY_CHANGED, pinned)
    assert ssh_reason("ssh: connect to host 10.0.0.1 port 22: Connection refused\n") == (
        "ssh: connect to host 10.0.0.1 port 22: Connection refused")
    assert ssh_reason("") == "ssh failed and said nothing"
    # nothing answered (behind a jump host: the hop's channel never opened): said as such
    silent = "Connection timed out during banner exchange\r\nConnection to UNKNOWN port 65535 timed out\r\n"
    assert ssh_reason(silent, None, 3) == "it did not answer ssh within 3 s"
    assert ssh_reason(silent) == "it did not answer ssh within ConnectTimeout"


def test_an_unreachable_host_behind_a_jump_host_names_the_hop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = fleet(tmp_path)
    jumped = {n: dataclasses.replace(i, ssh=frozen_map({"ProxyJump": "portico"}))
              for n, i in session.hive.instances.items() if n != "portico"}
    hive = dataclasses.replace(session.hive, instances={**session.hive.instances, **jumped})
    i = hive.instances
    behind = Session(hive, plan.make_plan(hive, [(i["www-1"],), (i["www-2"], i["www-3"])]),
                     Options(state_file=tmp_path / "state"), progress=Progress(quiet=True))
    monkeypatch.setattr(behind.remotes, "probe_all", _probes({"www-1"}))
    behind.connect_all()  # portico (the jump host, not selected) answers: the reason says through which hop
    assert behind.blocked["www-1"] == "unreachable: Connection refused (through portico)"
    down = Session(hive, behind.plan, Options(state_file=tmp_path / "state"), progress=Progress(quiet=True))
    monkeypatch.setattr(down.remotes, "probe_all", _probes({"www-1", "portico"}))
    down.connect_all()
    assert down.blocked["www-1"] == "unreachable: its jump host portico is unreachable: Connection refused"


def test_a_run_interrupted_by_ctrl_c_exits_1_even_when_every_step_was_done(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/running.md: Ctrl-C exits 1 (it exited 0 when the steps it let finish were the last)."""
    session = fleet(tmp_path)
    monkeypatch.setattr(session.remotes, "probe_all", _probes(set()))

    def everything_done(s: Session, targets: object) -> int:
        for i in s.plan.instances:
            for task in s.plan.instance_tasks(i):
                s.outcomes.set(task, Outcome(Status.OK))
        s.interrupt()  # Ctrl-C while the last activation ran: it finished
        return 0

    monkeypatch.setattr(orchestrate, "execute", everything_done)
    code, found = orchestrate.deploy(session)
    assert all(r.result == "ok" for r in found) and code == 1


def test_a_search_path_entry_that_cannot_be_downloaded_is_read_from_every_nix() -> None:
    from hive.errors import undownloaded

    url = "http://127.0.0.1:9/nixexprs.tar.xz"
    nix28 = (f"warning: error: unable to download '{url}': Couldn't connect to server (7); retrying in 276 ms\n"
             f"warning: Nix search path entry '{url}' cannot be downloaded, ignoring\n")
    nix234 = (f"warning: error: unable to download '{url}': Could not connect to server (7) Failed to connect to "
              f"127.0.0.1:9 after 0 ms: Could not connect to server; retrying in 2611 ms (attempt 4/5)\n"
              f"warning: Nix search path entry '{url}' cannot be downloaded, ignoring\n")
    assert undownloaded(nix28) == (url, "Couldn't connect to server (7)")
    assert undownloaded(nix234) == (url, "Could not connect to server (7) Failed to connect to 127.0.0.1:9 after 0 ms: "
                                         "Could not connect to server")
    assert undownloaded("error: undefined variable 'x'") is None
