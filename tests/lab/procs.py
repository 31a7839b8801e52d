"""Processes of the lab: running commands, spawning daemons, tracking them by pid and start
time (so a recycled pid is never mistaken for ours), waiting for readiness, killing them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from tests.lab.topology import LabError

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 20.0
LOGS = ("anchor.log", "nix-daemon.log", "sshd.out", "sshd.log", "power.log", "boots.log")

Recorded = tuple[int, str | None]  # pid, start time (None: unknown)
Check = Callable[[], bool]


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output; LabError if it fails and check is set."""
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, input=input,
                          env=dict(env) if env is not None else None)
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {' '.join(argv)}\n"
                       f"{proc.stderr.strip()}")
    return proc


def clean_env(home: str = "/root") -> dict[str, str]:
    return {"PATH": HOST_PATH, "HOME": home, "LANG": "C.UTF-8", "USER": "root",
            "LOGNAME": "root"}


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks), None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def is_alive(pid: int, start: str | None) -> bool:
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def from_pidfile(pidfile: Path, marker: str) -> int | None:
    """The live process whose pid pidfile holds, if its command line contains marker (so that
    a stale file naming a recycled pid is never taken for ours); None otherwise.  (sshd
    rewrites its command line into one string: "sshd: /usr/sbin/sshd -D -f CONFIG ...".)"""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return None
    return pid if marker.encode() in cmdline and is_alive(pid, None) else None


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start argv in a session of its own, stdout and stderr appended to log."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(env), start_new_session=True)


def host_logs(host_dir: Path) -> str:
    """The tails of a host's daemon logs, for error messages."""
    out = []
    for log in LOGS:
        try:
            text = (host_dir / log).read_text().strip()
        except OSError:
            continue
        if text:
            out.append(f"--- {host_dir.name}/{log}\n{text[-2000:]}")
    return "\n".join(out)


def wait_all(what: str, ready: Mapping[str, Check],
             procs: Mapping[str, subprocess.Popen[bytes]], hosts_dir: Path) -> None:
    """Wait until ready[name]() holds for every host; LabError (with the host's logs) if its
    process in procs exits first or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    pending = dict(ready)
    while pending:
        for name in list(pending):
            if pending[name]():
                del pending[name]
                continue
            proc = procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{name}: {what} exited with {proc.returncode} before it "
                               f"was ready; see logs in {hosts_dir / name}\n"
                               f"{host_logs(hosts_dir / name)}")
        if not pending:
            break
        if time.monotonic() > deadline:
            raise LabError(f"timeout ({START_TIMEOUT:.0f}s) waiting for {what} on "
                           f"{sorted(pending)}; logs in {hosts_dir}\n"
                           + "\n".join(host_logs(hosts_dir / n) for n in sorted(pending)))
        time.sleep(0.005)


def sshd_listening(host_dir: Path) -> bool:
    try:
        return "Server listening on 0.0.0.0 port 22" in (host_dir / "sshd.log").read_text()
    except OSError:
        return False


def kill_all(recorded: Iterable[Recorded], others: Callable[[], list[int]],
             children: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL, the recorded processes still alive and those others() finds
    (the processes inside the lab's namespaces); children are reaped."""
    recorded = list(recorded)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        targets = [(p, s) for p, s in recorded if is_alive(p, s)]
        targets += [(p, start_time(p)) for p in others()]
        for pid, _ in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (2.0 if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            for proc in children:
                proc.poll()
            if not any(is_alive(p, s) for p, s in targets):
                break
            time.sleep(0.01)
    for proc in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
