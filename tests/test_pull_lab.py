"""Pull mode's host side (issue 32): hive/host/agent.sh on systemd lab hosts, run from its unit,
polling nginx (Debian's, WebDAV PUT) in the cache host's namespace. Records are made by hand as
docs/pull.md describes them (tests/pullcache.py); nothing reaches the hosts over ssh: the lab enters
their namespaces, as an operator at the console would, to start a poll and look."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import needs, poll_until, wait_until
from tests.constants import REPO, STANDIN, nix_env
from tests.fleet import make_key
from tests.lab import Lab
from tests.pullcache import Check, Nginx, Publisher
from tests.test_lab import _missing, sh

pytestmark = [needs("lab", _missing()), pytest.mark.xdist_group("pull_lab")]

HOSTS = ("h1", "h2", "h3", "h4", "h5", "h6")
TOPOLOGY = {"cache": ["pub"], **{h: ["pub"] for h in HOSTS}}
PORT = 8080
CACHE = f"http://cache:{PORT}"
HEALTHY = Check("health", "command", 'test "$(cat /run/standin-health)" = healthy')


# The hosts' agents (nix/agent.nix's options): h5's confirmation window is short (the agent is
# killed in it), h6 polls by its timer every 5 s (+ up to 2 s); the others by hand.
AGENTS = {h: {"interval": "1h", "jitter": "1s", "confirm": 30} for h in HOSTS} | {
    "h5": {"interval": "1h", "jitter": "1s", "confirm": 10},
    "h6": {"interval": "5s", "jitter": "2s", "confirm": 30},
}
VARIANTS = {
    "base": "",
    "v2": "",
    "v3": "",
    "v4": "",
    "sick": "standin.healthy = false;",
    "broken": 'standin.activation = "fail";',
}


@dataclass
class Pull:
    lab: Lab
    nginx: Nginx
    pub: Publisher
    key: Path  # the deployment's signing key
    public: str
    other: Path  # another key, which the hosts trust for substitution (not the deployment's)
    impostor: Path  # a key named as the deployment's, another secret
    systems: dict[tuple[str, str], str]  # (host, variant) -> system

    def status(self, host: str) -> dict[str, object]:
        return dict(json.loads((self.nginx.root / "nix-hive" / "status" / f"{host}.json").read_text()))

    def poll(self, host: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One poll, now: the agent's unit started (systemctl waits for the oneshot to end)."""
        return self.lab.run(host, ["timeout", "300", "systemctl", "start", "nix-hive-agent.service"], check=check)

    def publish(self, host: str, variant: str, *, key: Path | None = None, checks: tuple[Check, ...] = (HEALTHY,),
                serial: int | None = None, instance: str | None = None, signed: bool = True) -> str:
        """A record for `host` (its content says `instance`, default the host) pointed at."""
        system = self.systems[host, variant]
        self.pub.system(self.key, system)
        record = self.pub.record((key or self.key) if signed else None, instance or host, system, checks=checks,
                                 serial=serial)
        self.pub.point(host, record)
        return record

    def install(self, host: str) -> None:
        """The host's first system (with the agent's unit and timer), as an operator installs it:
        fetched from the cache and switched to at the host's console."""
        base = self.systems[host, "base"]
        self.pub.system(self.key, base)
        self.lab.run(host, ["sh", "-c", f"nix copy --from {CACHE} {base} && "
                            f"nix-env -p /nix/var/nix/profiles/system --set {base} && "
                            f"{base}/bin/switch-to-configuration switch"])

    def current(self, host: str, variant: str) -> bool:
        return self.lab.current_system(host) == self.systems[host, variant]


def build_systems(tmp: Path, public: str) -> dict[tuple[str, str], str]:
    """Every host's systems: the stand-in's, with nix/agent.nix imported and enabled."""
    expr = tmp / "systems.nix"
    body = ""
    for h, a in AGENTS.items():
        for v, extra in VARIANTS.items():
            body += (f'  "{h}-{v}" = (import {STANDIN}/nixos {{ configuration = {{ imports = [ {REPO}/nix/agent.nix ]; '
                     f'networking.hostName = "pull-{h}-{v}"; services.nix-hive-agent = {{ enable = true; '
                     f'cache = "{CACHE}"; publicKey = "{public}"; instance = "{h}"; interval = "{a["interval"]}"; '
                     f'jitter = "{a["jitter"]}"; confirmTimeout = {a["confirm"]}; activationTimeout = 120; }}; '
                     f'{extra} }}; }}).system;\n')
    expr.write_text("{\n" + body + "}\n")
    names = [f"{h}-{v}" for h in AGENTS for v in VARIANTS]
    out = sh(["nix", "build", "--impure", "-f", str(expr), *names, "--json", "--no-link"], env=nix_env()).stdout
    # by name (nix build --json lists them in an order of its own)
    paths = {str(d["outputs"]["out"]).split("-nixos-system-pull-", 1)[1]: str(d["outputs"]["out"])
             for d in json.loads(out)}
    return {(h, v): paths[f"{h}-{v}"] for h in AGENTS for v in VARIANTS}


@pytest.fixture(scope="module")
def pull(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pull]:
    tmp = tmp_path_factory.mktemp("pull")
    key, public = make_key(tmp / "keys", "hive-pull")
    other, other_public = make_key(tmp / "other", "mirror")
    impostor, _ = make_key(tmp / "impostor", "hive-pull")
    conf = f"trusted-public-keys = {public} {other_public}\n"
    systems = build_systems(tmp, public)
    lab = Lab.start(TOPOLOGY, tmp / "lab", nix_conf={h: conf for h in HOSTS}, init="systemd")
    nginx = Nginx(lab, "cache", tmp / "cache", tmp / "nginx", PORT)
    try:
        nginx.start()
        # the deployer's namespace has the machine's /etc/hosts: the cache by its address
        url = f"http://{lab.hosts['cache'].addresses['pub']}:{PORT}"
        pull = Pull(lab, nginx, Publisher(lab, url, tmp / "records"), key, public, other, impostor, systems)
        for h in HOSTS:
            if h != "h6":  # the timer's test installs its own
                pull.install(h)
        yield pull
    finally:
        nginx.stop()
        lab.down()


def test_a_good_record_reaches_the_host_and_two_hosts_follow_their_own(pull: Pull) -> None:
    r1 = pull.publish("h1", "v2")
    r2 = pull.publish("h2", "v3")
    pull.poll("h1")
    pull.poll("h2")
    assert pull.current("h1", "v2") and pull.current("h2", "v3")
    s = pull.status("h1")
    assert s["outcome"] == "ok", s
    assert s["format"] == "nix-hive-status-1" and s["instance"] == "h1" and s["record"] == r1
    assert s["system"] == pull.systems["h1", "v2"] and s["serial"] == s["applied_serial"]
    assert isinstance(s["serial"], int) and r1.endswith(f"-{s['serial']}")
    assert pull.status("h2")["record"] == r2 and pull.status("h2")["outcome"] == "ok"
    # the next record: h1 moves on, its profile too; the agent's own unit was not restarted by
    # its own switch (it reported after it)
    r3 = pull.publish("h1", "v3")
    pull.poll("h1")
    assert pull.current("h1", "v3")
    assert pull.status("h1")["record"] == r3 and pull.status("h1")["outcome"] == "ok"
    profile = pull.lab.run("h1", ["readlink", "-f", "/nix/var/nix/profiles/system"]).stdout.strip()
    assert profile == pull.systems["h1", "v3"]
    # nothing new: a heartbeat (with the record's time: how old the newest record is), nothing activated
    when = pull.status("h1")["record_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(when)), when
    starts = len(pull.lab.activation_starts("h1"))
    pull.poll("h1")
    s = pull.status("h1")
    assert s["outcome"] == "unchanged" and s["record"] == r3 and s["record_time"] == when, s
    assert len(pull.lab.activation_starts("h1")) == starts
    # the agent asked nginx over HTTP, and PUT its status there
    log = pull.nginx.access_log()
    assert '"GET /nix-hive/pointers/h1 HTTP' in log and '"PUT /nix-hive/status/h1.json HTTP' in log


def test_a_failing_check_rolls_the_host_back_and_says_why(pull: Pull) -> None:
    sick = pull.publish("h3", "sick")
    pull.poll("h3")
    assert pull.current("h3", "base")
    s = pull.status("h3")
    assert s["outcome"] == "rolled-back" and s["record"] == sick, s
    assert "check health failed: exit 1" in str(s["reason"]), s
    assert s["applied_serial"] is None
    # the switch itself failing: rolled back too
    broken = pull.publish("h3", "broken")
    pull.poll("h3")
    assert pull.current("h3", "base")
    s = pull.status("h3")
    assert s["outcome"] == "rolled-back" and s["record"] == broken and "failed-1" in str(s["reason"]), s
    # not tried again until the pointer changes
    starts = len(pull.lab.activation_starts("h3"))
    pull.poll("h3")
    assert pull.status("h3")["outcome"] == "unchanged"
    assert len(pull.lab.activation_starts("h3")) == starts
    # a good one after them goes through
    pull.publish("h3", "v2")
    pull.poll("h3")
    assert pull.current("h3", "v2") and pull.status("h3")["outcome"] == "ok"


def refused(pull: Pull, host: str, record: str, why: str, variant: str) -> None:
    """One poll refuses `record`, says `why`, and changes nothing."""
    starts = len(pull.lab.activation_starts(host))
    pull.poll(host)
    s = pull.status(host)
    assert s["outcome"] == "refused" and s["record"] == record, s
    assert why in str(s["reason"]), s
    assert pull.current(host, variant)
    assert len(pull.lab.activation_starts(host)) == starts
    assert s["system"] == pull.systems[host, variant]


def test_forged_foreign_replayed_and_tampered_records_are_refused(pull: Pull) -> None:
    h = "h4"
    r1 = pull.publish(h, "v2")
    pull.poll(h)
    pull.publish(h, "v3")
    pull.poll(h)
    assert pull.current(h, "v3") and pull.status(h)["outcome"] == "ok"
    applied = pull.status(h)["applied_serial"]
    # signed by another key the host trusts for substitution, not the deployment's: Nix fetches
    # it, the agent's own check refuses it
    forged = pull.publish(h, "v4", key=pull.other)
    refused(pull, h, forged, "not signed by the deployment's key", "v3")
    # not signed at all (Nix fetches it: a record is content-addressed, which Nix trusts unsigned;
    # the agent's check does not)
    unsigned = pull.publish(h, "v4", signed=False)
    refused(pull, h, unsigned, "no signature by hive-pull", "v3")
    # signed by a key of the same name that is not the deployment's
    impostor = pull.publish(h, "v4", key=pull.impostor)
    refused(pull, h, impostor, "not signed by the deployment's key", "v3")
    # signed, but for another instance
    foreign = pull.publish(h, "v4", instance="h1")
    refused(pull, h, foreign, "for the instance h1, not h4", "v3")
    # a record applied before, replayed
    pull.pub.point(h, r1)
    refused(pull, h, r1, "not newer than the one applied", "v3")
    # an older serial never seen (a downgrade)
    old = pull.publish(h, "v4", serial=int(str(applied)) - 1)
    refused(pull, h, old, "not newer than the one applied", "v3")
    # a tampered closure: the system's NAR altered in the cache (a system the host lacks)
    tampered = pull.publish(h, "sick")
    system = pull.systems[h, "sick"]
    narinfo = (pull.nginx.root / f"{system.removeprefix('/nix/store/')[:32]}.narinfo").read_text()
    nar = pull.nginx.root / next(ln.split(": ", 1)[1] for ln in narinfo.splitlines() if ln.startswith("URL: "))
    data = bytearray(nar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    nar.write_bytes(bytes(data))
    refused(pull, h, tampered, "refused by Nix", "v3")
    assert pull.lab.run(h, ["nix-store", "--check-validity", system], check=False).returncode != 0
    assert pull.status(h)["applied_serial"] == applied


def test_the_cache_down_during_a_poll_changes_nothing_and_the_next_poll_applies(pull: Pull) -> None:
    h = "h5"
    record = pull.publish(h, "v2")
    pull.nginx.stop()
    try:
        out = pull.poll(h, check=False)
        assert out.returncode != 0
        assert pull.current(h, "base")
        local = json.loads(pull.lab.read(h, "/var/lib/nix-hive-agent/status.json") or "{}")
        assert local["outcome"] == "failed" and "cannot read the pointer" in local["reason"], local
    finally:
        pull.nginx.start()
    # the cache answers but lacks the system (an upload not finished, a cache collected): no
    # verdict on the record, nothing changed, and the next poll asks the cache again (Nix
    # remembers a path a cache lacked for an hour unless told not to)
    info = pull.nginx.root / f"{pull.systems[h, 'v2'].removeprefix('/nix/store/')[:32]}.narinfo"
    kept = info.read_bytes()
    info.unlink()
    try:
        pull.poll(h, check=False)
        local = json.loads(pull.lab.read(h, "/var/lib/nix-hive-agent/status.json") or "{}")
        assert local["outcome"] == "failed", local
        assert "the cache lacks part of the record's closure (asked again next poll)" in local["reason"], local
        assert pull.current(h, "base")
    finally:
        info.write_bytes(kept)
    pull.poll(h)
    assert pull.current(h, "v2")
    assert pull.status(h)["outcome"] == "ok" and pull.status(h)["record"] == record


def test_the_agent_killed_in_its_confirmation_window_leaves_the_host_on_a_good_system(pull: Pull) -> None:
    h = "h5"
    before = pull.lab.current_system(h)
    assert before is not None
    slow = Check("slow", "command", "sleep 100", timeout=200)
    record = pull.publish(h, "v3", checks=(slow,))
    poll = subprocess.Popen(pull.lab.host_argv(h, ["systemctl", "start", "nix-hive-agent.service"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def waiting() -> bool:
            out = pull.lab.run(h, ["sh", "-c", "cat /run/nix-hive/pull-*/state 2>/dev/null"], check=False).stdout
            return "waiting" in out.split()
        wait_until(waiting, 60, "the agent's activation waits for its confirmation")
        assert pull.current(h, "v3")
        pull.lab.run(h, ["systemctl", "kill", "--signal=KILL", "nix-hive-agent.service"])
        poll.wait(timeout=30)
    finally:
        if poll.poll() is None:
            poll.kill()
    # the activation runs on in its own unit, is never confirmed, and rolls back by itself
    wait_until(lambda: pull.lab.current_system(h) == before, 60, "the host rolled back by itself")
    wait_until(lambda: "rolled-back" in pull.lab.run(h, ["sh", "-c", "cat /run/nix-hive/pull-*/state"],
                                                     check=False).stdout, 30, "the activation ended")
    # the next poll says what became of it, and does not try it again
    starts = len(pull.lab.activation_starts(h))
    pull.poll(h)
    s = pull.status(h)
    assert s["outcome"] == "rolled-back" and s["record"] == record, s
    assert "the agent stopped during the activation" in str(s["reason"]) and "not-confirmed" in str(s["reason"])
    assert len(pull.lab.activation_starts(h)) == starts
    pull.poll(h)
    assert pull.status(h)["outcome"] == "unchanged"


def wait_status(pull: Pull, host: str, record: str, seconds: float) -> float:
    """Seconds until host reports `record` applied."""
    t0 = time.monotonic()
    done = poll_until(lambda: (pull.nginx.root / "nix-hive/status" / f"{host}.json").exists()
                      and pull.status(host)["record"] == record and pull.status(host)["outcome"] == "ok", seconds)
    if not done:
        timers = pull.lab.systemctl(host, "list-timers", "--all", "--no-pager").stdout
        journal = pull.lab.journal(host, "nix-hive-agent.service")[-3000:]
        raise AssertionError(f"{host} did not report {record} ok within {seconds} s:\n{pull.status(host)}\n"
                             f"{timers}\n{journal}")
    return time.monotonic() - t0


def test_the_timer_polls_within_interval_and_jitter(pull: Pull) -> None:
    h = "h6"
    first = pull.publish(h, "v2")
    pull.install(h)  # its timer starts with the switch: OnBootSec is long past, it fires now
    wait_status(pull, h, first, 5 + 2 + 60)
    second = pull.publish(h, "v3")
    took = wait_status(pull, h, second, 5 + 2 + 45)  # interval + jitter + the poll (under load)
    print(f"\nthe timer's poll applied a new record {took:.1f} s after it was published (interval 5 s, jitter 2 s)")
    print("\n".join(ln for ln in pull.lab.journal(h, "nix-hive-agent.service").splitlines()
                    if "nix-hive-agent" in ln)[-2500:])
    assert pull.current(h, "v3")
    assert pull.lab.systemctl(h, "is-active", "nix-hive-agent.timer").stdout.strip() == "active"
