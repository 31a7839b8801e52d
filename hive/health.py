"""Health checks: a command run on the host (exit 0 is healthy), or an http:// URL fetched
from the deployer through the host's ssh connection (`ssh -W`: the host needs nothing
installed, no port opens anywhere). Each is tried up to 1 + `retries` times, `interval`
seconds apart, `timeout` seconds per try."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from hive import process
from hive.errors import HiveError
from hive.model import Check
from hive.remote import Remote


@dataclass(frozen=True)
class CheckResult:
    """How a check went."""

    check: str
    healthy: bool
    detail: str  # what the last try said
    tries: int
    seconds: float


def _command(remote: Remote, check: Check) -> tuple[bool, str]:
    assert check.command is not None
    script = f"timeout {check.timeout} sh -c {shlex.quote(check.command)}"
    try:
        out = process.run(remote.shell_argv(script), check=False, timeout=check.timeout + 10)
    except HiveError as exc:
        return False, str(exc)
    if out.exit_code == 0:
        return True, "exit 0"
    said = (out.stderr.strip() or out.stdout.strip()).splitlines()
    why = "timed out" if out.exit_code == 124 else f"exit {out.exit_code}"
    return False, f"{why}: {said[-1]}" if said else why


def _http(remote: Remote, check: Check) -> tuple[bool, str]:
    assert check.http is not None
    url = urlsplit(check.http)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    target = url.path or "/"
    if url.query:
        target += f"?{url.query}"
    request = f"GET {target} HTTP/1.0\r\nHost: {url.netloc}\r\nUser-Agent: nix-hive\r\nConnection: close\r\n\r\n"
    try:
        out = process.run(remote.forward_argv(host, port), input=request, check=False, timeout=check.timeout)
    except HiveError as exc:
        return False, str(exc)
    first = out.stdout.split("\r\n", 1)[0].split("\n", 1)[0]
    parts = first.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        said = out.stderr.strip().splitlines()
        return False, f"no HTTP answer from {host}:{port}" + (f" ({said[-1]})" if said else "")
    code = int(parts[1])
    return check.healthy_status(code), f"HTTP {code}"


def run(remote: Remote, check: Check, *, sleep: Callable[[float], None] = time.sleep) -> CheckResult:
    """Try `check` until it passes or its tries are used up."""
    start = time.monotonic()
    probe = _command if check.command is not None else _http
    tries, healthy, detail = 0, False, ""
    while tries <= check.retries:
        tries += 1
        healthy, detail = probe(remote, check)
        if healthy or tries > check.retries:
            break
        sleep(check.interval)
    return CheckResult(check.name, healthy, detail, tries, round(time.monotonic() - start, 2))
