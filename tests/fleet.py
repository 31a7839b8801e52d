"""A lab fleet with a deployment on it: the example (or any hive) wired to lab hosts.

`Fleet` starts a lab, writes the deployment's instances.json from it (addresses, pinned host
keys, the lab's client key), generates the signing key, makes the internal hosts trust it and
substitute from their relay, and runs `nix-hive` from the deployer's network namespace.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.constants import REPO, STANDIN
from tests.constants import nix_env as nix_env  # re-exported: tests import it from here
from tests.lab import EXAMPLE_TOPOLOGY, Lab
from tests.lab.lab import Init

# The hosts of lab fleets: systemd as PID 1, like NixOS.
LAB_INIT: Init = "systemd"


def closure_bytes(path: str) -> int:
    """The size of a store path's closure in this machine's store (nix path-info -S)."""
    out = subprocess.run(["nix", "path-info", "-S", path], capture_output=True, text=True, check=True,
                         env=nix_env())
    return int(out.stdout.split()[-1])


def closure_sizes(path: str) -> dict[str, int]:
    """Every path of a store path's closure in this machine's store with its NAR size, as Nix
    lists them (nix-store -qR, then -q --size)."""
    paths = subprocess.run(["nix-store", "-qR", path], capture_output=True, text=True, env=nix_env(),
                           check=True).stdout.split()
    sizes = subprocess.run(["nix-store", "-q", "--size", *paths], capture_output=True, text=True, env=nix_env(),
                           check=True).stdout.split()
    return dict(zip(paths, map(int, sizes), strict=True))


def make_key(directory: Path, name: str = "hive-lab") -> tuple[Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    sec, pub = directory / "hive.sec", directory / "hive.pub"
    if not sec.exists():
        subprocess.run(["nix-store", "--generate-binary-cache-key", name, str(sec), str(pub)],
                       check=True, env=nix_env())
    return sec, pub.read_text().strip()


def flake_for_lab(flake: Path, secrets: Path) -> tuple[Path, str]:
    """A flake-form deployment (example/flake) made to run here: nixpkgs is the stand-in (a
    path input) and the signing key a new one outside the flake (a flake's files are copied to
    the store), whose public half goes into the flake as hive.pub."""
    sec, pub = make_key(secrets)
    text = (flake / "flake.nix").read_text()
    text = text.replace("github:NixOS/nixpkgs/nixos-26.11", f"path:{STANDIN}")
    text = text.replace('"/etc/nix-hive/hive.sec"', f'"{sec}"')
    (flake / "flake.nix").write_text(text)
    (flake / "hive.pub").write_text(pub + "\n")
    return sec, pub


@dataclass
class Fleet:
    """A running lab and the deployment directory that targets it."""

    lab: Lab
    hive: Path  # the deployment directory (a copy of example/, instances.json from the lab)
    payload_bytes: int
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, workdir: Path, *, topology: Mapping[str, Sequence[str]] = EXAMPLE_TOPOLOGY,
              relay: str = "portico", user: str = "root", pin: bool = True,
              payload_bytes: int = 2_000_000, source: Path = REPO / "example",
              relays: Mapping[str, str] | None = None, init: Init = LAB_INIT) -> Fleet:
        """`relays`: host -> the host it substitutes from, or a substituter URL (default: every
        host not on the deployer's segment substitutes from `relay`). `init`: hosts whose PID 1
        is systemd, as every NixOS host (the default), or "plain" hosts (sshd alone: the
        activation's setsid path)."""
        hive = workdir / "hive"
        shutil.copytree(source, hive, ignore=shutil.ignore_patterns("secrets", ".hive.state*"))
        shutil.copy(REPO / "tests" / "hives" / "lab-host.nix", hive / "lab-host.nix")  # the test hives' helper
        if (hive / "flake.nix").exists():
            _, pub = flake_for_lab(hive, workdir / "secrets")
        else:
            _, pub = make_key(hive / "secrets")
        if relays is None:
            relays = {h: relay for h, segs in topology.items() if h != relay and "pub" not in segs}
        behind = {h: f"substituters = {up if '://' in up else f'ssh://{up}'}\ntrusted-public-keys = {pub}\n"
                  for h, up in relays.items()}
        lab = Lab.start(topology, workdir / "lab", nix_conf=behind, init=init)
        try:
            discovered = {}
            for name in lab.hosts:
                opts = lab.ssh_options(name, user)
                entry: dict[str, object] = {
                    "address": opts["Hostname"],
                    "ssh": {"User": user, "IdentityFile": str(lab.client_key), "IdentitiesOnly": "yes"},
                }
                if pin:
                    entry["hostKey"] = lab.hosts[name].host_key_pub
                else:
                    entry["ssh"] = {**entry["ssh"], "StrictHostKeyChecking": "no",  # type: ignore[dict-item]
                                    "UserKnownHostsFile": "/dev/null"}
                discovered[name] = entry
            (hive / "instances.json").write_text(json.dumps(discovered, indent=2) + "\n")
        except BaseException:
            lab.down()
            raise
        env = {"STANDIN_PAYLOAD_BYTES": str(payload_bytes)}
        return cls(lab=lab, hive=hive, payload_bytes=payload_bytes, env=env)

    def nix_hive_argv(self, *args: str) -> list[str]:
        return self.lab.deployer_argv([sys.executable, "-c",
                                       "import sys; from hive.cli import main; sys.exit(main())", *args])

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`nix-hive ARGS` in the deployer's namespace, against the stand-in nixpkgs."""
        env = {**nix_env(), **self.env, "PYTHONPATH": str(REPO)}
        return subprocess.run(self.nix_hive_argv(*args), env=env, capture_output=True, text=True,
                              timeout=timeout)

    def answered(self, *args: str, prompt: bytes, answer: str, then: Sequence[tuple[bytes, str]] = (),
                 timeout: float = 300) -> tuple[int, str, str, str]:
        """`nix-hive ARGS` with a pseudo-terminal as its stdin and controlling terminal (stdout and
        stderr piped): once the terminal shows `prompt`, `answer` is typed; then each of `then`'s
        prompts, shown after the one before, is answered in turn. Its exit status, stdout,
        stderr, and what the terminal showed."""
        master, slave = pty.openpty()

        def controlling() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = {**nix_env(), **self.env, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(self.nix_hive_argv(*args), env=env, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=controlling)
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + timeout
        try:
            for asked, typed in ((prompt, answer), *then):
                at = len(seen)
                while asked not in seen[at:]:  # (an EIO once nix-hive ended without asking)
                    assert time.monotonic() < deadline, f"no {asked!r} within {timeout} s: {seen!r}"
                    if select.select([master], [], [], 1)[0]:
                        seen += os.read(master, 1024)
                os.write(master, typed.encode() + b"\n")
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            os.close(master)
        return proc.returncode, out, err, seen.decode()

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("deploy", "-c", str(self.hive), "-I", f"nixpkgs={STANDIN}", *args)

    def down(self) -> None:
        self.lab.down()
