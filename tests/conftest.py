"""Shared fixtures: Nix configured for this machine, hives written on the fly, the CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest

from tests.constants import NIX_CONFIG, STANDIN_LOGS
from tests.constants import REPO as REPO  # re-exported: tests import them from here
from tests.constants import STANDIN as STANDIN

# Every nix call in the tests: no binary cache (there is no network), single-user as root.
os.environ.setdefault("NIX_CONFIG", NIX_CONFIG)

# A test that needs something this machine may lack (nix, the lab, Chromium, ...) says so with
# needs(NAME, why it is missing or None).  Without it the test fails, saying why: a run that
# skipped it would pass without testing it.  NIX_HIVE_ALLOW_SKIP names what may be missing
# instead (NIX_HIVE_ALLOW_SKIP=lab: a developer without root; tests/matrix.py: chromium), and
# the tests that need it are then skipped, saying why.  A skip that names no need always fails.
ALLOW_SKIP = "NIX_HIVE_ALLOW_SKIP"
NEED = re.compile(r"\[([a-z][a-z0-9-]*)\] ")


def allowed_skips(env: Mapping[str, str] = os.environ) -> frozenset[str]:
    return frozenset(re.split(r"[\s,]+", env.get(ALLOW_SKIP, "").strip())) - {""}


def needs(name: str, missing: str | None) -> pytest.MarkDecorator:
    """Mark a test that needs `name`, which is missing for the reason `missing` (None: here)."""
    return pytest.mark.skipif(missing is not None, reason=f"[{name}] {missing}")


def skip_unless(name: str, missing: str | None) -> None:
    """Inside a test: needs(), for what the test learns while it runs."""
    if missing is not None:
        pytest.skip(f"[{name}] {missing}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A skip fails the test unless NIX_HIVE_ALLOW_SKIP names what it needs (as pytest's own
    strict xfail turns an unexpected pass into a failure)."""
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        need = NEED.match(reason)
        if need is None:
            report.outcome = "failed"
            report.longrepr = f"skipped without naming what it needs (tests/conftest.py: needs): {reason}"
        elif need[1] not in allowed_skips():
            report.outcome = "failed"
            report.longrepr = f"{reason} (to skip the tests that need it instead: {ALLOW_SKIP}={need[1]})"
    return report


needs_nix = needs("nix", None if shutil.which("nix") else "nix is not installed")


def poll_until(what: Callable[[], object], seconds: float) -> bool:
    """Whether what() came true within seconds (asked every 50 ms, and once more at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.05)
    return bool(what())


def wait_until(what: Callable[[], object], seconds: float, why: str) -> None:
    """Wait for what() to come true; fail the test, saying why it waited, at the bound."""
    assert poll_until(what, seconds), f"{why}: not within {seconds:g} s"


def write_hive(directory: Path, text: str, name: str = "hive.nix") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def nix_hive(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `nix-hive` command (this interpreter's), as a user would."""
    argv = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, check=check,
                          timeout=timeout)


def nix_hive_on_terminal(*args: str, env: dict[str, str] | None = None, columns: int = 80,
                         timeout: float = 120) -> tuple[int, str]:
    """`nix_hive`, its stdout on a terminal `columns` wide (stderr dropped): its exit status and
    what the terminal received (`on_terminal`)."""
    argv = [sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", *args]
    return on_terminal(argv, {**os.environ, **(env or {})}, columns=columns, timeout=timeout)


def on_terminal(argv: list[str], env: Mapping[str, str], *, columns: int = 80,
                timeout: float = 120) -> tuple[int, str]:
    """`argv` with its stdout on a terminal `columns` wide (stderr dropped): its exit status and
    what the terminal received, "\\r\\n" read as "\\n"."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.DEVNULL, env=dict(env))
    os.close(slave)
    received = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    return proc.wait(timeout=timeout), received.decode().replace("\r\n", "\n")


@pytest.fixture
def ssh_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file hive/ssh.py writes from now on, in order (they are written all the same)."""
    from hive import ssh

    written: list[Path] = []
    real = ssh._write

    def spy(path: Path, text: str) -> None:
        written.append(path)
        real(path, text)

    monkeypatch.setattr(ssh, "_write", spy)
    return written


@pytest.fixture
def build_log() -> Iterator[Path]:
    """A file the stand-in nixpkgs' builder appends the system name to, once per real build
    (under STANDIN_LOGS, which Nix's sandbox lets builds write to)."""
    STANDIN_LOGS.mkdir(mode=0o755, exist_ok=True)
    directory = Path(tempfile.mkdtemp(dir=STANDIN_LOGS))
    directory.chmod(0o755)
    log = directory / "builds.log"
    old = os.environ.get("STANDIN_BUILD_LOG")
    os.environ["STANDIN_BUILD_LOG"] = str(log)
    yield log
    if old is None:
        del os.environ["STANDIN_BUILD_LOG"]
    else:
        os.environ["STANDIN_BUILD_LOG"] = old
    shutil.rmtree(directory, ignore_errors=True)


def builds(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def lab_unavailable() -> str | None:
    """Why the lab cannot run here (it needs root, network namespaces, sshd and nix)."""
    if os.geteuid() != 0:
        return "the lab needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "nix", "nix-daemon", "sudo"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool}"
    if not Path("/usr/sbin/sshd").exists():
        return "the lab needs sshd (openssh-server)"
    return None


needs_lab = needs("lab", lab_unavailable())


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[object]:
    """Start lab fleets (tests.fleet.Fleet.start's keywords); all are torn down afterwards."""
    from tests.fleet import Fleet

    started: list[Fleet] = []

    def start(**kwargs: object) -> Fleet:
        workdir = tmp_path / f"fleet{len(started)}"
        workdir.mkdir()
        fleet = Fleet.start(workdir, **kwargs)  # type: ignore[arg-type]
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        fleet.down()
