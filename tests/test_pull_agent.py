"""nix/agent.nix (pull mode's NixOS module, issue 32) evaluated by the stand-in's module system
(tests/nixpkgs: option defaults, `config`, lib.mkIf), and agent.sh's refusal of a bad
configuration. tests/test_pull_lab.py runs the systems it makes on systemd hosts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import needs_nix
from tests.constants import REPO, STANDIN, nix_env
from tests.test_lab import sh

pytestmark = needs_nix
MODULE = REPO / "nix" / "agent.nix"


def evaluate(tmp: Path, agent: str, what: str) -> object:
    expr = tmp / "system.nix"
    expr.write_text(f'(import {STANDIN}/nixos {{ configuration = {{ imports = [ {MODULE} ]; '
                    f'networking.hostName = "web-1"; services.nix-hive-agent = {{ {agent} }}; }}; }})\n')
    out = sh(["nix", "eval", "--impure", "--json", "--expr", f"let s = import {expr}; in {what}"], env=nix_env())
    return json.loads(out.stdout)


def test_the_module_parses() -> None:
    sh(["nix-instantiate", "--parse", str(MODULE)], env=nix_env())


def test_the_module_makes_the_agents_unit_and_timer(tmp_path: Path) -> None:
    agent = 'enable = true; cache = "http://cache:8080"; publicKey = "hive-1:abc="; confirmTimeout = 30;'
    got = evaluate(tmp_path, agent,
                   "{ cfg = s.config.services.nix-hive-agent; keys = s.config.nix.settings.trusted-public-keys; "
                   "svc = { inherit (s.config.systemd.services.nix-hive-agent) restartIfChanged environment "
                   "serviceConfig script; }; timer = s.config.systemd.timers.nix-hive-agent.timerConfig; }")
    assert isinstance(got, dict)
    # the options' defaults: the instance read on the host (a system many instances share)
    cfg = got["cfg"]
    assert (cfg["instance"], cfg["interval"], cfg["jitter"], cfg["confirmTimeout"], cfg["activationTimeout"],
            cfg["statusUrl"]) == (None, "5min", "1min", 30, 600, None)
    assert got["keys"] == ["hive-1:abc="]
    svc = got["svc"]
    assert svc["restartIfChanged"] is False  # its own switch must not restart it
    assert svc["serviceConfig"]["Type"] == "oneshot" and svc["serviceConfig"]["RemainAfterExit"] is False
    assert svc["environment"] == {"NIX_HIVE_CACHE": "http://cache:8080", "NIX_HIVE_PUBLIC_KEY": "hive-1:abc=",
                                  "NIX_HIVE_INSTANCE": "", "NIX_HIVE_CONFIRM": "30", "NIX_HIVE_TIMEOUT": "600",
                                  "NIX_HIVE_STATE": "/var/lib/nix-hive-agent"}
    # the scripts, a store copy of hive/host (only its .sh files)
    scripts = svc["script"].split()[-1].rsplit("/", 1)[0]
    assert svc["script"] == f"exec /bin/sh {scripts}/agent.sh"
    assert got["timer"] == {"OnBootSec": "5min", "OnUnitActiveSec": "5min", "RandomizedDelaySec": "1min",
                            "AccuracySec": "1s"}
    # the system's units, as the stand-in writes them
    out = sh(["nix", "build", "--impure", "-f", str(tmp_path / "system.nix"), "system", "--json", "--no-link"],
             env=nix_env()).stdout
    system = Path(json.loads(out)[0]["outputs"]["out"])
    unit = (system / "etc/systemd/system/nix-hive-agent.service").read_text()
    assert "X-RestartIfChanged=false\n" in unit and "RemainAfterExit=false\n" in unit
    assert "\nStartLimitIntervalSec=0\n[Service]\n" in unit  # polls are never refused for coming often
    assert "RemainAfterExit=yes" not in unit
    assert 'Environment="NIX_HIVE_INSTANCE="\n' in unit
    timer = (system / "etc/systemd/system/nix-hive-agent.timer").read_text()
    assert "RandomizedDelaySec=1min\n" in timer and "OnUnitActiveSec=5min\n" in timer
    assert sorted(p.name for p in Path(scripts).iterdir()) == sorted(p.name for p in (REPO / "hive/host").glob("*.sh"))


def test_a_status_url_is_passed_and_a_disabled_agent_adds_nothing(tmp_path: Path) -> None:
    agent = 'enable = true; cache = "http://c"; publicKey = "k:x"; statusUrl = "https://s3/b/web-1.json?X-Amz=1";'
    env = evaluate(tmp_path, agent, "s.config.systemd.services.nix-hive-agent.environment")
    assert isinstance(env, dict) and env["NIX_HIVE_STATUS"] == "https://s3/b/web-1.json?X-Amz=1"
    off = evaluate(tmp_path, 'cache = "http://c"; publicKey = "k:x";',
                   "{ units = builtins.attrNames (s.config.systemd.services or { }); "
                   "timers = builtins.attrNames (s.config.systemd.timers or { }); }")
    assert off == {"units": [], "timers": []}


def test_the_agent_refuses_a_bad_configuration(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "NIX_HIVE_STATE": str(tmp_path / "state")}
    cases = [
        ({}, "NIX_HIVE_CACHE is not set"),
        ({"NIX_HIVE_CACHE": "http://c"}, "NIX_HIVE_PUBLIC_KEY is not set"),
        ({"NIX_HIVE_CACHE": "http://c", "NIX_HIVE_PUBLIC_KEY": "k:x", "NIX_HIVE_INSTANCE": "../etc"},
         "NIX_HIVE_INSTANCE must be an instance name"),
        ({"NIX_HIVE_CACHE": "http://c", "NIX_HIVE_PUBLIC_KEY": "k:x", "NIX_HIVE_INSTANCE": "web-1",
          "NIX_HIVE_CONFIRM": "0"}, "NIX_HIVE_CONFIRM must be at least 1 s"),
    ]
    for env, said in cases:
        out = subprocess.run(["sh", str(REPO / "hive/host/agent.sh")], env=base | env, capture_output=True,
                             text=True, check=False)
        assert out.returncode == 2 and said in out.stderr, (env, out.stderr)
    assert not (tmp_path / "state").exists()
    # no instance named: the host's own file, else its name (uname -n), checked as any
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "instance").write_text("../x\n")
    out = subprocess.run(["sh", str(REPO / "hive/host/agent.sh")], env=base | cases[2][0] | {"NIX_HIVE_INSTANCE": ""},
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "NIX_HIVE_INSTANCE must be an instance name" in out.stderr, out.stderr
