"""Pull mode's cache in the lab, for the agent's tests: nginx from Debian serving a directory
(with WebDAV PUT, for the deployer's `nix copy --to http://...`, the pointers and the agents'
status documents), and deployment records made by hand as docs/pull.md describes them: the
text rendered, a store path made with builtins.toFile that references the system (a
content-addressed record, which the agent must check itself: hive/pull.py's are
input-addressed), signed with `nix store sign --key-file`, copied with `nix copy --to` the
cache (nix-hive's argv, hive.nix.copy_argv: the lab's caches reuse their addresses, and Nix
remembers what a cache at an address held), the pointer PUT. Not with hive/pull.py: the
agent is tested against the documented format, not against that code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hive import nix
from tests.constants import nix_env
from tests.lab import Lab

MAX_NAME = 200


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # "command" | "http"
    target: str  # the command text, or the URL
    statuses: str = "-"  # http: comma-separated, or - for any 2xx
    timeout: int = 5
    retries: int = 0
    interval: int = 1

    def line(self) -> str:
        fields = ["check", self.name, str(self.timeout), str(self.retries), str(self.interval), self.kind,
                  self.target]
        if self.kind == "http":
            fields.append(self.statuses)
        return "\t".join(fields) + "\n"


def render(instance: str, system: str, serial: int, *, wave: int = 1, run: str = "0123456789ab",
           checks: Sequence[Check] = (), when: float | None = None) -> str:
    """The record's text (docs/pull.md's lines, in their order)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    lines = [("format", "nix-hive-record-1"), ("instance", instance), ("system", system),
             ("serial", str(serial)), ("time", stamp), ("wave", str(wave)), ("run", run)]
    text = "".join(f"{k}\t{v}\n" for k, v in lines)
    return text + "".join(c.line() for c in sorted(checks, key=lambda c: c.name))


def record_name(instance: str, serial: int) -> str:
    name = f"nix-hive-record-{instance}-{serial}"
    return name if len(name) <= MAX_NAME else f"nix-hive-record-{instance[:150]}-{serial}"


def make_record(workdir: Path, text: str, name: str, system: str) -> str:
    """The record as a store path of this machine's store: builtins.toFile of the text, whose
    system path carries its context (so the record references it, and only it)."""
    before, sep, after = text.partition(system)
    assert sep, "the text names the system"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "before").write_text(before)
    (workdir / "after").write_text(after)
    expr = (f'builtins.toFile {json.dumps(name)} (builtins.readFile {workdir}/before '
            f'+ "${{builtins.storePath {json.dumps(system)}}}" + builtins.readFile {workdir}/after)')
    out = subprocess.run(["nix", "eval", "--impure", "--raw", "--expr", expr], capture_output=True, text=True,
                         env=nix_env(), check=True)
    path = out.stdout.strip()
    refs = subprocess.run(["nix-store", "-q", "--references", path], capture_output=True, text=True,
                          env=nix_env(), check=True).stdout.split()
    assert refs == [system], refs
    return path


def sign(key_file: Path, *paths: str) -> None:
    """Sign the closures of paths (nix store sign --key-file, recursively)."""
    subprocess.run(["nix", "store", "sign", "--key-file", str(key_file), "-r", *paths], env=nix_env(),
                   check=True, capture_output=True)


class Nginx:
    """nginx (Debian's /usr/sbin/nginx) in a lab host's network namespace, serving `root` on
    `port` with PUT anywhere (create_full_put_path), its pid file and logs in `workdir`."""

    def __init__(self, lab: Lab, host: str, root: Path, workdir: Path, port: int = 8080) -> None:
        self.lab, self.host, self.root, self.workdir, self.port = lab, host, root, workdir, port
        self.conf = workdir / "nginx.conf"
        self.pid_file = workdir / "nginx.pid"
        root.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        t = workdir / "tmp"
        self.conf.write_text(f"""\
# the lab's binary cache for pull mode (tests/pullcache.py)
worker_processes 1;
pid {self.pid_file};
error_log {workdir}/error.log;
user root;
events {{ worker_connections 256; }}
http {{
  access_log {workdir}/access.log;
  default_type application/octet-stream;
  client_body_temp_path {t}/body;
  proxy_temp_path {t}/proxy;
  fastcgi_temp_path {t}/fastcgi;
  uwsgi_temp_path {t}/uwsgi;
  scgi_temp_path {t}/scgi;
  server {{
    listen {port};
    root {root};
    # any size: NARs (nginx's default refuses bodies over 1 MB)
    client_max_body_size 0;
    location / {{
      # the deployer's nix copy --to http://..., its pointers, the agents' status documents
      dav_methods PUT;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }}
  }}
}}
""")

    def argv(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.lab.hosts[self.host].netns, "/usr/sbin/nginx", "-c", str(self.conf),
                "-e", str(self.workdir / "error.log"), *args]

    def start(self) -> None:
        subprocess.run(self.argv(), check=True, capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 10
        while not self.pid_file.exists():
            assert time.monotonic() < deadline, (self.workdir / "error.log").read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (by the pid its pid file names: the master, which ends its worker)."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, f"nginx {pid} does not stop"
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def access_log(self) -> str:
        try:
            return (self.workdir / "access.log").read_text()
        except OSError:
            return ""


@dataclass
class Publisher:
    """Writes records to the cache as the deployer does, from the deployer's network namespace."""

    lab: Lab
    url: str  # the cache as the deployer reaches it
    workdir: Path

    def deployer(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.lab.deployer_argv(argv), capture_output=True, text=True, env=nix_env(),
                              check=False, timeout=300)
        assert proc.returncode == 0, f"{argv} failed ({proc.returncode}): {proc.stderr}"
        return proc

    def record(self, key_file: Path | None, instance: str, system: str, *, serial: int | None = None,
               checks: Sequence[Check] = (), text: str | None = None) -> str:
        """A record made, signed with key_file (None: unsigned; the system's closure is signed
        by whoever signed it before) and copied to the cache (not yet pointed at). Its path."""
        serial = serial if serial is not None else time.time_ns() // 1_000_000
        text = text if text is not None else render(instance, system, serial, checks=checks)
        path = make_record(self.workdir / f"{instance}-{serial}", text, record_name(instance, serial), system)
        if key_file is not None:
            sign(key_file, path)
        self.deployer(nix.copy_argv(self.url, [path], substitute=False))
        return path

    def system(self, key_file: Path, system: str) -> None:
        sign(key_file, system)
        self.deployer(nix.copy_argv(self.url, [system], substitute=False))

    def point(self, instance: str, record: str) -> None:
        """The pointer PUT (one line, the record's path)."""
        self.deployer(["curl", "-fsS", "--max-time", "30", "-X", "PUT", "--data-binary", record + "\n",
                       f"{self.url}/nix-hive/pointers/{instance}"])
