"""Pull mode, the deployer's side (issue 32, hive/pull.py, hive/publish.py): records rendered
and parsed exactly as docs/pull.md says, made in the store referencing their system alone,
signed and copied to a file:// cache and to a real HTTP server that accepts PUT
(tests/putserver.py); `publish` wave by wave against fake agents (threads that read pointers
and PUT status documents, as an agent does), its gate, --no-wait and its timeout; `status
--from`. The real agent's proof is the lab's (hive/host/agent.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hive import cachefiles, nix, pull
from hive.errors import InputError
from hive.model import Check
from hive.pull import AgentStatus, Record, RecordError
from tests.conftest import STANDIN, needs_nix, nix_hive, nix_hive_on_terminal, write_hive
from tests.putserver import PutServer, serving

SYSTEM = "/nix/store/0029324sp8jn3b9pf7706c0sdnijllq5-nixos-system-b"
RECORD = Record(instance="www-1", system=SYSTEM, serial=1796652175059, time="2026-12-07T14:02:55Z", wave=2,
                run="7c522d4d9079",
                checks=(Check("up", command="systemctl is-active nginx && true"),
                        Check("web", http="http://127.0.0.1/", status=(200, 204), timeout=3, retries=1, interval=4)))
TEXT = ("format\tnix-hive-record-1\ninstance\twww-1\n"
        f"system\t{SYSTEM}\nserial\t1796652175059\ntime\t2026-12-07T14:02:55Z\nwave\t2\nrun\t7c522d4d9079\n"
        "check\tup\t10\t5\t2\tcommand\tsystemctl is-active nginx && true\n"
        "check\tweb\t3\t1\t4\thttp\thttp://127.0.0.1/\t200,204\n")


# Records, pointers, status documents (no I/O) --------------------------------------------------

def test_a_record_renders_exactly_as_documented_and_parses_back() -> None:
    assert pull.render_record(RECORD) == TEXT
    assert pull.parse_record(TEXT) == RECORD
    bare = Record("a", SYSTEM, 0, "2026-01-01T00:00:00Z", 1, "000000000000")
    assert pull.parse_record(pull.render_record(bare)) == bare
    any_2xx = Check("web", http="http://x/")
    assert pull.check_line(any_2xx).endswith("\thttp\thttp://x/\t-")
    assert pull.parse_record(pull.render_record(Record("a", SYSTEM, 1, bare.time, 1, bare.run, (any_2xx,)))).checks \
        == (any_2xx,)


def _swap(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(("text", "why"), [
    (TEXT[:-1], "does not end with a newline"),
    ("", "does not end with a newline"),
    (_swap(TEXT, "nix-hive-record-1", "nix-hive-record-2"), "format"),
    (_swap(TEXT, "instance\twww-1\n", ""), "line 2 is not `instance"),
    ("instance\twww-1\nformat\tnix-hive-record-1\n" + TEXT.split("\n", 2)[2], "line 1 is not `format"),
    (_swap(TEXT, "serial\t1796652175059", "serial\t01796652175059"), "serial"),
    (_swap(TEXT, "serial\t1796652175059", "serial\t-1"), "serial"),
    (_swap(TEXT, "2026-12-07T14:02:55Z", "2026-12-07 14:02:55"), "UTC time"),
    (_swap(TEXT, "wave\t2", "wave\t0"), "waves count from 1"),
    (_swap(TEXT, "7c522d4d9079", "7C522D4D9079"), "12 lowercase hex"),
    (_swap(TEXT, SYSTEM, "/tmp/evil"), "not a store path"),
    (_swap(TEXT, "instance\twww-1", "instance\twww-1\textra"), "one non-empty field"),
    (_swap(TEXT, "instance\twww-1", "instance\twww/1"), "not an instance name"),
    (TEXT + "extra\tline\n", "not a check line"),
    (TEXT + "check\tzz\t1\t1\t1\tshell\tx\n", "neither"),
    (TEXT + "check\taa\t1\t1\t1\tcommand\tx\n", "name order"),
    (TEXT.replace("\n", "\r\n"), "format"),
])
def test_parse_record_refuses_anything_else_saying_why(text: str, why: str) -> None:
    with pytest.raises(RecordError, match=why):
        pull.parse_record(text)


def test_a_check_a_line_cannot_hold_is_bad_input_naming_it() -> None:
    for check in (Check("multi", command="a\nb"), Check("tab", command="a\tb"), Check("url", http="http://x/\t")):
        with pytest.raises(InputError, match=f"check '{check.name}'"):
            pull.render_record(Record("a", SYSTEM, 1, RECORD.time, 1, RECORD.run, (check,)))


def test_record_names_keep_under_the_store_limit() -> None:
    assert pull.record_name("www-1", 17) == "nix-hive-record-www-1-17"
    long = "h" * 180
    name = pull.record_name(long, 1796652175059)
    assert name == f"nix-hive-record-{'h' * 150}-1796652175059" and len(name) <= 200
    edge = "e" * (200 - len("nix-hive-record--1796652175059"))
    assert pull.record_name(edge, 1796652175059) == f"nix-hive-record-{edge}-1796652175059"


def test_the_serial_rule() -> None:
    assert pull.next_serial(1000, None) == 1000
    assert pull.next_serial(1000, 400) == 1000  # the clock is ahead of the last record
    assert pull.next_serial(1000, 1000) == 1001  # two runs in one millisecond
    assert pull.next_serial(1000, 5000) == 5001  # a clock set back: still above
    path = f"/nix/store/{'a' * 32}-nix-hive-record-www-1.example-42"
    assert pull.serial_of(path) == 42
    assert pull.serial_of(f"/nix/store/{'a' * 32}-nixos-system-www") is None
    assert pull.parse_pointer(f"{path}\n") == path
    for bad in (f"{path}\n{path}\n", "/tmp/x\n", ""):
        with pytest.raises(RecordError):
            pull.parse_pointer(bad)


def test_status_documents_parse_and_refuse() -> None:
    status = AgentStatus("www-1", SYSTEM, None, None, None, "unchanged", "nothing new", "2026-12-07T14:02:55Z",
                         "2026-12-07T14:02:56Z", None)
    assert pull.parse_status(pull.render_status(status)) == status
    good = json.loads(pull.render_status(status))
    for change, why in (({"format": "x"}, "format"), ({"outcome": "great"}, "outcome"),
                        ({"serial": "12"}, "serial"), ({"serial": True}, "serial"), ({"reason": None}, "reason")):
        with pytest.raises(RecordError, match=why):
            pull.parse_status(json.dumps({**good, **change}))
    with pytest.raises(RecordError, match="not JSON"):
        pull.parse_status(b"\xff")


# Cache files: file:// and HTTP ------------------------------------------------------------------

def test_cache_files_over_file_and_http(tmp_path: Path) -> None:
    for bad in ("ssh://cache", "file://host/dir", "http://", "/dir", "http://cache/?x=1"):
        with pytest.raises(InputError):
            cachefiles.base_url(bad)
    assert cachefiles.base_url("http://cache:8080/") == "http://cache:8080"
    local = f"file://{tmp_path}/cache"
    assert cachefiles.get(pull.pointer_url(local, "a")) is None
    cachefiles.put(pull.pointer_url(local, "a"), b"x\n")
    assert cachefiles.get(pull.pointer_url(local, "a")) == b"x\n"
    with serving(tmp_path / "http") as server:
        url = pull.status_url(server.url, "a")
        assert cachefiles.get(url) is None
        cachefiles.put(url, b"{}")
        assert cachefiles.get(url) == b"{}"
        assert (tmp_path / "http/nix-hive/status/a.json").read_bytes() == b"{}"
        server.refuse_put = True
        with pytest.raises(cachefiles.CacheFileError, match=r"PUT .* HTTP 403"):
            cachefiles.put(url, b"[]")
    with pytest.raises(cachefiles.CacheFileError, match="GET"):
        cachefiles.get(url, timeout=2)  # the server is gone


# Records in the store, signed, copied -----------------------------------------------------------

def _built_system(tmp_path: Path) -> str:
    out = subprocess.run(["nix-build", "--no-out-link", "-E",
                          f"(import {STANDIN}/nixos {{ configuration = {{ networking.hostName = \"rec\"; }}; }}).system"
                          ], capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip()


def _key(directory: Path, name: str = "hive") -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    sec, pub = directory / f"{name}.sec", directory / f"{name}.pub"
    subprocess.run(["nix-store", "--generate-binary-cache-key", name, str(sec), str(pub)], check=True)
    return sec, pub.read_text().strip()


def _verify(store: str, path: str, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*nix.NIX, "store", "verify", "--store", store, "--option", "trusted-public-keys", key,
                           "--sigs-needed", "1", path], capture_output=True, text=True, timeout=60)


def test_nix_base32_and_the_record_path() -> None:
    # the hash of /nix/store/0029324sp8jn3b9pf7706c0sdnijllq5-…, as Nix writes its 20 bytes
    assert pull.nix_base32(bytes(20)) == "0" * 32
    assert pull.nix_base32(b"\xff" * 20) == "z" * 32
    assert pull.nix_base32(b"\x01" + bytes(19)) == "0" * 31 + "1"
    path = pull.record_path("nix-hive-record-www-1-5", TEXT)
    assert pull.serial_of(path) == 5 and path == pull.record_path("nix-hive-record-www-1-5", TEXT)
    assert path != pull.record_path("nix-hive-record-www-1-5", TEXT + "check\tz\t1\t1\t1\tcommand\tx\n")


@needs_nix
def test_a_record_references_its_system_alone_and_only_its_signature_makes_it_trusted(tmp_path: Path) -> None:
    """The record is input-addressed (no `ca`): Nix checks its signature. A content-addressed
    one (builtins.toFile, as first designed) passes `nix store verify` unsigned."""
    system = _built_system(tmp_path)
    long = "l" * 190
    records = [Record("www-1", system, 5, RECORD.time, 1, RECORD.run, RECORD.checks),
               Record(long, system, 6, RECORD.time, 2, RECORD.run)]
    entries = [(pull.record_path(pull.record_name(r.instance, r.serial), pull.render_record(r)),
                pull.render_record(r), [r.system]) for r in records]
    paths = nix.import_paths(pull.export(entries))
    assert paths == [e[0] for e in entries]
    assert nix.import_paths(pull.export(entries)) == paths  # once more: already there, the same
    for record, path in zip(records, paths, strict=True):
        assert path.endswith(f"-{pull.record_name(record.instance, record.serial)}")
        assert pull.serial_of(path) == record.serial
        assert pull.parse_record(Path(path).read_text()) == record
        refs = subprocess.run(["nix-store", "-q", "--references", path], capture_output=True, text=True, check=True)
        assert refs.stdout.split() == [system]
        check = subprocess.run(["nix-store", "--verify-path", path], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr  # its NAR hash is the one registered
        info = json.loads(subprocess.run([*nix.NIX, "path-info", "--json", path], capture_output=True, text=True,
                                         check=True).stdout)
        entry = info[0] if isinstance(info, list) else info[path]
        assert not entry.get("ca"), entry  # input-addressed: signatures count
    assert f"-nix-hive-record-{'l' * 150}-6" in paths[1]
    sec, pub = _key(tmp_path / "keys")
    _, other = _key(tmp_path / "keys", "other")
    with serving(tmp_path / "http") as server:
        unsigned = f"file://{tmp_path}/unsigned"
        nix.copy(unsigned, paths[:1], substitute=False, env={}, timeout=120)
        refused = _verify(unsigned, paths[0], pub)
        assert refused.returncode != 0 and "untrusted" in refused.stderr + refused.stdout
        nix.sign(sec, paths)
        for store in (f"file://{tmp_path}/cache", server.url):
            nix.copy(store, paths, substitute=False, env={}, timeout=120)
            for path in (*paths, system):
                assert _verify(store, path, pub).returncode == 0, path
            refused = _verify(store, paths[0], other)
            assert refused.returncode != 0 and "untrusted" in refused.stderr + refused.stdout
        assert ("PUT", f"/{Path(paths[0]).name[:32]}.narinfo") in server.log


# publish and status --from ---------------------------------------------------------------------

HIVE = f"""
{{
  paths.nixpkgs = {STANDIN};
  signingKey = ./keys/hive.sec;
  systems.web.configuration = {{ networking.hostName = "web"; }};
  systems.web.checks.up = {{ command = "true"; }};
  # addresses that do not resolve: publish must never need them
  instances = builtins.listToAttrs (map (name: {{
    inherit name;
    value = {{ system = "web"; ssh.Hostname = "${{name}}.nowhere.invalid"; }};
  }}) [ "a1" "a2" "b1" ]);
}}
"""


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    _key(tmp_path / "fleet/keys")
    return write_hive(tmp_path / "fleet", HIVE)


@pytest.fixture
def no_ssh(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """An environment whose `ssh` and `scp` only leave a mark (publish must start none); `ssh
    -G`, which parses the generated configuration when the deployment is read and connects
    nowhere, is the real one's."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    mark = tmp_path / "ssh-was-run"
    real = shutil.which("ssh")
    for name in ("ssh", "scp"):
        parse = f'[ "$1" = -G ] && exec {real} "$@"\n' if name == "ssh" and real else ""
        (bin_ / name).write_text(f"#!/bin/sh\n{parse}echo \"$@\" >> {mark}\nexit 255\n")
        (bin_ / name).chmod(0o755)
    yield {"PATH": f"{bin_}:{os.environ['PATH']}"}, mark


class FakeAgent:
    """A stand-in for hosts' agents, for the deployer's logic only: a thread that reads each
    host's pointer every 0.1 s (HTTP GET) and, for a record it has not handled, PUTs a status
    document saying `outcomes[host]` (default ok) with the record's serial, after `delay` s."""

    def __init__(self, base: str, hosts: list[str], outcomes: dict[str, str] | None = None,
                 delay: float = 0.5) -> None:
        self.base, self.hosts, self.outcomes, self.delay = base, hosts, outcomes or {}, delay
        self.seen: dict[str, float] = {}  # host -> when it first saw a pointer
        self.reported: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fake agent")

    def __enter__(self) -> FakeAgent:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        handled: dict[str, str] = {}
        while not self._stop.wait(0.1):
            for host in self.hosts:
                data = cachefiles.get(pull.pointer_url(self.base, host))
                if data is None:
                    continue
                path = pull.parse_pointer(data.decode())
                if handled.get(host) == path:
                    continue
                self.seen.setdefault(host, time.monotonic())
                if time.monotonic() - self.seen[host] < self.delay:
                    continue
                # the record is in this machine's store (the deployer's): read as an agent would
                record = pull.parse_record(Path(path).read_text())
                assert record.instance == host and record.serial == pull.serial_of(path)
                outcome, serial = self.outcomes.get(host, "ok"), record.serial
                status = AgentStatus(host, record.system, path, serial, record.time, outcome,
                                     f"fake agent: {outcome}", pull.utc(), pull.utc(),
                                     serial if outcome == "ok" else None)
                request = urllib.request.Request(pull.status_url(self.base, host), method="PUT",
                                                 data=pull.render_status(status).encode())
                urllib.request.urlopen(request, timeout=5).read()
                handled[host] = path
                self.reported[host] = time.monotonic()


def _publish(deployment: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return nix_hive("publish", "-c", str(deployment.parent), "--poll", "0.2", *args, env=env, timeout=600)


def _rows(out: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert out.stdout, out.stderr
    return {r["instance"]: r for r in json.loads(out.stdout)["instances"]}


def _puts(server: PutServer, prefix: str) -> list[str]:
    return [path for method, path in server.log if method == "PUT" and path.startswith(prefix)]


@needs_nix
def test_publish_waits_for_wave_1_before_wave_2_with_no_ssh_at_all(
        deployment: Path, tmp_path: Path, no_ssh: tuple[dict[str, str], Path]) -> None:
    env, mark = no_ssh
    with serving(tmp_path / "cache") as server, FakeAgent(server.url, ["a1", "a2", "b1"]) as agent:
        out = _publish(deployment, env, "--to", server.url, "a*", "b1", "--json")
        assert out.returncode == 0, out.stderr
        rows = _rows(out)
        assert {n: (r["wave"], r["outcome"]) for n, r in rows.items()} == {"a1": (1, "ok"), "a2": (1, "ok"),
                                                                         "b1": (2, "ok")}
        # wave 2's pointer was written after both of wave 1's hosts had reported
        log = [(m, p) for m, p in server.log if m == "PUT" and p.startswith("/nix-hive/")]
        order = [p for _, p in log]
        assert order.index("/nix-hive/pointers/b1") > max(order.index("/nix-hive/status/a1.json"),
                                                          order.index("/nix-hive/status/a2.json"))
        assert agent.seen["b1"] > max(agent.reported["a1"], agent.reported["a2"])
        # each record, and the closure, went to the cache once, before any pointer
        first_pointer = server.log.index(("PUT", "/nix-hive/pointers/a1"))
        narinfos = [p for m, p in server.log[:first_pointer] if m == "PUT" and p.endswith(".narinfo")]
        assert len(narinfos) == len(set(narinfos)) >= 4  # 3 records and the system's closure
        records = {r["record"] for r in rows.values()}
        assert len(records) == 3 and all(f"-nix-hive-record-{n}-{r['serial']}" in str(r["record"])
                                         for n, r in rows.items())
        pointer = (tmp_path / "cache/nix-hive/pointers/b1").read_text()
        assert pointer == f"{rows['b1']['record']}\n"
        # status --from reads what they reported
        status = nix_hive("status", "-c", str(deployment.parent), "--from", server.url, "--json", env=env)
        assert status.returncode == 0, status.stderr
        found = json.loads(status.stdout)
        assert found["stale"] == []
        assert {r["instance"]: r["applied_serial"] == r["published_serial"] == rows[r["instance"]]["serial"]
                for r in found["instances"]} == {"a1": True, "a2": True, "b1": True}
        assert all(r["record_age"] is not None and 0 <= r["record_age"] < 600 for r in found["instances"])
        shown = nix_hive("status", "-c", str(deployment.parent), "--from", server.url, env=env)
        assert shown.returncode == 0
        assert shown.stdout.rstrip().splitlines()[-1].startswith("stale: none")
    assert not mark.exists(), f"publish or status ran ssh: {mark.read_text()}"


@needs_nix
def test_a_failed_wave_1_host_stops_wave_2(deployment: Path, tmp_path: Path,
                                           no_ssh: tuple[dict[str, str], Path]) -> None:
    env, mark = no_ssh
    with serving(tmp_path / "cache") as server, FakeAgent(server.url, ["a1", "a2", "b1"],
                                                          {"a2": "rolled-back"}):
        out = _publish(deployment, env, "--to", server.url, "a*", "b1", "--json")
        assert out.returncode == 1, out.stderr
        rows = _rows(out)
        assert rows["a1"]["outcome"] == "ok"
        assert (rows["a2"]["outcome"], rows["a2"]["reason"]) == ("rolled back", "fake agent: rolled-back")
        assert rows["b1"]["outcome"] == "skipped"
        assert rows["b1"]["reason"] == "not started: wave 1 failed (a2)"
        assert "/nix-hive/pointers/b1" not in _puts(server, "/nix-hive/pointers/")
        table = nix_hive("publish", "-c", str(deployment.parent), "--to", server.url, "--no", "build", "--poll",
                         "0.2", "a*", "b1", env=env)
        assert table.returncode == 1
        assert "not started: wave 1 failed (a2)" in table.stdout
        # --keep-going publishes wave 2 all the same
        going = _publish(deployment, env, "--to", server.url, "--keep-going", "a*", "b1", "--json")
        assert going.returncode == 1
        assert _rows(going)["b1"]["outcome"] == "ok"
    assert not mark.exists()


@needs_nix
def test_no_wait_publishes_every_pointer_at_once_and_reads_no_status(
        deployment: Path, tmp_path: Path, no_ssh: tuple[dict[str, str], Path]) -> None:
    env, _ = no_ssh
    cache = f"file://{tmp_path}/cache"
    out = _publish(deployment, env, "--to", cache, "a*", "b1", "--no-wait", "--json")
    assert out.returncode == 0, out.stderr
    rows = _rows(out)
    assert {r["outcome"] for r in rows.values()} == {"published"}
    for name, row in rows.items():
        assert (tmp_path / f"cache/nix-hive/pointers/{name}").read_text() == f"{row['record']}\n"
    assert not (tmp_path / "cache/nix-hive/status").exists()
    # status --from: every host is stale (none reported), and the published serials are shown
    status = nix_hive("status", "-c", str(deployment.parent), "--from", cache, env=env)
    assert status.returncode == 1
    assert status.stdout.rstrip().splitlines()[-1] == "stale (3: no report newer than 900 s): a1, a2, b1"
    assert str(rows["a1"]["serial"]) in status.stdout and "no report" in status.stdout
    # on a terminal 80 columns wide: every name whole, whether each host runs the newest record,
    # then what room is left: the published serial (the columns of none given way)
    code, shown = nix_hive_on_terminal("status", "-c", str(deployment.parent), "--from", cache, env=env)
    assert code == 1 and max(len(line) for line in shown.splitlines()) <= 80, shown
    header, _, *lines, _ = shown.splitlines()
    assert header.split() == ["instance", "outcome", "newest", "record", "age", "report", "age", "reason", "published"]
    assert [line.split()[:4] for line in lines] == [[name, "no", "report", "no"] for name in ("a1", "a2", "b1")]
    assert lines[0].split()[-1] == str(rows["a1"]["serial"])


@needs_nix
def test_a_host_that_does_not_report_in_time_fails_and_stops_wave_2(
        deployment: Path, tmp_path: Path, no_ssh: tuple[dict[str, str], Path]) -> None:
    env, _ = no_ssh
    with serving(tmp_path / "cache") as server, FakeAgent(server.url, ["a1"]):
        started = time.monotonic()
        out = _publish(deployment, env, "--to", server.url, "--wait-timeout", "3", "a*", "b1", "--json")
        assert out.returncode == 1, out.stderr
        rows = _rows(out)
        assert rows["a1"]["outcome"] == "ok"
        assert rows["a2"]["outcome"] == "no report"
        assert str(rows["a2"]["reason"]).startswith(
            "no report within 3 s: the host keeps polling and will apply it by itself")
        assert rows["b1"]["reason"] == "not started: wave 1 failed (a2)"
        assert time.monotonic() - started < 120
        # status reads happened while waiting, and stopped
        assert ("GET", "/nix-hive/status/a2.json") in server.log


@needs_nix
def test_a_cache_emptied_at_the_same_url_is_filled_again(deployment: Path, tmp_path: Path,
                                                          no_ssh: tuple[dict[str, str], Path]) -> None:
    """Nix remembers what an HTTP cache held (30 days) and `nix copy --to` skips it: publish
    to a cache emptied since (a new server at the same address, a wiped bucket) sends the
    closures again, and the cache's nix-cache-info, which the agent asks for."""
    env, _ = no_ssh
    with serving(tmp_path / "cache") as server:
        first = _rows(_publish(deployment, env, "--to", server.url, "--no-wait", "a1", "--json"))
        shutil.rmtree(tmp_path / "cache")
        (tmp_path / "cache").mkdir()
        server.log.clear()
        again = _publish(deployment, env, "--to", server.url, "--no-wait", "a1", "--json")
        assert again.returncode == 0, again.stderr
        record = str(_rows(again)["a1"]["record"])
        assert record != first["a1"]["record"]
    closure = subprocess.run(["nix-store", "-qR", record], capture_output=True, text=True, check=True).stdout.split()
    assert len(closure) >= 3  # the record, its system, what the system holds
    missing = [p for p in closure if not (tmp_path / f"cache/{Path(p).name[:32]}.narinfo").exists()]
    assert missing == [], "the emptied cache did not receive these again"
    assert (tmp_path / "cache/nix-cache-info").read_text() == "StoreDir: /nix/store\n"
    assert ("PUT", "/nix-cache-info") in server.log
    assert "wrote " in again.stderr and "nix-cache-info (the cache had none)" in again.stderr


@needs_nix
def test_the_serial_grows_past_the_pointer_already_there(deployment: Path, tmp_path: Path,
                                                         no_ssh: tuple[dict[str, str], Path]) -> None:
    env, _ = no_ssh
    ahead = pull.now_ms() + 10**9  # a record from a clock far ahead
    (tmp_path / "cache/nix-hive/pointers").mkdir(parents=True)
    (tmp_path / "cache/nix-hive/pointers/a1").write_text(f"/nix/store/{'a' * 32}-nix-hive-record-a1-{ahead}\n")
    out = _publish(deployment, env, "--to", f"file://{tmp_path}/cache", "--no-wait", "a1", "a2", "--json")
    rows = _rows(out)
    assert rows["a1"]["serial"] == ahead + 1
    assert abs(int(str(rows["a2"]["serial"])) - pull.now_ms()) < 600_000


@needs_nix
@pytest.mark.parametrize(("change", "args", "said"), [
    (lambda t: t.replace("signingKey = ./keys/hive.sec;", ""), (), "pull mode needs signed paths"),
    # the deployment's schema refuses it first (a record could not hold it either: pull.check_line)
    (lambda t: t.replace('command = "true";', 'command = "true\\ttab";'), (), "checks.up.command"),
    (lambda t: t, ("--to", "ssh://cache"), "--to 'ssh://cache'"),
    (lambda t: t, ("--no", "push"), "--no takes build alone"),
    (lambda t: t, ("--wait-timeout", "0"), "--wait-timeout"),
])
def test_bad_input_is_refused_before_anything_is_published(
        deployment: Path, tmp_path: Path, change: Callable[[str], str], args: tuple[str, ...], said: str) -> None:
    deployment.write_text(change(deployment.read_text()))
    given = list(args) if "--to" in args else ["--to", f"file://{tmp_path}/cache", *args]
    out = nix_hive("publish", "-c", str(deployment.parent), *given)
    assert out.returncode == 2, out.stderr
    assert said in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "cache").exists()


def test_the_summary_fits_80_columns() -> None:
    from hive.report import Fit, table

    rows = [("www-1", 1, 1796652175059, "no report", "no report within 900 s: the host keeps polling and will "
             "apply it by itself")]
    shown = table(rows, ["instance", "wave", "serial", "outcome", "reason"], width=80,
                  fit=(Fit.KEEP, Fit.KEEP, Fit.KEEP, Fit.KEEP, Fit.CUT))
    assert all(len(line) <= 80 for line in shown.splitlines())


def _status(outcome: str, serial: int | None, applied: int | None, finished: str = "2026-12-07T14:02:56Z",
            record: str | None = None) -> AgentStatus:
    return AgentStatus("www-1", SYSTEM, record, serial, RECORD.time, outcome, f"said {outcome}", RECORD.time,
                       finished, applied)


def test_what_a_report_means_for_the_published_serial() -> None:
    from hive.publish import reported

    assert reported(_status("ok", 5, 5), 6) is None  # an older record's report: not yet
    assert reported(_status("unchanged", None, None), 6) is None
    assert reported(_status("ok", 6, 6), 6) == ("ok", "said ok")
    assert reported(_status("rolled-back", 6, 5), 6) == ("rolled back", "said rolled-back")
    assert reported(_status("refused", 6, 5), 6) == ("refused", "said refused")
    assert reported(_status("failed", 6, 5), 6) == ("failed", "said failed")
    assert reported(_status("unchanged", 6, 6), 6) == ("ok", "")  # a heartbeat after applying it
    assert reported(_status("unchanged", 6, 5), 6) == ("failed", "not applied: said unchanged")
    assert reported(_status("ok", 7, 7), 6) == ("ok", "said ok (it handled a newer record since: serial 7)")


def test_status_rows_ages_and_stale_hosts() -> None:
    from hive.publish import HostReport, age, newest, stale_line, status_rows

    now = pull.seconds_of("2026-12-07T15:00:00Z")
    pointer = f"/nix/store/{'a' * 32}-nix-hive-record-www-1-{int((now - 7200) * 1000)}"
    reports = [HostReport("www-1", pointer, _status("ok", 1, 1, "2026-12-07T14:59:00Z", record=pointer)),
               HostReport("www-2", pointer.replace("www-1", "www-2"), _status("ok", 1, 1, "2026-12-07T14:00:00Z")),
               HostReport("www-3", None, None)]
    rows = status_rows(reports, 900, now)
    assert [r["stale"] for r in rows] == [False, True, True]
    assert rows[0]["record_age"] == now - pull.seconds_of(RECORD.time)  # the status names it: its time
    assert rows[1]["record_age"] == 7200  # from its serial, the publication time
    assert rows[2]["outcome"] == "no report" and rows[2]["record_age"] is None
    assert stale_line(rows, 900) == "stale (2: no report newer than 900 s): www-2, www-3"
    assert stale_line(rows[:1], 900) == "stale: none (every host reported within 900 s)"
    many = [{"instance": f"h{n:04}", "stale": True} for n in range(1000)]  # a fleet that stopped reporting
    assert stale_line(many, 900).startswith("stale (1000: no report newer than 900 s): 1,000 hosts (h0000, h0001")
    assert stale_line(many, 900).endswith(", ..., h0999)") and len(stale_line(many, 900)) < 250
    assert [newest(r) for r in rows] == ["no", "no", "-"]  # www-1, www-2 applied serial 1 of a newer record
    assert newest({**rows[0], "applied_serial": rows[0]["published_serial"]}) == "yes"
    assert [age(s) for s in (None, 5, 150, 7300, 200000)] == ["-", "5 s", "2 min", "2 h", "2 d"]
