"""What a hostile test round found (issue 19, items 7, 8, 9 and 11):

- a host's output (an activation log, a health check's output, a reason) reaches the
  terminal with its escape sequences shown, never sent, and its lines bounded;
- a long TMPDIR (ssh's unix socket paths have at most 107 bytes) does not break the shared
  connections;
- a closed pipe (`nix-hive list | head -c 10`) ends nix-hive quietly with status 141, the
  state file and its lock intact;
- `nix-hive plan`'s table stays linear in the number of instances.

The lab tests deploy for real to a lab host; the others run the real `nix-hive` (real Nix)
on hives generated here.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hive import report, ssh, tempdirs, text
from hive.errors import InputError
from tests.conftest import REPO, STANDIN, needs_lab, needs_nix, nix_hive, write_hive
from tests.fleet import Fleet

Start = Callable[..., Fleet]
ONE = {"www-1": ["pub"]}
ESC_TITLE, CLEAR = "\x1b]0;pwned\x07", "\x1b[2J"
MAX_LINE = 2_400  # text.LIMIT characters of the host's, the marker, and nix-hive's own columns

HOSTILE_HIVE = """
let host = import ./lab-host.nix ./instances.json; in
{
  signingKey = ./secrets/hive.sec;
  activationTimeout = 60;
  confirmTimeout = 10;
  systems.web = {
    configuration = { networking.hostName = "web"; standin.payloadBytes = 4096; };
    # a check whose output is hostile: a terminal title, a clear screen, a 200 kB line
    checks.evil = {
      command = "printf '\\\\033]0;pwned\\\\007\\\\033[2J' >&2; head -c 200000 /dev/zero | tr '\\\\0' x >&2; exit 1";
      retries = 0;
    };
  };
  instances.www-1 = host "www-1" { system = "web"; };
}
"""

PLAIN_HIVE = """
let host = import ./lab-host.nix ./instances.json; in
{
  signingKey = ./secrets/hive.sec;
  systems.web = {
    configuration = { networking.hostName = "web"; standin.payloadBytes = 4096; };
    checks.fine.command = "true";
  };
  instances.www-1 = host "www-1" { system = "web"; };
}
"""

# A `sleep` the stand-in's activation finds first in its PATH (/usr/local/sbin): asked to
# sleep "hostile" (/run/standin-activation-delay), it says so with escape sequences and a
# 200 kB line and fails, as a hostile host's activation would; otherwise it sleeps.
HOSTILE_SLEEP = r"""#!/bin/sh
if [ "$1" = hostile ]; then
  printf 'before \033]0;pwned\007\033[2J after\n' >&2
  head -c 200000 /dev/zero | tr '\0' y >&2
  echo >&2
  exit 1
fi
exec /usr/bin/sleep "$@"
"""


def assert_tame(output: str) -> None:
    """No raw escape sequence of the host's, and no line past the bound."""
    assert "\x1b" not in output and "\x07" not in output
    longest = max((len(ln) for ln in output.splitlines()), default=0)
    assert longest <= MAX_LINE, longest


def one_host(fleet_factory: Start, tmp_path: Path, hive: str) -> Fleet:
    source = tmp_path / "source"
    write_hive(source, hive, "default.nix")
    return fleet_factory(topology=ONE, source=source, payload_bytes=4096)


@needs_lab
def test_host_output_is_shown_escaped_and_bounded(fleet_factory: Start, tmp_path: Path) -> None:
    fleet = one_host(fleet_factory, tmp_path, HOSTILE_HIVE)
    fleet.lab.run("www-1", ["sh", "-c", "mkdir -p /usr/local/sbin && cat > /usr/local/sbin/sleep && "
                            "chmod 755 /usr/local/sbin/sleep && echo hostile > /run/standin-activation-delay"],
                  input=HOSTILE_SLEEP)
    # The activation fails: its log is shown under the progress line.
    first = fleet.deploy("-j", "1")
    assert first.returncode == 1, first.stderr
    assert "before \\x1b]0;pwned\\x07\\x1b[2J after" in first.stderr  # shown, escaped
    assert "yyyyyyyy... (198,000 more characters)" in first.stderr
    assert_tame(first.stdout)
    assert_tame(first.stderr)

    # Now the activation works, and the check fails with its hostile output as the reason:
    # in the progress line, the summary table, the JSON and the report.
    fleet.lab.run("www-1", ["rm", "/run/standin-activation-delay"])
    second = fleet.deploy("--no-rollback")
    assert second.returncode == 1, second.stderr
    for out in (second.stdout, second.stderr):
        assert "check evil failed: exit 1: \\x1b]0;pwned\\x07\\x1b[2Jxxxx" in out
        assert "more characters)" in out
        assert_tame(out)
    report_file = tmp_path / "report.json"
    third = fleet.deploy("--no-rollback", "--json", "-q", "--report", str(report_file))
    assert third.returncode == 1, third.stderr
    for data in (json.loads(third.stdout), json.loads(report_file.read_text())):
        reason = data["instances"][0]["reason"]
        assert ESC_TITLE + CLEAR in reason  # JSON escapes it (a program reads it)
        assert reason.endswith(" more characters)") and len(reason) <= text.LIMIT + 40
    assert "\x1b" not in third.stdout  # JSON's own escapes: \u001b

    # `nix-hive check` alone: the table and the JSON.
    check = fleet.run("check", "-c", str(fleet.hive))
    assert check.returncode == 1
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in check.stdout
    assert_tame(check.stdout)
    assert_tame(check.stderr)
    as_json = fleet.run("check", "--json", "-c", str(fleet.hive))
    detail = json.loads(as_json.stdout)[0]["detail"]
    assert detail.startswith("exit 1: " + ESC_TITLE + CLEAR) and len(detail) <= text.LIMIT + 40


@pytest.fixture
def short_private_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="x", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@needs_lab
def test_a_deploy_with_a_100_character_tmpdir(fleet_factory: Start, tmp_path: Path,
                                              short_private_dir: Path) -> None:
    fleet = one_host(fleet_factory, tmp_path, PLAIN_HIVE)
    long = tmp_path / "t"
    long = Path(f"{long}{'t' * (100 - len(str(long)))}")
    long.mkdir()
    assert len(str(long)) == 100
    # the sockets go to $XDG_RUNTIME_DIR (here a short private directory of the test's)
    fleet.env |= {"TMPDIR": str(long), "XDG_RUNTIME_DIR": str(short_private_dir)}
    result = fleet.deploy("--json", "www-1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["instances"][0]["outcome"] == "ok"
    ran = fleet.run("run", "-c", str(fleet.hive), "www-1", "--", "echo", "hello")
    assert ran.returncode == 0 and ran.stdout.split() == ["www-1", "|", "hello"], ran.stderr
    check = fleet.run("check", "-c", str(fleet.hive), "www-1")
    assert check.returncode == 0, check.stderr
    # every run's directory was removed at its end, where it was made
    assert not list(short_private_dir.glob("nix-hive-*")) and not list(long.glob("nix-hive-*"))


# Closed pipes ---------------------------------------------------------------------------------

def big_hive(directory: Path, count: int) -> Path:
    """A hive of `count` instances of two systems behind relays (nothing reachable: for
    commands that only evaluate, plan or build)."""
    return write_hive(directory, f"""
        {{
          paths.nixpkgs = {STANDIN};
          systems.web.configuration = {{ networking.hostName = "web"; standin.payloadBytes = 1024; }};
          systems.db.configuration = {{ networking.hostName = "db"; standin.payloadBytes = 1024; }};
          instances = builtins.listToAttrs (builtins.genList (n: {{
            name = "host-${{toString n}}";
            value = {{
              system = if n < {count // 2} then "web" else "db";
              store = "ssh://relay-${{toString (n / 100)}}";
              tags = [ "rack${{toString (n / 40)}}" ];
              ssh = {{ Hostname = "10.1.${{toString (n / 250)}}.${{toString (n - n / 250 * 250 + 1)}}"; }};
            }};
          }}) {count});
        }}
        """)


def piped(args: list[str], cwd: Path) -> tuple[int, str]:
    """`nix-hive ARGS | head -c 10` through a real pipe (the output is far larger than a pipe
    holds, so head is gone before nix-hive is done): nix-hive's exit status and stderr."""
    command = shlex.join([sys.executable, "-c", "import sys; from hive.cli import main; sys.exit(main())", *args])
    script = f"{command} 2>stderr | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return int(out.stdout.strip()), (cwd / "stderr").read_text()


@needs_nix
@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_closed_pipe_ends_quietly_with_141(tmp_path: Path, unbuffered: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # PYTHONUNBUFFERED: the text stream would drop what a partial write left, and exit 0
    monkeypatch.setenv("PYTHONUNBUFFERED", unbuffered)
    big_hive(tmp_path, 2000)
    for args in (["list"], ["list", "--json"], ["plan"], ["plan", "--json"], ["ssh-config"]):
        assert piped(args, tmp_path) == (141, ""), args


@needs_nix
def test_a_closed_pipe_leaves_the_state_file_and_lock_whole(tmp_path: Path) -> None:
    big_hive(tmp_path, 2000)
    assert piped(["build", "-q"], tmp_path) == (141, "")
    again = nix_hive("build", "-q", "--no", "build", cwd=tmp_path)  # the lock was released, the state is read
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert json.loads(again.stdout)["systems"]["web"]["result"].startswith("/nix/store/")
    assert ".hive.state" in os.listdir(tmp_path)


# plan at scale -------------------------------------------------------------------------------

@needs_nix
def test_the_plan_table_grows_linearly(tmp_path: Path) -> None:
    sizes: dict[int, int] = {}
    for count in (1000, 5000):
        big_hive(tmp_path / str(count), count)
        out = nix_hive("plan", "-c", str(tmp_path / str(count)), "rack0", "*")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        deploy = next(ln for ln in lines if ln.startswith("deploy "))
        assert f"{count:,} tasks (activate:host-0, activate:host-1, " in deploy
        assert max(len(ln) for ln in lines) < 600  # one cell of every task name would be 90,000
        # a push and an activation each, a store per 100, two builds and their nix build, wave 2, deploy, header
        assert len(lines) == 2 * count + count // 100 + 3 + 1 + 1 + 2
        sizes[count] = len(out.stdout)
    assert sizes[5000] < 600 * (2 * 5000 + 10)
    assert sizes[5000] / sizes[1000] < 5.5  # before: 26 (750 MB printed at 5,000)


def test_commands_that_connect_nowhere_write_no_instance_s_ssh_files(tmp_path: Path) -> None:
    """On 1,000 instances, `list` and `plan` write nothing beside the deployment, and
    `ssh-config` its one configuration and known_hosts: an instance's own ssh files come when a
    connection to it is about to start (issue 29)."""
    big_hive(tmp_path, 1000)
    before = sorted(tmp_path.rglob("*"))
    for command in ("list", "plan"):
        out = nix_hive(command, "-c", str(tmp_path))
        assert out.returncode == 0, out.stderr
    assert sorted(tmp_path.rglob("*")) == before
    out = nix_hive("ssh-config", "-c", str(tmp_path))
    assert out.returncode == 0, out.stderr
    written = [p for p in tmp_path.rglob("*") if p not in before and p.is_file()]
    assert sorted(p.name for p in written) == ["known_hosts", "ssh_config"]


# Units ---------------------------------------------------------------------------------------

def test_text_escapes_controls_and_bounds_lines() -> None:
    assert text.line(f"a{ESC_TITLE}{CLEAR}\tb\r\x9b\u202e") == "a\\x1b]0;pwned\\x07\\x1b[2J\tb\\x0d\\x9b\\u202e"
    assert text.cell("a\tb\nc") == "a\\x09b\\nc"
    assert text.line("é ✓ 日本") == "é ✓ 日本"  # printable text stays as it is
    long = text.line("x" * 200_000)
    assert long == "x" * 2000 + "... (198,000 more characters)"
    assert text.lines("one\r\ntwo\n\x1b[2J") == ["one", "two", "\\x1b[2J"]
    assert text.bounded({"a": ["y" * 3000, 1, None]}) == {"a": ["y" * 2000 + "... (1,000 more characters)", 1, None]}
    many = [f"push:www-{n}" for n in range(5000)]
    summary = text.summary(many, "tasks")
    assert summary.startswith("5,000 tasks (push:www-0, push:www-1, ") and summary.endswith(", ..., push:www-4999)")
    assert len(summary) < 260
    assert text.summary(["a", "b"], "tasks") == "a b"


def test_progress_lines_and_logs_are_escaped_and_bounded() -> None:
    stream = io.StringIO()
    progress = report.Progress(stream)
    progress.step("activate", "www-1", "failed", f"check failed: {ESC_TITLE}{CLEAR}" + "x" * 200_000)
    progress.block(f"log {CLEAR}\n" + "y" * 200_000 + "\n\x07done")
    progress.line("two\nlines\x1b")
    shown = stream.getvalue()
    assert_tame(shown)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in shown and "    | log \\x1b[2J\n" in shown and "    | \\x07done" in shown
    assert shown.endswith("] two\nlines\\x1b\n")


def test_progress_on_a_closed_stream_goes_quiet() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    progress = report.Progress(Closed())
    progress.line("nobody reads this")  # no exception: the run goes on
    progress.block("nor this")
    assert progress.quiet


def test_tables_escape_every_cell() -> None:
    row = report.Row("www-1", "web", "/nix/store/x", "failed", f"activate: {ESC_TITLE}" + "z" * 5000)
    table = report.summary_table([row])
    assert_tame(table)
    marker = f"... ({len(row.reason) - text.LIMIT:,} more characters)"
    assert "activate: \\x1b]0;pwned\\x07zzz" in table and marker in table
    out = io.StringIO()
    report.dump_json({"instances": [row.as_json()]}, out, hosts=True)
    reason = json.loads(out.getvalue())["instances"][0]["reason"]
    assert reason.startswith(f"activate: {ESC_TITLE}") and reason.endswith(marker)


def test_socket_directories_leave_room_for_ssh_whatever_tmpdir_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  short_private_dir: Path) -> None:
    long = tmp_path / ("t" * (100 - len(str(tmp_path)) - 1))
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_private_dir))
    made = tempdirs.for_sockets("run", ssh.CONTROL_ROOM)
    assert made.parent == short_private_dir and oct(made.stat().st_mode & 0o777) == "0o700"
    assert len(os.fsencode(f"{made}/c/{'%C' * 20}.{'r' * 16}")) <= tempdirs.SUN_PATH
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert tempdirs.socket_base("run", ssh.CONTROL_ROOM) == Path("/tmp")
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert tempdirs.socket_base("run", ssh.CONTROL_ROOM) is None  # the usual place when it fits
    with pytest.raises(InputError, match="too long for ssh's control sockets"):
        tempdirs.socket_base("run", 200)
