"""Fast unit tests: the argv of each Nix and ssh call (the process seam faked), the generated
ssh configuration, error lines and option errors. The proof that features
work is in the tests with real Nix and the lab; these pin the details."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hive import checks, cli, fleet, nix, options, plan, process, remote, report, resources, ssh, tasks
from hive.errors import DeploymentError, InputError, ProcessError, headline
from hive.model import Goal, Hive, Instance, Step, System, frozen_map
from hive.options import Options
from hive.outcome import Status
from hive.report import Progress
from hive.session import Session


class Calls:
    def __init__(self, stdout: str = "") -> None:
        self.argv: list[list[str]] = []
        self.env: list[dict[str, str]] = []
        self.stdout = stdout

    def __call__(self, argv: Sequence[str], *, env: Any = None, **_: Any) -> process.Result:
        self.argv.append(list(argv))
        self.env.append(dict(env or {}))
        binary = bool(_.get("binary"))
        return process.Result(stdout="" if binary else self.stdout, stderr="", exit_code=0,
                              stdout_bytes=self.stdout.encode() if binary else b"")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    fake = Calls()
    monkeypatch.setattr(process, "run", fake)
    yield fake


def test_a_system_is_evaluated_alone_then_built_with_others(calls: Calls) -> None:
    calls.stdout = "/nix/store/a.drv\n"
    drv = nix.instantiate(nix.deployment_env(Path("/d/hive.nix")), Path("/d"), "a",
                          {"nixpkgs": "/src/nixpkgs", "extra": "https://x/y.tar.xz"})
    assert drv == "/nix/store/a.drv"
    argv = calls.argv[0]
    assert argv[:6] == ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--impure", "--raw"]
    assert argv[-1] == "a.drvPath" and argv[-3] == "--file" and argv[-2].endswith("build.nix")
    flags = [argv[i + 1] for i, a in enumerate(argv) if a == "-I"]
    assert flags == ["deployment=/d", "extra=https://x/y.tar.xz", "nixpkgs=/src/nixpkgs"]
    assert calls.env[0] == {"NIX_HIVE_DEPLOYMENT": "/d/hive.nix", "NIX_HIVE_FLAKE": ""}
    calls.stdout = "/nix/store/a-sys-a\n/nix/store/b-sys-b\n"
    assert nix.realise(["/nix/store/a.drv", "/nix/store/b.drv"]) == ["/nix/store/a-sys-a", "/nix/store/b-sys-b"]
    assert calls.argv[1] == ["nix-store", "--realise", "/nix/store/a.drv", "/nix/store/b.drv"]


def test_eval_is_read_only_so_nothing_reaches_the_store(calls: Calls) -> None:
    calls.stdout = "{}"
    nix.eval_inventory(nix.deployment_env(Path("/d/hive.nix")), Path("/d"))
    [argv] = calls.argv
    assert {"eval", "--json", "--read-only", "--impure"} <= set(argv)
    assert argv[argv.index("--file") + 1].endswith("eval.nix")
    # a flake is read from the store (Nix copies it there to read it): no --read-only
    nix.eval_inventory(nix.deployment_env(Path("/f/flake.nix"), "/f", "nixHive"), Path("/f"))
    assert "--read-only" not in calls.argv[1]
    assert calls.env[1] == {"NIX_HIVE_FLAKE": "/f", "NIX_HIVE_ATTR": "nixHive", "NIX_HIVE_DEPLOYMENT": ""}


def test_copy_sign_and_profile_commands(calls: Calls) -> None:
    nix.copy("ssh://www-1", ["/nix/store/p"], substitute=True, env={"NIX_SSHOPTS": "-F /c"})
    nix.copy("s3://bucket?region=x", ["/nix/store/p", "/nix/store/q"], substitute=False, env={})
    nix.sign(Path("/k/hive.sec"), ["/nix/store/p"])
    assert calls.argv[0][3:] == ["copy", "--to", "ssh://www-1", "--substitute-on-destination", "/nix/store/p"]
    assert calls.env[0] == {"NIX_SSHOPTS": "-F /c"}
    # a network cache is asked what it holds, not Nix's month-old record of it
    assert calls.argv[1][3:] == ["copy", "--to", "s3://bucket?region=x", "--option", "narinfo-cache-positive-ttl",
                                 "0", "/nix/store/p", "/nix/store/q"]
    for to in ("http://c:8080", "https://c/sub"):
        assert nix.copy_argv(to, ["/nix/store/p"], substitute=False)[3:7] == [
            "copy", "--to", to, "--option"]
    assert "narinfo-cache-positive-ttl" not in nix.copy_argv("file:///srv/c", ["/nix/store/p"], substitute=False)
    assert calls.argv[2][3:] == ["store", "sign", "--key-file", "/k/hive.sec", "--recursive", "/nix/store/p"]
    assert nix.set_profile_argv("/nix/store/p") == ["nix-env", "--profile", "/nix/var/nix/profiles/system",
                                                    "--set", "/nix/store/p"]
    assert nix.switch_argv("/nix/store/p", "boot") == ["/nix/store/p/bin/switch-to-configuration", "boot"]


def hive(**instances: Instance) -> Hive:
    return Hive(file=Path("/d/hive.nix"), shown="hive.nix", paths=frozen_map(),
                systems={"s": System("s", frozen_map())}, instances=instances)


def test_ssh_config_blocks_pinning_and_user_layering(tmp_path: Path) -> None:
    h = hive(
        portico=Instance("portico", "s", ssh=frozen_map({"Hostname": "203.0.113.1"}),
                         host_key="ssh-ed25519 AAAAC3Nza portico@lab"),
        www=Instance("www", "s", store="ssh://portico", ssh=frozen_map({"ProxyJump": "portico", "User": "deploy",
                                                                        "BatchMode": "no"})),
    )
    setup = ssh.prepare(h, tmp_path, control=True)
    text = setup.config.read_text()
    portico = text[text.index("Host portico"):text.index("Host www")]
    assert "  Hostname 203.0.113.1\n" in portico and "  StrictHostKeyChecking yes\n" in portico
    assert f"  UserKnownHostsFile {setup.known_hosts}\n" in portico and "  HostKeyAlias portico\n" in portico
    www = text[text.index("Host www"):]
    assert "  ProxyJump portico\n" in www and "  User deploy\n" in www
    assert "  BatchMode no\n" in www and "BatchMode yes" not in www  # the deployment wins
    assert "StrictHostKeyChecking" not in www.split("Match all")[0]  # not pinned: the user's policy
    assert f"  ControlPath {tmp_path}/c/%C\n" in www
    assert text.rstrip().endswith("Match all\n  Include ~/.ssh/config\n  Include /etc/ssh/ssh_config")
    assert setup.known_hosts.read_text() == "portico ssh-ed25519 AAAAC3Nza\n"
    assert setup.env == {"NIX_SSHOPTS": f"-F {setup.config}"}


def test_ssh_values_with_spaces_and_keywords_in_any_case(tmp_path: Path) -> None:
    h = hive(w=Instance("w", "s", ssh=frozen_map({"IdentityFile": "/home/me/my keys/id", "batchmode": "no",
                                                   "SendEnv": "LANG LC_ALL"})))
    text = ssh.prepare(h, tmp_path, control=True).config.read_text()
    block = text[text.index("Host w"):text.index("Host *")]
    assert '  IdentityFile "/home/me/my keys/id"\n' in block  # one file name, spaces and all
    assert "  SendEnv LANG LC_ALL\n" in block  # several words stay several words
    assert "  batchmode no\n" in block and "BatchMode" not in block  # ssh keywords ignore case
    star = text[text.index("Host *"):text.index("Match all")]
    assert "ControlMaster auto" in star  # jump hosts that are no instance share connections too
    check = subprocess.run(["ssh", "-G", "-F", str(tmp_path / "ssh_config"), "w"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # ssh itself accepts the file
    assert "identityfile /home/me/my keys/id" in check.stdout


def test_each_instance_has_ssh_files_of_its_own_that_ssh_reads_as_the_whole(tmp_path: Path) -> None:
    """An ssh process reads its whole configuration: each instance's own files hold its block
    and those of the instances it jumps through, and ssh makes of them what it makes of the
    whole file (`ssh -G`), jump chains, user@host:port hops and IPv6 literals included."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEo8QoVYbM3w3T4c6X2e9VdU4XHk0Y5oV1mQ9b4Vx3zX"
    h = hive(
        gate=Instance("gate", "s", ssh=frozen_map({"Hostname": "203.0.113.1"}), host_key=f"{key} gate"),
        inner=Instance("inner", "s", ssh=frozen_map({"ProxyJump": "gate", "Port": "2222"}), host_key=key),
        deep=Instance("deep", "s", ssh=frozen_map({"ProxyJump": "ops@inner:2222", "User": "deploy"})),
        v6=Instance("v6", "s", ssh=frozen_map({"ProxyJump": "[inner]:2222,deep"})),
        alone=Instance("alone", "s", ssh=frozen_map({"ProxyJump": "outside.example"})),
    )
    setup = ssh.prepare(h, tmp_path, control=True)
    assert ssh.jump_chain(h, "deep") == ["inner", "gate"] and ssh.jump_chain(h, "v6") == ["inner", "deep", "gate"]
    assert ssh.jump_chain(h, "alone") == [] and ssh.jump_chain(h, "gate") == []

    def resolved(config: Path, host: str) -> list[str]:
        out = subprocess.run(["ssh", "-G", "-F", str(config), host], capture_output=True, text=True, check=True)
        return [ln for ln in out.stdout.splitlines() if not ln.startswith(("userknownhostsfile", "hostkeyalias"))]

    for name in h.instances:
        own = setup.config_for(name)
        blocks = own.read_text().count("\nHost ")  # its own, its jump hosts', and `Host *`
        assert own != setup.config and blocks == 2 + len(ssh.jump_chain(h, name))
        for host in [name, *ssh.jump_chain(h, name)]:
            assert resolved(own, host) == resolved(setup.config, host)
    assert (tmp_path / "h" / "deep.known").read_text() == f"inner {key}\ngate {key}\n"
    assert setup.env_for("deep") == {"NIX_SSHOPTS": f"-F {setup.config_for('deep')}"}
    assert setup.config_for("not-an-instance") == setup.config and setup.env_for(None) == setup.env


def fleet_hive(count: int) -> Hive:
    """`count` instances behind a jump host that is one too (`gate`)."""
    behind = {f"host-{n}": Instance(f"host-{n}", "s", ssh=frozen_map({"Hostname": f"10.0.{n // 250}.{n % 250 + 1}",
                                                                        "ProxyJump": "gate"}))
              for n in range(count)}
    return hive(gate=Instance("gate", "s", ssh=frozen_map({"Hostname": "203.0.113.1"})), **behind)


def own_files(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "h").iterdir()) if (directory / "h").is_dir() else []


def test_an_instance_s_own_ssh_files_are_written_on_first_use_once_whatever_the_threads(
        tmp_path: Path, ssh_writes: list[Path]) -> None:
    """Issue 29: `prepare` writes the whole files only; an instance's own come when an ssh to
    it is about to start, once, though many threads ask for them at once."""
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "gone.config").write_text("an earlier release's\n")
    h = fleet_hive(300)
    setup = ssh.prepare(h, tmp_path, control=True)
    assert own_files(tmp_path) == [] and setup.config.is_file() and setup.known_hosts.is_file()
    assert setup.config_for("host-7") == tmp_path / "h" / "host-7.config"
    assert own_files(tmp_path) == ["host-7.config", "host-7.known"]  # its jump host's block is in it, no file
    assert "Host gate" in setup.config_for("host-7").read_text()
    ssh_writes.clear()
    names = sorted(h.instances)
    start = threading.Barrier(16)

    def ask(seed: int) -> dict[str, Path]:
        start.wait()
        order = names[seed:] + names[:seed]
        return {name: setup.config_for(name) for name in order}

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(0, 16 * 17, 17)))
    assert all(a == answers[0] for a in answers)
    assert answers[0] == {name: tmp_path / "h" / f"{name}.config" for name in names}
    assert len(ssh_writes) == 2 * (len(names) - 1) == len(set(ssh_writes))  # host-7's were written before
    assert len(own_files(tmp_path)) == 2 * len(names)
    assert setup.config_for("not-an-instance") == setup.config


def test_a_closing_run_s_files_share_no_new_connection_those_written_later_too(tmp_path: Path) -> None:
    h = fleet_hive(3)
    setup = ssh.prepare(h, tmp_path, control=True)
    before = setup.config_for("host-0")
    setup.stop_sharing()
    setup.stop_sharing()  # once is enough
    for config in (setup.config, before, setup.config_for("host-1")):
        text = config.read_text()
        assert text.startswith(ssh.CLOSING) and text.count(ssh.CLOSING) == 1, config
        resolved = subprocess.run(["ssh", "-G", "-F", str(config), "host-1"], capture_output=True, text=True)
        assert "controlmaster false" in resolved.stdout.splitlines(), resolved.stderr


def test_a_run_writes_the_ssh_files_of_the_hosts_it_connects_to_only(tmp_path: Path, calls: Calls) -> None:
    calls.stdout = "current=/nix/store/x-sys\n"
    h = fleet_hive(1000)
    with remote.Remotes(h, hubs=["gate"]) as remotes:
        directory = remotes.setup.directory
        assert own_files(directory) == []
        found = remotes.probe_all({"host-3": frozenset(), "host-998": frozenset(), "gate": frozenset()})
        assert {name: p.current for name, p in found.items()} == dict.fromkeys(["gate", "host-3", "host-998"],
                                                                                 "/nix/store/x-sys")
        assert own_files(directory) == ["gate.config", "gate.known", "host-3.config", "host-3.known",
                                        "host-998.config", "host-998.known"]
        assert sorted(argv[2] for argv in calls.argv) == [str(directory / "h" / f"{n}.config")
                                                          for n in ("gate", "host-3", "host-998")]
    assert not directory.exists()


def test_a_host_too_busy_to_answer_is_asked_once_more_a_host_that_refused_is_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1,000-host lab run: 23 hosts behind one relay timed out in ssh's banner exchange
    while 32 logins were under way on a loaded machine. Such a host (or one whose sshd dropped
    the connection before its banner) is asked again, a few at a time, before it counts as
    unreachable, when more were asked at once than the retry asks; a host that refused the
    login is asked once. Asked with no more logins at once than that, nothing is asked twice:
    a host behind a jump host that does not answer is down or cut off."""
    busy = "Connection timed out during banner exchange\r\nConnection to UNKNOWN port 65535 timed out"
    asked: list[str] = []
    said: dict[str, list[str]] = {}

    def fake(argv: Sequence[str], **_: Any) -> process.Result:
        host = argv[argv.index("--") + 1]
        asked.append(host)
        error = said.get(host, [""]).pop(0)
        if error:
            raise ProcessError(list(argv), 255, error + "\n")
        return process.Result(stdout="current=/nix/store/x-sys\n", stderr="", exit_code=0)

    monkeypatch.setattr(process, "run", fake)
    monkeypatch.setattr(ssh, "_connect_timeout", 7)
    for width, twice in ((10, True), (remote.RETRY_WIDTH, False)):
        said.update({"host-1": [busy, ""],
                     "host-2": ["kex_exchange_identification: Connection closed by remote host"] * 2,
                     "host-3": ["Permission denied (publickey).", ""]})
        asked.clear()
        with remote.Remotes(fleet_hive(7)) as remotes:
            found = remotes.probe_all({f"host-{n}": frozenset() for n in range(1, 7)}, width=width)
        assert {n: p.reachable for n, p in found.items()} == {
            "host-1": twice, "host-2": False, "host-3": False, "host-4": True, "host-5": True, "host-6": True}
        assert sorted(asked) == (["host-1", "host-1", "host-2", "host-2"] if twice
                                 else ["host-1", "host-2"]) + ["host-3", "host-4", "host-5", "host-6"]
        assert found["host-2"].reason == "kex_exchange_identification: Connection closed by remote host"
        assert found["host-3"].reason == "Permission denied (publickey)."
        if not twice:
            assert found["host-1"].reason == "it did not answer ssh within 7 s"
    # a host with a ConnectTimeout of its own: that one is said
    own = fleet_hive(2)
    own = dataclasses.replace(own, instances={**own.instances, "host-1": dataclasses.replace(
        own.instances["host-1"], ssh=frozen_map({**own.instances["host-1"].ssh, "ConnectTimeout": "30"}))})
    said.update({"host-1": [busy]})
    with remote.Remotes(own) as remotes:
        assert remotes.probe_all({"host-1": frozenset()})["host-1"].reason == "it did not answer ssh within 30 s"


def test_hosts_behind_a_jump_host_that_cannot_be_reached_are_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each would only wait out its connect timeout through a connection that cannot open."""
    asked: list[str] = []

    def fake(argv: Sequence[str], **_: Any) -> process.Result:
        host = argv[argv.index("--") + 1]
        asked.append(host)
        if host == "gate":
            raise ProcessError(list(argv), 255, "ssh: connect to host 203.0.113.1 port 22: Connection timed out\n")
        return process.Result(stdout="current=/nix/store/x-sys\n", stderr="", exit_code=0)

    monkeypatch.setattr(process, "run", fake)
    with remote.Remotes(fleet_hive(3), hubs={"gate"}) as remotes:
        found = remotes.probe_all({f"host-{n}": frozenset() for n in range(3)})
    assert asked == ["gate"]
    assert {n: p.reason for n, p in found.items()} == {
        f"host-{n}": "its jump host gate is unreachable: ssh: connect to host 203.0.113.1 port 22: Connection timed out"
        for n in range(3)}


def test_remote_commands_are_quoted_and_use_sudo_only_when_not_root(tmp_path: Path) -> None:
    setup = ssh.prepare(hive(w=Instance("w", "s")), tmp_path)
    w = remote.Remote(setup, "w")
    config = str(setup.config_for("w"))
    assert w.command_argv(["uptime;", "df", "-h"]) == [
        "ssh", "-F", config, "--", "w", "uptime; df -h"]  # as ssh itself does
    assert w.shell_argv("echo '$(x)'") == ["ssh", "-F", config, "--", "w",
                                           "sh -c 'echo '\"'\"'$(x)'\"'\"''"]
    assert w.shell_argv("true", share=False)[3:5] == ["-o", "ControlMaster=no"]
    script = remote.as_root([["nix-env", "--set", "/nix/store/p"],
                             ["/nix/store/p/bin/switch-to-configuration", "switch"]])
    assert "\nelevate sudo\n" in script  # hive/host/elevate.sh: itself as root, else sudo -n
    assert script.endswith("as_root nix-env --set /nix/store/p && as_root /nix/store/p/bin/switch-to-configuration "
                           "switch")


def test_probe_script_and_parser_on_recorded_answers() -> None:
    script = remote.probe_script(["/nix/store/b-y", "/nix/store/a-x"])
    assert script.count("nix-store --check-validity") == 2 and script.endswith("; true")
    assert script.index("/nix/store/a-x") < script.index("/nix/store/b-y")
    recorded = ("current=/nix/store/a-x\nprofile=/nix/store/a-x\nvalid=/nix/store/a-x\n"
                "valid=/nix/store/zzz-not-asked\n")
    found = remote.parse_probe(recorded, ["/nix/store/a-x", "/nix/store/b-y"])
    assert found == remote.Probe(reachable=True, current="/nix/store/a-x", profile="/nix/store/a-x",
                                 valid=frozenset({"/nix/store/a-x"}),
                                 asked=frozenset({"/nix/store/a-x", "/nix/store/b-y"}))
    assert not found.pending and remote.parse_probe("current=/x\npending=1\n", []).pending
    never = remote.parse_probe("current=\nprofile=\n", [])  # a host never activated
    assert never.reachable and never.current is None and never.profile is None and never.valid == frozenset()


def test_the_probe_asks_nix_only_about_a_path_the_host_does_not_run(tmp_path: Path) -> None:
    """The probe under a real sh, with `readlink` saying the host runs /nix/store/a-x and a
    `nix-store` that logs its calls: the running path is valid without asking Nix (a redeploy
    of what is there starts no Nix process on the host), another one is asked about."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "readlink").write_text("#!/bin/sh\necho /nix/store/a-x\n")
    (stubs / "nix-store").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/asked\n[ \"$2\" = /nix/store/b-y ]\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    script = remote.probe_script(["/nix/store/a-x", "/nix/store/b-y", "/nix/store/c-z"])
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                         env={"PATH": f"{stubs}:/usr/bin:/bin"}).stdout
    found = remote.parse_probe(out, ["/nix/store/a-x", "/nix/store/b-y", "/nix/store/c-z"])
    assert found.current == "/nix/store/a-x" and found.valid == {"/nix/store/a-x", "/nix/store/b-y"}
    assert (tmp_path / "asked").read_text().split("\n")[:2] == ["--check-validity /nix/store/b-y",
                                                               "--check-validity /nix/store/c-z"]


def test_error_headline_prefers_what_ssh_said() -> None:
    stderr = ("@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n"
              "error: cannot connect to 'www-2'\n")
    assert headline(stderr) == "error: cannot connect to 'www-2' (Host key verification failed.)"
    assert headline("boom\n\n") == "boom"
    err = ProcessError(["nix", "copy"], 1, stderr)
    assert str(err) == "nix exited 1: error: cannot connect to 'www-2' (Host key verification failed.)"


def test_max_failures_takes_a_number_or_a_percentage() -> None:
    assert options.max_failures(None, 50) is None
    assert options.max_failures("3", 50) == 3
    assert options.max_failures("10%", 50) == 5
    assert options.max_failures("0%", 50) == 0
    for bad in ("-1", "101%", "x", "5%%"):
        with pytest.raises(InputError):
            options.max_failures(bad, 50)


def test_steps_parse() -> None:
    assert Step.parse_list("build,push") == {Step.BUILD, Step.PUSH}
    assert Step.parse_list("") == frozenset()


@pytest.mark.parametrize(("argv", "message"), [
    (["deploy", "--no", "bild"], "--no: unknown step 'bild' (steps: build, push, activate)"),
    (["deploy", "--max-failures", "x%"], "--max-failures 'x%'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["build", "--frob"], "unrecognized arguments: --frob"),
    (["build", "-I", "nixpkgs"], "-I 'nixpkgs': expected NAME=PATH"),
    (["deploy", "--report", "/nonexistent-dir/r.json"], "--report /nonexistent-dir/r.json: cannot write there"),
    (["deploy", "nope"], "pattern 'nope' matches no instance, system or tag of hive.nix"),
    (["ssh", "nope"], "'nope' is not an instance of hive.nix"),
    (["run", "i"], "run: no command given"),
    (["deploy", ""], "empty pattern in ''"),
    (["build", "--state", "/tmp"], "state file /tmp is a directory"),
    (["deploy", "-j", "0"], "-j/--jobs '0': expected a whole number of at least 1"),
    (["deploy", "-j", "-5", "i"], "-j/--jobs '-5': expected a whole number of at least 1"),
    (["status", "--jobs", "many"], "-j/--jobs 'many': expected a whole number of at least 1"),
    (["run", "-j", "0", "i", "--", "true"], "-j/--jobs '0': expected a whole number of at least 1"),
    (["deploy", "--goal", "reboot"], "argument --goal: invalid choice: 'reboot'"),
    (["deploy", "--report", "/tmp", "i"], "--report /tmp: cannot write there"),
])
def test_bad_options_exit_2_with_one_line(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hive.nix").write_text('{ systems.s.configuration = {}; instances.i.system = "s"; }')
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / ".hive.state").exists()


@pytest.mark.parametrize("jobs", [1, 4])
def test_systems_sharing_paths_are_built_by_one_nix_build(jobs: int, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Through doit itself (the real task runner, serial and threaded), with Nix faked: a
    group's `nix-build` task is a doit setup task of its systems' builds; its systems are
    evaluated one by one and built by one call."""
    built: list[list[str]] = []

    def fake_instantiate(source: Any, directory: Path, system: str, paths: Any) -> str:
        return f"/nix/store/{system}.drv"

    def fake_realise(drvs: Sequence[str], **_: Any) -> list[str]:
        systems = [d.removeprefix("/nix/store/").removesuffix(".drv") for d in drvs]
        built.append(systems)
        if "broken" in systems:
            raise ProcessError(["nix-store"], 1, "error: broken is broken")
        return [f"/nix/store/{s}" for s in systems]

    monkeypatch.setattr(nix, "instantiate", fake_instantiate)
    monkeypatch.setattr(nix, "realise", fake_realise)
    monkeypatch.setattr(nix, "add_root", lambda path, link: None)
    shared = frozen_map({"nixpkgs": "/src/a"})
    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=shared,
             systems={"a": System("a", shared), "b": System("b", shared), "broken": System("broken", shared),
                      "c": System("c", frozen_map({"nixpkgs": "/src/other"}))},
             instances={n: Instance(n, n) for n in ("a", "b", "broken", "c")})
    the_plan = plan.make_plan(h, [tuple(h.instances.values())], build_only=True)
    session = Session(h, the_plan, Options(state_file=tmp_path / "state", jobs=jobs), progress=Progress(quiet=True))
    code = tasks.run(session, tasks.namespace(session), [f"build:{s}" for s in the_plan.systems])
    assert code != 0  # broken failed
    groups = sorted(sorted(g) for g in built)
    # one call for the group of a, b and broken; it failed, so each was built alone; c apart
    assert groups == [["a"], ["a", "b", "broken"], ["b"], ["broken"], ["c"]]
    assert session.results == {"a": "/nix/store/a", "b": "/nix/store/b", "c": "/nix/store/c"}
    assert [str(t) for t in session.outcomes.failed()] == ["build:broken"]
    assert session.outcomes.status(plan.TaskId(plan.Kind.BUILD, "a")) is Status.OK


def test_hosts_are_asked_at_once_even_when_their_system_is_known_late(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """doit asks its questions one at a time: every host not asked yet is asked at once, as
    soon as one of them is (it asked 300 hosts in turn when a second system's result came
    after the first question)."""
    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(),
             systems={"edge": System("edge", frozen_map()), "node": System("node", frozen_map())},
             instances={"relay": Instance("relay", "edge"),
                        **{f"h{k}": Instance(f"h{k}", "node", store="ssh://relay") for k in range(5)}})
    session = Session(h, plan.make_plan(h, [tuple(h.instances.values())]), Options(state_file=tmp_path / "state"),
                      progress=Progress(quiet=True))
    batches: list[list[str]] = []

    def probe_all(wanted: dict[str, frozenset[str]]) -> dict[str, remote.Probe]:
        batches.append(sorted(wanted))
        return {}

    monkeypatch.setattr(session.remotes, "probe_all", probe_all)
    monkeypatch.setattr(remote.Remote, "probe", lambda self, paths: remote.Probe(reachable=True))
    session.results["edge"] = "/nix/store/e"
    session.probe("relay")
    session.results["node"] = "/nix/store/n"
    for k in range(5):
        session.probe(f"h{k}")
    session.probe("relay")
    assert batches == [["relay"], [f"h{k}" for k in range(5)]]
    session.close()


def test_a_signing_key_others_can_read_gets_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = tmp_path / "hive.sec", tmp_path / "hive.pub"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "t", str(key), str(pub)], check=True)
    key.chmod(0o600)
    checks.signing_key("hive.nix", key)
    assert capsys.readouterr().err == ""
    key.chmod(0o644)
    checks.signing_key("hive.nix", key)
    warning = f"warning: hive.nix: signingKey: {key} is readable by other users (chmod 600 {key})\n"
    assert capsys.readouterr().err == warning
    with pytest.raises(DeploymentError, match="is a public key"):
        checks.signing_key("hive.nix", pub)


def test_an_unwritable_state_file_is_refused_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """As root every file is writable, so the check is exercised with os.access faked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hive.nix").write_text('{ systems.s.configuration = {}; instances.i.system = "s"; }')
    state = tmp_path / ".hive.state"
    state.write_text("")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == state else real(p, mode))
    assert cli.main(["build", "--no", "build"]) == 2
    assert capsys.readouterr().err == f"error: cannot write the state file {state} (choose another with --state FILE)\n"


def test_the_summary_counts_an_activations_phases_once() -> None:
    row = report.Row("w", "s", "/nix/store/p", "rolled back", "why",
                     {"build": 1.0, "push": 2.0, "activate": 3.0, "check": 0.5, "rollback": 1.5, "post-keys": 0.1})
    assert report.total_seconds(row.seconds) == 6.0
    assert report.total_seconds({"rollback": 2.0}) == 2.0  # `nix-hive rollback`: its own step
    assert "  6.0  " in report.summary_table([row])


def test_copies_from_a_build_host_go_host_to_host_or_carry_references_only(calls: Calls, tmp_path: Path) -> None:
    """Where each copy of a closure built on a build host runs (argv only: the lab tests of
    build hosts prove the copies themselves)."""
    from hive.push import Pushes

    web = System("web", frozen_map(), build_host="builder")
    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(), systems={"web": web},
             instances={"w1": Instance("w1", "web", store="ssh://portico")})
    the_plan = plan.make_plan(h, [tuple(h.instances.values())])
    session = Session(h, the_plan, Options(state_file=tmp_path / "state"), progress=Progress(quiet=True))
    session.results["web"] = "/nix/store/p-web"
    pushes = Pushes(session)
    try:
        # the build host's own store: nothing to copy
        assert pushes._copy("builder", "ssh://builder", ["/nix/store/p-web"], substitute=False) == (
            "(built there by build host builder)")
        assert calls.argv == []
        # an instance behind a relay: from the build host through here, substituting from the relay
        pushes._copy("builder", "ssh://w1", ["/nix/store/p-web"], substitute=True, relayed=True)
        assert calls.argv[-1][3:] == ["copy", "--from", "ssh-ng://builder", "--to", "ssh://w1",
                                      "--substitute-on-destination", "/nix/store/p-web"]
        # a store on this machine: through here
        pushes._copy("builder", "file:///srv/cache", ["/nix/store/p-web"], substitute=False)
        assert calls.argv[-1][3:7] == ["copy", "--from", "ssh-ng://builder", "--to"]
        # another host's store, or the builder's binary cache directory: the build host copies
        for to in ("ssh://portico", "ssh://builder?remote-store=file:///srv/c"):
            assert pushes._copy("builder", to, ["/nix/store/p-web"], substitute=False) == "(from build host builder)"
            argv = calls.argv[-1]
            assert argv[0] == "ssh" and argv[-2] == "builder"
            [shell, flag, script] = shlex.split(argv[-1])
            assert (shell, flag) == ("sh", "-c")
            assert shlex.split(script) == [*nix.NIX, "copy", "--to", to, "/nix/store/p-web"]
    finally:
        session.remotes.close()


def test_an_ssh_ng_relay_takes_the_closure_without_checking_its_signatures(calls: Calls, tmp_path: Path) -> None:
    """An ssh-ng:// relay's nix-daemon would check the signatures against its own trusted keys
    (an ssh:// one never does): it is copied to with --no-check-sigs; other stores are not."""
    from hive.push import Pushes

    web = System("web", frozen_map())
    instances = {"w1": Instance("w1", "web", store="ssh-ng://portico"), "w2": Instance("w2", "web", store="ssh://portico")}
    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(), systems={"web": web},
             instances=instances)
    the_plan = plan.make_plan(h, [tuple(h.instances.values())])
    session = Session(h, the_plan, Options(state_file=tmp_path / "state"), progress=Progress(quiet=True))
    session.results["web"] = "/nix/store/p-web"
    pushes = Pushes(session)
    try:
        for url, extra in (("ssh-ng://portico", ["--no-check-sigs"]), ("ssh://portico", [])):
            pushes.relay(plan.Relay(url, ("web",)))
            assert calls.argv[-1][3:] == ["copy", "--to", url, *extra, "/nix/store/p-web"]
    finally:
        session.remotes.close()


def test_host_scripts_are_sent_without_comments_and_still_parse(tmp_path: Path) -> None:
    """What goes to every host, once or twice per host: the scripts without comment and blank
    lines, which `sh -n` and shellcheck still accept; none has a here-document whose lines the
    stripping could touch."""
    for name in ("control.sh", "activate.sh", "elevate.sh", "reboot.sh", "rollback.sh", "keys.sh", "diff.sh"):
        full = resources.host_file(name).read_text()
        sent = resources.host_script(name)
        assert len(sent) < 0.8 * len(full) and sent.startswith("#!/bin/sh\n")
        assert not [ln for ln in sent.splitlines()[1:] if ln.lstrip().startswith("#") or not ln.strip()]
        for here in re.finditer(r"<<-?\s*'?(\w+)'?\n(.*?)\n\s*\1\n", full, re.S):
            assert not [ln for ln in here.group(2).splitlines() if ln.lstrip().startswith("#")], name
        (tmp_path / name).write_text(sent)
        assert subprocess.run(["sh", "-n", str(tmp_path / name)]).returncode == 0, name


def test_a_rollback_is_sent_with_its_values_as_arguments_nothing_spliced(tmp_path: Path) -> None:
    """hive/host/rollback.sh behind elevate.sh, as the ssh user; the profile, whether it moves
    and the goal are its $1 $2 $3."""
    setup = ssh.prepare(hive(w=Instance("w", "s")), tmp_path)
    w = remote.Remote(setup, "w")
    for goal, moves in ((Goal.SWITCH, "1"), (Goal.BOOT, "1"), (Goal.TEST, "0"), (Goal.DRY_ACTIVATE, "0")):
        argv = fleet.rollback_argv(w, goal, 38)
        assert argv[:-1] == ["ssh", "-F", str(setup.config_for("w")), "--", "w"]
        words = shlex.split(argv[-1])
        assert words[:2] == ["sh", "-c"] and words[2] == w.root_script(resources.host_script("rollback.sh"))
        assert words[3:7] == ["sh", "/nix/var/nix/profiles/system", moves, goal.value]
        assert re.fullmatch(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}", words[7]) and words[8:] == ["38"]  # ID, lock wait
    sent = resources.host_script("rollback.sh")
    assert "@" not in sent and "/nix/var/nix/profiles/system" not in sent  # no template, no value


def test_a_rollback_to_a_system_that_is_gone_leaves_the_profile(tmp_path: Path) -> None:
    """rollback.sh itself (here, on a profile of its own): generation 1's system is no longer
    in the store, so it exits 4 with one line and never calls `as_root`."""
    profile = tmp_path / "system"
    gone = "/nix/store/00000000000000000000000000000000-nixos-system-gone"
    (tmp_path / "system-1-link").symlink_to(gone)
    (tmp_path / "system-2-link").symlink_to(tmp_path)
    profile.symlink_to("system-2-link")
    script = "as_root() { echo as_root \"$@\" >&2; }\n" + resources.host_script("rollback.sh")
    os.makedirs("/run/nix-hive", exist_ok=True)  # the host lock's directory (this machine as the host)
    out = subprocess.run(["sh", "-c", script, "sh", str(profile), "1", "switch", "20990101-000000-00000000", "5"],
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (4, "")
    assert out.stderr == f"generation 1 ({gone}) is not a runnable system: {gone} is no longer in the host's store\n"
    assert os.readlink(profile) == "system-2-link"
    assert fleet._why(ProcessError(["ssh"], 4, "Warning: a host key\n" + out.stderr)) == out.stderr.strip()


def test_the_check_before_a_profile_moves_is_one_function_every_host_script_gets() -> None:
    """activate.sh, reboot.sh and rollback.sh each go to hosts alone: each sources
    runnable.sh beside it, and the text nix-hive sends has that file's function in its place."""
    function = resources.host_script("runnable.sh").split("\n", 1)[1]
    for name in ("activate.sh", "reboot.sh", "rollback.sh"):
        assert '. "$(dirname "$0")/runnable.sh"' in resources.host_file(name).read_text().splitlines(), name
        sent = resources.host_script(name)
        assert function in sent and "runnable.sh" not in sent and sent.count("not_runnable() {") == 1, name


def test_a_copy_that_nix_garbled_with_its_started_word_is_tried_again_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """NixOS/nix#14132 (seen with Nix 2.34 in the matrix): ssh's `started` in the protocol
    stream; the copy is tried once more without shared connections. Other failures are not."""
    envs: list[dict[str, str]] = []

    def garbled(argv: Sequence[str], *, env: Any = None, **_: Any) -> process.Result:
        envs.append(dict(env))
        if len(envs) == 1:
            raise ProcessError(list(argv), 1, "error: 'nix-store --serve' protocol mismatch from 'www-1', "
                                              "got 'started\n\x00RT'")
        return process.Result(stdout="", stderr="", exit_code=0)

    monkeypatch.setattr(process, "run", garbled)
    nix.copy("ssh://www-1", ["/nix/store/p"], substitute=True, env={"NIX_SSHOPTS": "-F /c"})
    assert [e["NIX_SSHOPTS"] for e in envs] == ["-F /c", "-F /c -o ControlMaster=no -o ControlPath=none"]

    def refused(argv: Sequence[str], *, env: Any = None, **_: Any) -> process.Result:
        envs.append(dict(env))
        raise ProcessError(list(argv), 1, "error: cannot add path: signature required")

    # the same for every Nix call that reaches a store over ssh, unchecked ones too
    envs.clear()

    def garbled_unchecked(argv: Sequence[str], *, env: Any = None, **_: Any) -> process.Result:
        envs.append(dict(env))
        if len(envs) == 1:
            return process.Result(stdout="", stderr="error: protocol mismatch, got 'started\n'", exit_code=1)
        return process.Result(stdout="", stderr="error: path '/nix/store/p' is not valid", exit_code=1)

    monkeypatch.setattr(process, "run", garbled_unchecked)
    assert nix.remote_missing("ssh-ng://www-1", ["/nix/store/p"], env={"NIX_SSHOPTS": "-F /c"}) == {"/nix/store/p"}
    assert [e["NIX_SSHOPTS"] for e in envs] == ["-F /c", "-F /c -o ControlMaster=no -o ControlPath=none"]

    envs.clear()
    monkeypatch.setattr(process, "run", refused)
    with pytest.raises(ProcessError):
        nix.copy("ssh://www-1", ["/nix/store/p"], substitute=True, env={"NIX_SSHOPTS": "-F /c"})
    assert len(envs) == 1


def test_a_window_that_passed_while_the_host_was_silent_says_so() -> None:
    """A rollback for want of a confirmation blames the new system only when nix-hive heard the
    host all along; after a silence, it says what it saw (issue 27)."""
    from hive.activate import Activation

    seen = Activation.__new__(Activation)
    seen.confirm_timeout, seen.failure, seen._unheard, seen.sent_after = 8, None, "", None
    assert seen._why("not-confirmed") == "no confirmation within 8 s (did the new system cut ssh access?)"
    seen.sent_after = 6.4  # sent, over a login that worked: the host took it too late (a loaded lab, issue 29)
    assert seen._why("not-confirmed") == (
        "no confirmation within 8 s: nix-hive sent it 6 s after the window opened, and the new login or the host "
        "took it too late (the host, its sshd, the network or the deployer was slow; a longer --confirm-timeout, or "
        "fewer at once: -j, --push-jobs)")
    seen.sent_after = None
    seen._unheard = "nix-hive heard nothing from the host for 18 s (last state: activating)"
    assert seen._why("not-confirmed") == (
        "no confirmation within 8 s: nix-hive heard nothing from the host for 18 s (last state: activating), and "
        "the window passed before nix-hive could confirm (the network or the host stalled)")
    seen.failure = "check http failed: 503"
    assert seen._why("not-confirmed") == "check http failed: 503"
