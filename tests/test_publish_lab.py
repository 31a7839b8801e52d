"""Pull mode end to end (issue 32): `nix-hive publish` from the deployer's namespace to nginx
(Debian's, WebDAV PUT) in the cache host's, three systemd lab hosts sharing one system and
running the agent from nix/agent.nix's unit and timer (every 5 s, up to 2 s more), their sshd
stopped: the deployer reaches no host. Waves as deploy's: a wave whose host rolls back (its
check fails) stops the later waves, whose hosts keep what they run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, needs, wait_until
from tests.constants import STANDIN, nix_env
from tests.fleet import make_key
from tests.lab import Lab, boot
from tests.pullcache import Nginx
from tests.test_lab import _missing

pytestmark = [needs("lab", _missing()), pytest.mark.xdist_group("publish_lab")]

HOSTS = ("h1", "h2", "h3")
PORT = 8080
CACHE = f"http://cache:{PORT}"  # as the hosts read it

HIVE = """\
# one system, shared by every instance: each host's agent knows its instance from
# /var/lib/nix-hive-agent/instance (written when it was installed)
let
  variant = builtins.getEnv "PULL_VARIANT";
in
{{
  signingKey = {key};
  systems.web = {{
    configuration = {{
      imports = [ {module} ];
      networking.hostName = "web-${{variant}}";
      standin.payloadBytes = 4096;
      standin.healthy = variant != "sick";
      services.nix-hive-agent = {{
        enable = true;
        cache = "{cache}";
        publicKey = "{public}";
        interval = "5s";
        jitter = "2s";
        confirmTimeout = 30;
        activationTimeout = 120;
      }};
    }};
    checks.health = {{ command = "test \\"$(cat /run/standin-health)\\" = healthy"; retries = 0; timeout = 5; }};
  }};
  instances = {{ h1.system = "web"; h2.system = "web"; h3.system = "web"; }};
}}
"""


@dataclass
class Pulled:
    lab: Lab
    nginx: Nginx
    hive: Path
    url: str  # the cache as the deployer reaches it

    def nix_hive(self, variant: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        argv = self.lab.deployer_argv([sys.executable, "-c",
                                       "import sys; from hive.cli import main; sys.exit(main())", *args])
        env = {**nix_env(), "PYTHONPATH": str(REPO), "PULL_VARIANT": variant}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def publish(self, variant: str, *args: str) -> tuple[int, dict[str, dict[str, object]], str]:
        out = self.nix_hive(variant, "publish", "--json", "--poll", "1", "--wait-timeout", "150", "-c",
                            str(self.hive), "-I", f"nixpkgs={STANDIN}", "--to", self.url, *args)
        assert out.stdout, out.stderr
        return out.returncode, {r["instance"]: r for r in json.loads(out.stdout)["instances"]}, out.stderr

    def pointer(self, host: str) -> str:
        return (self.nginx.root / "nix-hive" / "pointers" / host).read_text().strip()

    def record_system(self, host: str) -> str:
        """The system the host's pointer's record names (read from the deployer's store)."""
        text = Path(self.pointer(host)).read_text()
        return next(line.split("\t")[1] for line in text.splitlines() if line.startswith("system\t"))


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulled]:
    tmp = tmp_path_factory.mktemp("publish")
    key, public = make_key(tmp / "secrets", "hive-publish")
    hive = tmp / "hive"
    hive.mkdir()
    (hive / "default.nix").write_text(HIVE.format(key=key, module=REPO / "nix" / "agent.nix", cache=CACHE,
                                                  public=public))
    conf = f"trusted-public-keys = {public}\n"
    lab = Lab.start({"cache": ["pub"], **{h: ["pub"] for h in HOSTS}}, tmp / "lab",
                    nix_conf=dict.fromkeys(HOSTS, conf), init="systemd")
    nginx = Nginx(lab, "cache", tmp / "cache", tmp / "nginx", PORT)
    try:
        nginx.start()
        pulled = Pulled(lab, nginx, hive, f"http://{lab.hosts['cache'].addresses['pub']}:{PORT}")
        # the hosts are installed at their console: the first system, from the cache, and the
        # instance each is
        code, rows, err = pulled.publish("v1", "--no-wait", "h*")
        assert code == 0 and {r["outcome"] for r in rows.values()} == {"published"}, err
        first = pulled.record_system("h1")
        for h in HOSTS:
            lab.run(h, ["sh", "-c", f"mkdir -p /var/lib/nix-hive-agent && echo {h} > /var/lib/nix-hive-agent/instance"
                        f" && nix copy --from {CACHE} {first} && nix-env -p /nix/var/nix/profiles/system --set {first}"
                        f" && {first}/bin/switch-to-configuration switch"])
        # no ssh from here on: the deployer could not log in to any host
        for h in HOSTS:
            lab.run(h, ["systemctl", "stop", boot.SSHD_UNIT], check=False)
            assert lab.run(h, ["systemctl", "is-active", boot.SSHD_UNIT], check=False).stdout.strip() != "active"
        yield pulled
    finally:
        nginx.stop()
        lab.down()


def test_publish_reaches_every_host_wave_after_wave_and_a_failed_wave_stops_the_next(pulled: Pulled) -> None:
    lab = pulled.lab
    # v2, the canary h1 first: every host reports ok within the wait, and runs it
    mark = len(pulled.nginx.access_log().splitlines())
    code, rows, err = pulled.publish("v2", "h1", "h*")
    assert code == 0, err
    assert {h: (r["wave"], r["outcome"]) for h, r in rows.items()} == {"h1": (1, "ok"), "h2": (2, "ok"),
                                                                      "h3": (2, "ok")}, err
    v2 = pulled.record_system("h1")
    assert "web-v2" in v2
    for h in HOSTS:
        assert lab.current_system(h) == v2, h
        assert pulled.record_system(h) == v2
    # wave 2's pointers were written after h1 had reported (a status PUT between the two)
    log = pulled.nginx.access_log().splitlines()[mark:]
    h1 = next(n for n, line in enumerate(log) if '"PUT /nix-hive/pointers/h1 ' in line)
    h2 = next(n for n, line in enumerate(log) if '"PUT /nix-hive/pointers/h2 ' in line)
    assert any('"PUT /nix-hive/status/h1.json ' in line for line in log[h1:h2]), log[h1:h2 + 1]

    # a system whose check fails: h1 switches, fails its check, rolls back by itself and says so;
    # wave 2 is not published, h2 and h3 keep v2 and its record
    before = {h: pulled.pointer(h) for h in ("h2", "h3")}
    code, rows, err = pulled.publish("sick", "h1", "h*")
    assert code == 1, err
    assert rows["h1"]["outcome"] == "rolled back", rows
    assert "health" in str(rows["h1"]["reason"]), rows
    assert {rows[h]["outcome"] for h in ("h2", "h3")} != {"ok"}, rows
    assert {h: pulled.pointer(h) for h in ("h2", "h3")} == before
    assert "web-sick" in pulled.record_system("h1")
    for h in HOSTS:
        assert lab.current_system(h) == v2, h

    # status --from reads the hosts' documents: no login anywhere
    out = pulled.nix_hive("sick", "status", "--json", "-c", str(pulled.hive), "-I", f"nixpkgs={STANDIN}",
                          "--from", pulled.url)
    report = json.loads(out.stdout)
    got = {r["instance"]: r for r in report["instances"]}
    assert set(got) == set(HOSTS), out.stdout
    assert all(r["system"] == v2 for r in got.values()), got
    # nobody logged in to a host over ssh, ever (the lab enters their namespaces)
    for h in HOSTS:
        assert "Accepted publickey" not in lab.sshd_log(h), h
    wait_until(lambda: all(lab.current_system(h) == v2 for h in HOSTS), 5, "hosts stay on v2")
