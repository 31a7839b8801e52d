"""Hostile key sources (issue 19, items 3 and 4).

A key's bytes arrive as they are: a keyCommand writing every byte value and invalid UTF-8, one
writing 32 MiB of random bytes, and a binary keyFile are compared on the lab host by SHA-256
with what the test computes (decoded as text, 10 bytes had arrived as 16 and 50 MB as 90 MB);
the host installs nothing that arrived altered. A keyCommand that never ends fails its key at
its deadline, with the rest of the deployment going on, and no process of it outlives nix-hive,
whether the deadline passes, nix-hive gets SIGTERM, or the run is interrupted (Ctrl-C).
Processes are attributed to a test by a marker, unique to it, in their argv.

Keys are written as root: none is written through a symbolic link or into a directory another
user could change (issue 27), whether a user owns a directory of the destination's path and
links a subdirectory of it to /etc, or /run/keys itself is a link.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hive import process
from hive.errors import DeploymentError, ProcessError, StepError
from hive.evaluate import build_model, validate
from hive.keys import KEYS_SH, Keys, upload_stream
from hive.model import DEFAULT_KEY_COMMAND_TIMEOUT, Hive, Key
from tests.conftest import REPO, needs, needs_lab, poll_until
from tests.constants import STANDIN, nix_env
from tests.fleet import Fleet

TOPOLOGY = {"portico": ["pub"], "www-1": ["pub"]}
SOURCE = REPO / "tests" / "hives" / "keys"
HOSTILE = "hostile.nix"
LINKS = "links.nix"
BINARY = bytes(range(256)) + b"\xff\xfe\xc3\x28\xed\xa0\x80\x00"  # what keys.binary's command writes
LARGE_BYTES = 32 * 1024 * 1024
SEED = 1919
BINARY_FILE = bytes(reversed(range(256))) * 64 + b"\x80\xbf\n\r\x00"

# with xdist's --dist loadgroup, one worker runs the lab tests and starts their fleet once
lab_group = pytest.mark.xdist_group("keys_hostile")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def marked(marker: str) -> list[str]:
    """The argv of every live process whose command line carries `marker` (zombies are dead)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z" and proc.name != str(os.getpid()):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


# --- unit: process.run's binary and lifeline options, on real commands --------------------------

def test_binary_output_is_kept_byte_for_byte() -> None:
    script = f"import sys; sys.stdout.buffer.write({BINARY!r})"
    out = process.run([sys.executable, "-c", script], binary=True)
    assert out.stdout_bytes == BINARY and out.stdout == ""
    assert process.run([sys.executable, "-c", script]).stdout.encode() != BINARY  # text mode: altered
    # sh's own capture keeps the last 3 Mi lines and drops the rest silently; bytes are not capped
    newlines = process.run(["sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' '\\n'"], binary=True, lifeline=True)
    assert newlines.stdout_bytes == b"\n" * 4_000_000


def test_bytes_input_arrives_whole() -> None:
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    assert process.run(["sha256sum"], input=data).stdout.split()[0] == sha256(data)


def test_lifeline_options() -> None:
    with pytest.raises(ValueError):
        process.run(["cat"], lifeline=True, input=b"x")  # the command reads /dev/null
    with pytest.raises(ProcessError, match="no-such-command-19: command not found"):
        process.run(["no-such-command-19"], lifeline=True)
    assert process.run(["sh", "-c", "cat; echo $?"], lifeline=True).stdout == "0\n"  # stdin: empty
    failed = process.run(["sh", "-c", "echo why >&2; exit 3"], lifeline=True, check=False)
    assert (failed.exit_code, failed.stderr) == (3, "why\n")  # the command's own status: it is exec'd
    killed = process.run(["sh", "-c", "kill -TERM $$"], lifeline=True, check=False)
    assert killed.killed_by == signal.SIGTERM


def test_lifeline_kills_what_the_command_left_and_what_outlived_its_deadline() -> None:
    marker = f"lifeline-{secrets.token_hex(6)}"
    out = process.run(["sh", "-c", f"sh -c 'sleep 1000; : {marker}-left' >/dev/null & echo started"],
                      lifeline=True)
    assert out.stdout == "started\n"
    assert poll_until(lambda: not marked(marker), 5), marked(marker)
    started = time.monotonic()
    with pytest.raises(process.ProcessTimeoutError):
        process.run(["sh", "-c", f"sh -c 'sleep 1000; : {marker}-child' & sleep 1000; : {marker}"],
                    lifeline=True, binary=True, timeout=1)
    assert time.monotonic() - started < 5
    assert poll_until(lambda: not marked(marker), 5), marked(marker)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_lifeline_command_dies_with_its_caller(tmp_path: Path, how: str) -> None:
    """Python dies of SIGTERM without running a handler (and of SIGKILL, whatever it does):
    the command, in a session of its own, must not live on as an orphan."""
    half = secrets.token_hex(6)
    marker = f"orphan-{half}{half}"  # the caller's own argv has the halves only
    script = textwrap.dedent(f"""
        from concurrent.futures import ThreadPoolExecutor
        from hive import process
        marker = "orphan-{half}" + "{half}"
        command = f"sh -c 'sleep 1000; : {{marker}}-child' & sleep 1000; : {{marker}}"
        with ThreadPoolExecutor(2) as pool:
            pool.submit(process.run, ["sh", "-c", command], lifeline=True, binary=True, timeout=600).result()
    """)
    caller = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        assert poll_until(lambda: len(marked(f"{marker}-child")) > 0, 10)
        caller.send_signal(signal.Signals[how])
        assert caller.wait(10) == -signal.Signals[how]
        assert poll_until(lambda: not marked(marker), 5), marked(marker)
    finally:
        if caller.poll() is None:
            caller.kill()


# --- unit: keyCommandTimeout in the schema and the model -------------------------------------

def raw_hive(**key: Any) -> dict[str, Any]:
    return {"systems": {"s": {"configuration": "set", "keys": ["k"]}}, "instances": {"h": {"system": "s"}},
            "keys": {"k": key}}


def model(raw: dict[str, Any]) -> Hive:
    validate(raw, "hive.nix")
    return build_model(raw, Path("/nowhere/hive.nix"), "hive.nix")


def test_key_command_timeout_attribute() -> None:
    assert model(raw_hive(keyCommand=["cat"])).keys["k"].command_timeout == DEFAULT_KEY_COMMAND_TIMEOUT == 60
    assert model(raw_hive(keyCommand=["cat"], keyCommandTimeout=5)).keys["k"].command_timeout == 5
    wrong = {0: "0 is not a number of seconds, at least 1", 86401: "86401 is not a number of seconds, at least 1",
             "5": '"5" is not an integer', 2.5: "2.5 is not an integer"}
    for value, message in wrong.items():
        with pytest.raises(DeploymentError) as caught:
            model(raw_hive(keyCommand=["cat"], keyCommandTimeout=value))
        assert str(caught.value) == f"hive.nix: keys.k.keyCommandTimeout: {message}"
    for source in ({"text": "x"}, {"keyFile": "/etc/hostname"}):
        with pytest.raises(DeploymentError) as caught:
            model(raw_hive(**source, keyCommandTimeout=5))
        assert str(caught.value) == ("hive.nix: keys.k.keyCommandTimeout: only a keyCommand has a timeout, "
                                     f"and this key's source is {next(iter(source))}")


# --- unit: Keys reads bytes, under a deadline, once per run ---------------------------------

def test_a_hung_key_command_fails_once_at_its_deadline_with_its_name() -> None:
    marker = f"hung-{secrets.token_hex(6)}"
    hung = Key(name="db-password", destination="/run/keys/db-password", command=("sh", "-c", f"sleep 1000; : {marker}"),
               command_timeout=1)
    other = Key(name="other", destination="/run/keys/other", command=(sys.executable, "-c",
                f"import sys; sys.stdout.buffer.write({BINARY!r})"))
    keys = Keys(Hive(file=Path("/nowhere/hive.nix"), shown="hive.nix", paths={}, systems={}, instances={},
                     keys={"db-password": hung, "other": other}))
    failures: list[str] = []

    def read_hung() -> None:
        try:
            keys.content(hung)
        except StepError as exc:
            failures.append(str(exc))

    started = time.monotonic()
    readers = [threading.Thread(target=read_hung) for _ in range(4)]  # four hosts share the key
    for reader in readers:
        reader.start()
    assert keys.content(other) == BINARY  # another key is not held up by the hung one
    assert time.monotonic() - started < 1
    for reader in readers:
        reader.join(10)
    assert 1 <= time.monotonic() - started < 3  # one deadline, not one per host
    assert failures == ["key db-password: keyCommand did not finish within 1 s "
                        "(keys.db-password.keyCommandTimeout)"] * 4
    assert poll_until(lambda: not marked(marker), 5), marked(marker)


def test_the_host_installs_nothing_that_arrived_altered(tmp_path: Path) -> None:
    """The upload script itself, run here by a real sh as root would run it on a host."""
    dest = tmp_path / "keys" / "k"
    user, group = process.run(["id", "-un"]).stdout.strip(), process.run(["id", "-gn"]).stdout.strip()
    script = ["sh", "-c", KEYS_SH, "keys.sh", "upload", "1"]
    stream = upload_stream([(Key("k", str(dest), user=user, group=group), BINARY)])
    process.run(script, input=stream)
    assert dest.read_bytes() == BINARY and dest.stat().st_mode & 0o777 == 0o600
    assert process.run(["sh", "-c", KEYS_SH, "keys.sh", "hashes", str(dest), str(tmp_path / "none")]).stdout == \
        f"{sha256(BINARY)}  {dest}\n"
    cut = process.run(script, input=stream[:-5], check=False)
    assert cut.exit_code == 68
    assert cut.stdout == f"1 66 the content arrived altered ({len(BINARY) - 5} of {len(BINARY)} bytes, " \
                         "another SHA-256): not installed\n"
    empty = process.run(script, input=b"", check=False)
    assert (empty.exit_code, empty.stderr) == (66, "the key list arrived cut short (0 of 1 lines): nothing installed\n")
    assert dest.read_bytes() == BINARY and sorted(p.name for p in dest.parent.iterdir()) == ["k"]


def upload(dest: Path, data: bytes = b"key") -> subprocess.CompletedProcess[bytes]:
    """keys.sh's upload of one key, run here by a real sh as root runs it on a host."""
    return subprocess.run(["sh", "-c", KEYS_SH, "keys.sh", "upload", "1"],
                          input=upload_stream([(Key("k", str(dest)), data)]), capture_output=True, timeout=30)


@needs("root", None if os.geteuid() == 0 else "keys.sh runs as root (it checks that root owns each directory)")
def test_a_key_is_never_written_through_a_link_or_a_directory_another_user_owns(tmp_path: Path) -> None:
    """Each refusal is one line naming the component at fault, exit 67, and nothing is written
    anywhere (the link's target is a directory of the test's own, standing for /etc)."""
    root = tmp_path / "keys"
    root.mkdir()
    tmp_path.chmod(0o755)
    target = tmp_path / "etc"
    target.mkdir()
    nobody = 65534
    (root / "app").mkdir()
    os.chown(root / "app", nobody, nobody)  # a service user's own directory, in the key's path
    (root / "app" / "sub").symlink_to(target)  # which it linked to a directory of root's
    (root / "linked").symlink_to(target)
    (root / "file").symlink_to(target / "passwd")
    (root / "dir").mkdir()
    (root / "open").mkdir(mode=0o777)
    (root / "open").chmod(0o777)
    refused = {
        root / "app" / "sub" / "k": f"{root / 'app'} is owned by nobody, not root",
        root / "linked" / "k": f"{root / 'linked'} is a symbolic link",
        root / "linked" / "deeper" / "k": f"{root / 'linked'} is a symbolic link",
        root / "file": f"{root / 'file'} is a symbolic link",
        root / "dir": f"{root / 'dir'} is not a regular file",
        root / "open" / "k": f"{root / 'open'} is writable by others than root and not sticky (mode 777)",
        root / "dir" / "plain" / "k": None,  # made: root's, 0755
    }
    for dest, why in refused.items():
        out = upload(dest)
        if why is None:
            assert out.returncode == 0, out.stderr
            assert dest.read_bytes() == b"key" and dest.stat().st_mode & 0o777 == 0o600
            assert (dest.parent.stat().st_uid, dest.parent.stat().st_mode & 0o7777) == (0, 0o755)
            continue
        assert (out.returncode, out.stdout.decode()) == (68, f"1 67 {why}: refused\n"), dest
    assert list(target.iterdir()) == []  # nothing went through a link
    assert sorted(p.name for p in (root / "app").iterdir()) == ["sub"]
    # a sticky directory others may write (as /tmp) is fine: they cannot touch root's entries
    (root / "open").chmod(0o1777)
    assert upload(root / "open" / "k").returncode == 0
    # `hashes` reports no destination an upload would refuse: the upload then says why
    (target / "k").write_bytes(b"key")
    hashes = subprocess.run(["sh", "-c", KEYS_SH, "keys.sh", "hashes", str(root / "linked" / "k"),
                             str(root / "app" / "sub" / "k"), str(root / "dir" / "plain" / "k")],
                            capture_output=True, text=True, check=True)
    assert hashes.stdout == f"{sha256(b'key')}  {root / 'dir' / 'plain' / 'k'}\n"


# --- the lab: real hosts over real ssh --------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet.start(tmp_path_factory.mktemp("hostile"), topology=TOPOLOGY, source=SOURCE, payload_bytes=4096)
    try:
        (fleet.hive / "secrets" / "binary").write_bytes(BINARY_FILE)
        fleet.env.update(KEYTEST_PYTHON=sys.executable, KEYTEST_SEED=str(SEED), KEYTEST_LARGE_BYTES=str(LARGE_BYTES),
                         KEYTEST_MARKER="unused", KEYTEST_HANG_TIMEOUT="60")
        yield fleet
    finally:
        fleet.down()


def on_host(fleet: Fleet, host: str, path: str) -> tuple[str, int]:
    """SHA-256 and size of a file on the host, computed there."""
    out = fleet.lab.run(host, ["sh", "-c", f"sha256sum < {path} && wc -c < {path}"]).stdout.split()
    return out[0], int(out[-1])


def nix_hive(fleet: Fleet, *args: str) -> list[str]:
    command, rest = args[0], args[1:]
    return fleet.nix_hive_argv(command, "-c", str(fleet.hive / HOSTILE), *rest)


def env(fleet: Fleet, **extra: str) -> dict[str, str]:
    return {**nix_env(), **fleet.env, "PYTHONPATH": str(REPO), **extra}


@needs_lab
@lab_group
def test_binary_and_large_keys_arrive_intact_and_a_hung_one_fails_alone(fleet: Fleet) -> None:
    marker = f"hung-key-{secrets.token_hex(6)}"
    started = time.monotonic()
    result = subprocess.run(nix_hive(fleet, "deploy", "-I", f"nixpkgs={STANDIN}", "--json", "*"),
                            env=env(fleet, KEYTEST_MARKER=marker, KEYTEST_HANG_TIMEOUT="3"),
                            capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    rows = {r["instance"]: r for r in json.loads(result.stdout)["instances"]}
    assert result.returncode == 1, result.stderr
    assert rows["portico"]["outcome"] == "ok", rows
    assert rows["www-1"]["outcome"] == "failed"
    assert rows["www-1"]["reason"] == ("keys: key hang: keyCommand did not finish within 3 s "
                                       "(keys.hang.keyCommandTimeout)")  # the step, then why
    assert fleet.lab.activations("www-1") == []  # a pre-activation key failed: no switch
    assert not marked(marker), marked(marker)  # the command and its child died at the deadline
    large = random.Random(SEED).randbytes(LARGE_BYTES)
    for host in ("portico", "www-1"):
        assert on_host(fleet, host, "/run/keys/binary") == (sha256(BINARY), len(BINARY))
        assert on_host(fleet, host, "/run/keys/large") == (sha256(large), LARGE_BYTES)
        assert on_host(fleet, host, "/run/keys/files/binary") == (sha256(BINARY_FILE), len(BINARY_FILE))
    assert fleet.lab.run("portico", ["stat", "-c", "%a", "/run/keys/files/binary"]).stdout.strip() == "400"
    assert fleet.lab.read("portico", "/run/keys/hang") is None
    print(f"deploy with a 32 MiB key and a hung one (3 s deadline): {took:.1f} s")


@needs_lab
@lab_group
@pytest.mark.parametrize(("command", "how", "status"), [
    ("deploy", "SIGTERM", 143),  # its summary, then 143 (docs/running.md, interrupted)
    ("deploy", "SIGINT", 1),  # a first Ctrl-C: its summary, then 1
    ("upload-keys", "SIGTERM", -signal.SIGTERM),  # dies of the signal itself (a shell shows 143)
    ("upload-keys", None, 1),  # the key command failed at its deadline
])
def test_no_key_command_outlives_nix_hive(fleet: Fleet, command: str, how: str | None, status: int) -> None:
    """However nix-hive ends (its keyCommand's deadline, SIGTERM, Ctrl-C), it ends within the
    deadline, and nothing of the command (nor of the child it started) is left once it has.
    (`deploy` lets its running steps finish after a first Ctrl-C or SIGTERM, for a bounded
    time: the key command then fails at its deadline; `upload-keys` dies of SIGTERM at once,
    and the lifeline takes its key command along.)"""
    marker = f"hung-key-{secrets.token_hex(6)}"
    deadline = 3
    rest = ["-I", f"nixpkgs={STANDIN}", "--no", "build,push,activate", "www-1"] if command == "deploy" else ["www-1"]
    runner = subprocess.Popen(nix_hive(fleet, command, *rest),
                              env=env(fleet, KEYTEST_MARKER=marker, KEYTEST_HANG_TIMEOUT=str(deadline)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert poll_until(lambda: len(marked(f"{marker}-child")) > 0, 60), "the key command never started"
        signalled = time.monotonic()
        if how is not None:
            runner.send_signal(signal.Signals[how])
        stdout, stderr = runner.communicate(timeout=deadline + 30)
        took = time.monotonic() - signalled
        assert runner.returncode == status and took < deadline + 5, (runner.returncode, took, stderr)
        if how is None:
            assert "key hang: keyCommand did not finish within 3 s (keys.hang.keyCommandTimeout)" in stdout + stderr
        assert poll_until(lambda: not marked(marker), 5), marked(marker)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()


@needs_lab
@lab_group
def test_keys_are_not_written_through_links_another_user_made(fleet: Fleet) -> None:
    """On portico the deploy user (any user but root) owns /run/keys/app and links
    /run/keys/app/sub to /etc; on www-1 /run/keys itself is a link to /etc. Each host's key is
    refused with the component at fault, its instance fails, and nothing lands in /etc."""
    token = f"escape-{secrets.token_hex(8)}"
    prepare = {"portico": "mkdir -p /run/keys/app && chown deploy /run/keys/app && "
                          "runuser -u deploy -- sh -c 'ln -s /etc /run/keys/app/sub && mkdir /run/keys/app/own'",
               "www-1": "mkdir -p /run/keys && rm -rf /run/keys.moved && mv /run/keys /run/keys.moved && "
                        "ln -s /etc /run/keys"}
    undo = {"portico": "rm -rf /run/keys/app", "www-1": "rm -f /run/keys && mv /run/keys.moved /run/keys"}
    switched = {host: len(fleet.lab.activations(host)) for host in prepare}
    for host, script in prepare.items():
        fleet.lab.run(host, ["sh", "-c", script])
    try:
        result = subprocess.run(fleet.nix_hive_argv("deploy", "-c", str(fleet.hive / LINKS), "-I", f"nixpkgs={STANDIN}",
                                                    "--json", "*"),
                                env=env(fleet, KEYTEST_LINKS_TOKEN=token, KEYTEST_LINKS_KEY="through-link"),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stdout + result.stderr
        rows = {r["instance"]: r for r in json.loads(result.stdout)["instances"]}
        assert {h: (r["outcome"], r["reason"]) for h, r in rows.items()} == {
            "portico": ("failed", "keys: key through-link on portico: /run/keys/app is owned by deploy, not root: "
                                  "refused"),
            "www-1": ("failed", "keys: key run-keys on www-1: /run/keys is a symbolic link: refused")}
        own = subprocess.run(fleet.nix_hive_argv("upload-keys", "-c", str(fleet.hive / LINKS), "--json", "portico"),
                             env=env(fleet, KEYTEST_LINKS_TOKEN=token, KEYTEST_LINKS_KEY="in-own-dir"),
                             capture_output=True, text=True, timeout=300)
        assert own.returncode == 1, own.stdout + own.stderr
        assert json.loads(own.stdout)["instances"][0]["reason"].endswith(
            "key in-own-dir on portico: /run/keys/app is owned by deploy, not root: refused")
        for host in prepare:
            assert len(fleet.lab.activations(host)) == switched[host]  # a pre-activation key failed: no switch
            found = fleet.lab.run(host, ["grep", "-rlF", token, "/etc", "/run"], check=False).stdout
            assert found == "", (host, found)  # nowhere: not through the links, not left half-way
            listed = "ls -a /etc /run/keys/app/own 2>/dev/null | grep -e nix-hive-escape -e .nix-hive-key"
            left = fleet.lab.run(host, ["sh", "-c", listed], check=False).stdout
            assert left == "", (host, left)
    finally:
        for host, script in undo.items():
            fleet.lab.run(host, ["sh", "-c", script], check=False)
