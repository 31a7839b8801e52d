"""Keys (secrets) on real hosts: each source lands with its content, owner, group and mode;
pre-activation keys before the switch, post-activation ones after it; a rotated key is
replaced atomically; a missing user fails with the fix; and the content is found nowhere it
must not be (Nix stores, state, reports, output, any process's argv)."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, needs_lab
from tests.constants import STANDIN, nix_env
from tests.fleet import Fleet

pytestmark = needs_lab
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"], "www-2": ["int"]}
SOURCE = REPO / "tests" / "hives" / "keys"
Start = Callable[..., Fleet]


def start(fleet_factory: Start) -> tuple[Fleet, dict[str, str]]:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    tokens = {name: f"secret-{name}-{secrets.token_hex(16)}" for name in ("db", "api", "tls")}
    (fleet.hive / "secrets" / "db-password").write_text(tokens["db"] + "\n")
    (fleet.hive / "secrets" / "tls.pem").write_text(f"-----BEGIN KEY-----\n{tokens['tls']}\n-----END KEY-----\n")
    fleet.env["KEYTEST_TOKEN"] = tokens["api"]
    return fleet, tokens


def stat(fleet: Fleet, host: str, path: str) -> list[str]:
    return fleet.lab.run(host, ["stat", "-c", "%U %G %a %i %.9Y", path]).stdout.split()


def test_keys_land_in_order_with_owner_and_mode_and_rotate_atomically(fleet_factory: Start) -> None:
    fleet, tokens = start(fleet_factory)
    result = fleet.deploy("--json", "portico", "*")
    assert result.returncode == 0, result.stderr
    for host in ("www-1", "www-2"):
        assert fleet.lab.read(host, "/run/keys/db-password") == tokens["db"] + "\n"
        assert fleet.lab.read(host, "/run/keys/api/token") == tokens["api"]
        assert tokens["tls"] in (fleet.lab.read(host, "/run/keys/tls") or "")
        assert stat(fleet, host, "/run/keys/db-password")[:3] == ["deploy", "deploy", "640"]
        assert stat(fleet, host, "/run/keys/api/token")[:3] == ["root", "root", "600"]
        assert stat(fleet, host, "/run/keys/tls")[:3] == ["root", "root", "400"]
        switched = float(fleet.lab.activations(host)[-1].split()[0])
        assert float(stat(fleet, host, "/run/keys/db-password")[4]) < switched  # pre-activation
        assert float(stat(fleet, host, "/run/keys/tls")[4]) > switched  # post-activation
    assert fleet.lab.read("portico", "/run/keys/db-password") is None  # only the hosts that have the key

    # rotate one key: only it is sent again, and it replaces the old file by a rename
    before = {p: stat(fleet, "www-1", p) for p in ("/run/keys/db-password", "/run/keys/tls")}
    (fleet.hive / "secrets" / "db-password").write_text("rotated-" + tokens["db"] + "\n")
    again = fleet.deploy("--json", "--no", "build,push,activate", "portico", "*")
    assert again.returncode == 0, again.stderr
    assert fleet.lab.read("www-1", "/run/keys/db-password") == "rotated-" + tokens["db"] + "\n"
    after = {p: stat(fleet, "www-1", p) for p in before}
    assert after["/run/keys/db-password"][3] != before["/run/keys/db-password"][3]  # a new inode: renamed in
    assert after["/run/keys/db-password"][:3] == ["deploy", "deploy", "640"]
    assert after["/run/keys/tls"] == before["/run/keys/tls"]  # unchanged content, not sent again
    assert "1 key(s) uploaded, 2 unchanged" in again.stderr
    leftovers = fleet.lab.run("www-1", ["sh", "-c", "ls -a /run/keys /run/keys/api"]).stdout
    assert ".nix-hive-key" not in leftovers


def test_a_key_for_a_user_the_host_lacks_fails_with_the_fix(fleet_factory: Start) -> None:
    fleet, _ = start(fleet_factory)
    fleet.env["KEYTEST_GHOST"] = "1"
    result = fleet.deploy("--json", "portico", "*")
    assert result.returncode == 1
    rows = {r["instance"]: r for r in json.loads(result.stdout)["instances"]}
    assert rows["www-1"]["outcome"] == "ok"
    reason = str(rows["www-2"]["reason"])
    assert rows["www-2"]["outcome"] == "failed" and "key ghost on www-2" in reason and "nobody-here" in result.stderr
    assert 'keys.ghost.uploadAt = "post-activation"' in reason
    assert fleet.lab.read("www-2", "/run/keys/ghost") is None
    assert fleet.lab.activations("www-2") == []  # a pre-activation key failed: no switch


def test_key_content_is_found_nowhere_it_must_not_be(fleet_factory: Start, tmp_path: Path) -> None:
    fleet, tokens = start(fleet_factory)
    seen_in_argv: list[str] = []
    done = threading.Event()

    def watch() -> None:  # every process's argv on the machine, sampled through the deployment
        while not done.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmdline.read_bytes().decode(errors="replace")
                except OSError:
                    continue
                seen_in_argv.extend(t for t in tokens.values() if t in text)

    watcher = threading.Thread(target=watch)
    watcher.start()
    report = tmp_path / "report.json"
    try:
        result = fleet.deploy("--json", "-v", "--report", str(report), "portico", "*")
        plan = fleet.run("plan", "--json", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
        inventory = fleet.run("build", "--no", "build", "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
        uploaded = fleet.run("upload-keys", "-v", "-c", str(fleet.hive), "www-*")
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0 and uploaded.returncode == 0, result.stderr + uploaded.stderr
    assert "/run/keys/api/token" in plan.stdout and "/run/keys/api/token" in inventory.stdout  # named, not shown
    assert seen_in_argv == []
    texts = [result.stdout, result.stderr, plan.stdout, plan.stderr, inventory.stdout, inventory.stderr,
             uploaded.stdout, uploaded.stderr, report.read_text()]
    texts += [p.read_text(errors="replace") for p in fleet.hive.rglob(".hive.state*") if p.is_file()]
    for token in tokens.values():
        assert not any(token in text for text in texts), token
    stores = ["/nix/store", *(str(h.dir / "nix") for h in fleet.lab.hosts.values())]
    for token in tokens.values():
        found = subprocess.run(["grep", "-rlF", "--", token, *stores], capture_output=True, text=True, env=nix_env())
        assert found.stdout == "", found.stdout  # in no Nix store, the deployer's or a host's
