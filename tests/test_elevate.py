"""Deploying as a user who is not root (hive/elevate.py, hive/host/elevate.sh): `--elevate
sudo|run0|none` and `--ask-sudo-password`. Lab tests use the lab's `deploy` user with a real
password, real sudo (which asks for it), and signed paths without `trusted-users`."""

from __future__ import annotations

import json
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from hive import elevate, evaluate, remote
from hive.errors import InputError
from tests.conftest import REPO, needs_lab
from tests.constants import STANDIN
from tests.fleet import Fleet
from tests.test_reboot import HOLD_SHUTDOWN

SOURCE = REPO / "tests" / "hives" / "elevate"
TOPOLOGY = {"portico": ["pub", "int"], "www-1": ["int"]}
# spaces, quotes, a backslash and a dollar: the password goes through no shell's parsing
PASSWORD = "s3cret $HOME 'q\" \\n-" + os.urandom(6).hex()
Start = Callable[..., Fleet]


# ------------------------------------------------------------------ without a lab

def test_a_password_is_never_shown_and_goes_first_on_standard_input() -> None:
    pw = elevate.Password("hunter2")
    assert "hunter2" not in repr(pw) and "hunter2" not in str(pw) and "hunter2" not in f"{[pw]}"
    with pytest.raises(TypeError):
        __import__("pickle").dumps(pw)
    script = remote.as_root([["tee", "/run/x"]], elevate.Method.SUDO, pw)
    assert "hunter2" not in script and "\nelevate sudo-password\n" in script
    assert "\nelevate sudo\n" in remote.as_root([["true"]])  # the default: sudo -n
    with pytest.raises(InputError, match="expected one of sudo, run0, none"):
        elevate.Method.parse("doas")


def test_elevate_is_taken_from_the_most_specific_level_and_checked() -> None:
    systems = {"s": {"configuration": "set", "elevate": "sudo"}, "t": {"configuration": "set"}}
    raw = {"elevate": "run0", "systems": systems,
           "instances": {"a": {"system": "s"}, "b": {"system": "s", "elevate": "none"}, "c": {"system": "t"}}}
    evaluate.validate(raw, "hive.nix")
    hive = evaluate.build_model(raw, Path("/x/hive.nix"), "hive.nix")
    assert [hive.instances[n].elevate for n in "abc"] == ["sudo", "none", "run0"]
    assert {i.elevate for i in elevate.apply(hive, "run0", False, None).instances.values()} == {"run0"}
    with pytest.raises(InputError, match="--ask-sudo-password: instance b elevates with none, not sudo"):
        elevate.apply(hive, None, True, None)
    with pytest.raises(InputError, match=r"instances\.b\.elevate"):
        evaluate.validate({**raw, "instances": {"b": {"system": "s", "elevate": "doas"}}}, "hive.nix")


def test_a_password_file_must_be_private(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("hunter2\nignored\n")
    f.chmod(0o640)
    with pytest.raises(InputError, match=r"readable by others \(mode 0640\): chmod 600"):
        elevate.read_file(str(f))
    f.chmod(0o600)
    assert elevate.read_file(str(f)).line() == "hunter2\n"
    f.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        elevate.read_file(str(f))


def test_a_password_file_is_read_no_further_than_its_first_line(tmp_path: Path) -> None:
    """A 1 GB password file (sparse: no disk) is not read whole: its first line alone, at most
    PASSWORD_BYTES of it; a longer first line is refused in one line."""
    big = tmp_path / "pw"
    with big.open("wb") as fh:
        fh.write(b"hunter2\r\n")
        fh.truncate(1 << 30)
    big.chmod(0o600)
    zeros = tmp_path / "zeros"
    with zeros.open("wb") as fh:
        fh.truncate(1 << 30)
    zeros.chmod(0o600)
    tracemalloc.start()
    try:
        assert elevate.read_file(str(big)).line() == "hunter2\n"
        with pytest.raises(InputError) as caught:
            elevate.read_file(str(zeros))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024, f"{peak:,} bytes"
    assert str(caught.value) == (f"--sudo-password-file {zeros}: its first line is longer than 4096 bytes: "
                                 "not a password")
    edge = tmp_path / "edge"
    edge.write_bytes(b"x" * elevate.PASSWORD_BYTES + b"\nrest")
    edge.chmod(0o600)
    assert elevate.read_file(str(edge)).line() == "x" * elevate.PASSWORD_BYTES + "\n"
    edge.write_bytes(b"x" * (elevate.PASSWORD_BYTES + 1))
    with pytest.raises(InputError, match="longer than 4096 bytes"):
        elevate.read_file(str(edge))
    edge.write_bytes(b"\xff\xfe\n")
    with pytest.raises(InputError, match="not text"):
        elevate.read_file(str(edge))


def test_refusals_are_one_clear_line() -> None:
    said = "Sorry, try again.\nsudo: no password was provided\nsudo: 1 incorrect password attempt\n"
    assert elevate.refusal(92, said) == "sudo refused the password (tried once, not again)"
    assert elevate.refusal(90, "") == "elevate none: the ssh user is not root"
    denied = "Failed to start transient service unit: Access denied\n"
    assert (elevate.refusal(1, denied) or "").startswith("run0 was refused: polkit")
    assert elevate.refusal(1, "cp: cannot stat") is None


# ------------------------------------------------------------------ lab

def prepare(fleet: Fleet, sudoers: str) -> None:
    """Give the deploy user PASSWORD and `sudoers`, and take it out of trusted-users: it adds
    only paths signed by a key the host trusts."""
    pub = (fleet.hive / "secrets" / "hive.pub").read_text().strip()
    for host in fleet.lab.hosts:
        fleet.lab.run(host, ["sh", "-c", 'h=$(openssl passwd -6 -stdin) && awk -v h="$h" -F: -v OFS=: '
                             "'$1 == \"deploy\" { $2 = h } 1' /etc/shadow > /root/shadow && "
                             "cat /root/shadow > /etc/shadow && rm /root/shadow"], input=PASSWORD + "\n")
        fleet.lab.run(host, ["sh", "-c", 'cat > /etc/sudoers.d/lab-deploy && chmod 440 /etc/sudoers.d/lab-deploy'],
                      input=sudoers)
        conf = [ln for ln in (fleet.lab.read(host, "/etc/nix/nix.conf") or "").splitlines()
                if not ln.startswith(("trusted-users", "trusted-public-keys"))]
        conf += ["trusted-users = root", f"trusted-public-keys = {pub}"]
        fleet.lab.run(host, ["sh", "-c", "cat > /etc/nix/nix.conf && systemctl stop nix-daemon.service"],
                      input="\n".join(conf) + "\n")


def on_a_terminal(fleet: Fleet, *args: str, answer: str) -> tuple[int, str, str]:
    """`nix-hive ARGS` with a pseudo-terminal as its controlling terminal, answering its
    password prompt with `answer`; its output is read from pipes (the terminal carries the prompt)."""
    code, out, err, _ = fleet.answered(*args, prompt=b"password", answer=answer)
    return code, out, err


class Watch:
    """Every process's argv and environment, looked at again and again while a run lasts."""

    def __init__(self, needle: bytes) -> None:
        self.needle, self.looks = needle, 0
        self.found: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            self.looks += 1
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{what}").read_bytes()
                    except OSError:
                        continue
                    if self.needle in data:
                        self.found.append(f"{pid} {what}: {data[:200]!r}")
            time.sleep(0.02)

    def stop(self) -> list[str]:
        self.done.set()
        self.thread.join()
        return self.found


def files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            pass
    return found


def rows(out: str) -> dict[str, dict[str, object]]:
    return {r["instance"]: r for r in json.loads(out)["instances"]}


@needs_lab
def test_a_sudo_password_deploys_and_is_found_nowhere_and_a_wrong_one_is_tried_once(
        fleet_factory: Start, tmp_path: Path) -> None:
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, user="deploy")
    prepare(fleet, "deploy ALL=(ALL) ALL\n")  # sudo asks this user's password, for everything
    fleet.env["ELEVATE_TOKEN"] = "token-1"
    base = ("-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    report = tmp_path / "report.json"

    # without the password: sudo -n is refused, one clear line per host, nothing switched
    refused = fleet.run("deploy", "--json", *base)
    assert refused.returncode == 1, refused.stderr
    for row in rows(refused.stdout).values():
        assert "sudo wants a password (--ask-sudo-password)" in str(row["reason"]), row

    watch = Watch(PASSWORD.encode())
    code, out, err = on_a_terminal(fleet, "deploy", "-S", "-v", "--json", "--report", str(report), *base,
                                   answer=PASSWORD)
    found = watch.stop()
    assert code == 0, err
    assert all(r["outcome"] == "ok" for r in rows(out).values()), out
    assert watch.looks > 10 and found == [], found  # no process's argv or environment held it
    needle = PASSWORD.encode()
    assert needle not in out.encode() and needle not in err.encode() and "$ ssh" in err  # -v printed commands
    assert files_holding(tmp_path, needle) == []  # report, state file, generated ssh files, lab records
    for host in TOPOLOGY:
        journal = fleet.lab.run(host, ["journalctl", "--no-pager", "-q", "-o", "cat"]).stdout
        assert "COMMAND=" in journal and PASSWORD not in journal, host  # sudo logged its commands, not it
        held = fleet.lab.run(host, ["grep", "-rlF", "-f", "-", "/run", "/tmp", "/var/tmp", "/home", "/root", "/etc"],
                             input=PASSWORD + "\n", check=False)
        assert held.stdout == "", held.stdout
    assert fleet.lab.read("www-1", "/run/keys/token") == "token-1"
    assert len(fleet.lab.activations("www-1")) == 1 and len(fleet.lab.activations("portico")) == 1

    # a wrong password, from a private file: each host says so once, tries it once, switches nothing
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + PASSWORD + "\n")
    wrong.chmod(0o600)
    fleet.env["ELEVATE_VARIANT"] = "v2"
    bad = fleet.run("deploy", "--json", "--sudo-password-file", str(wrong), *base)
    assert bad.returncode == 1, bad.stderr
    for host, row in rows(bad.stdout).items():
        assert "sudo refused the password" in str(row["reason"]), row
        failures = fleet.lab.run(host, ["journalctl", "--no-pager", "-q", "-o", "cat"]).stdout
        assert failures.count("incorrect password attempt") == 1, host  # one attempt: no lockout
    assert len(fleet.lab.activations("www-1")) == 1 and len(fleet.lab.activations("portico")) == 1

    # -S with --confirm: the password asked first, once; the diff's dry activation (as root,
    # with it), then the question; answered yes, the deploy goes on with the same password
    v1 = fleet.lab.current_system("www-1")
    code, out, err, terminal = fleet.answered("deploy", "-S", "--confirm", "--json", *base, "www-1",
                                              prompt=b"password", answer=PASSWORD,
                                              then=[(b"[y/N]", "y")])
    assert code == 0, err
    assert terminal.count("sudo password") == 1 and "Deploy to 1 host" in terminal, terminal
    summary = json.loads(out)
    assert summary["diff"]["groups"][0]["dryRun"]["error"] == "", summary["diff"]
    assert rows(out)["www-1"]["outcome"] == "ok" and fleet.lab.current_system("www-1") != v1
    assert PASSWORD not in out + err + terminal

    # another system, then `rollback` to the first: both with the password, from a private file
    good = tmp_path / "good"
    good.write_text(PASSWORD + "\n")
    good.chmod(0o600)
    again = fleet.run("deploy", "--json", "--sudo-password-file", str(good), *base, "www-1")
    assert again.returncode == 0, again.stderr
    assert fleet.lab.current_system("www-1") != v1
    fleet.env["ELEVATE_VARIANT"] = "unhealthy"  # a failed check: control.sh abort, with the password
    unhealthy = fleet.run("deploy", "--json", "--sudo-password-file", str(good), *base, "www-1")
    assert rows(unhealthy.stdout)["www-1"]["outcome"] == "rolled back", unhealthy.stdout + unhealthy.stderr
    assert "check up failed" in str(rows(unhealthy.stdout)["www-1"]["reason"])
    sudo_log = fleet.lab.run("www-1", ["journalctl", "--no-pager", "-q", "-o", "cat"]).stdout
    commands = [ln for ln in sudo_log.splitlines() if "COMMAND=" in ln]
    assert any(ln.endswith("/abort") for ln in commands), commands[-8:]  # sudo took it
    back = fleet.run("rollback", "--json", "--sudo-password-file", str(good), *base[:2], "www-1")
    assert back.returncode == 0, back.stdout + back.stderr
    assert fleet.lab.current_system("www-1") == v1

    # the least-privilege rules alone (README): deploy, keys, checks, confirmation, rollback
    where = {cmd: fleet.lab.run("www-1", ["sh", "-c", f"command -v {cmd}"]).stdout.strip()
             for cmd, _ in elevate.RULES if not cmd.startswith("/")}
    for host in TOPOLOGY:
        fleet.lab.run(host, ["sh", "-c", "cat > /etc/sudoers.d/lab-deploy && visudo -cqf /etc/sudoers.d/lab-deploy"],
                      input=elevate.sudoers("deploy", where))
    fleet.env["ELEVATE_VARIANT"] = "v3"
    narrow = fleet.run("deploy", "--json", "--sudo-password-file", str(good), *base)
    assert narrow.returncode == 0, narrow.stdout + narrow.stderr
    assert "v3" in (fleet.lab.current_system("www-1") or "")
    narrowed = fleet.lab.current_system("www-1")
    back = fleet.run("rollback", "--json", "--sudo-password-file", str(good), *base[:2], "www-1")
    assert back.returncode == 0, back.stdout + back.stderr
    assert fleet.lab.current_system("www-1") != narrowed
    denied = fleet.lab.run("www-1", ["sudo", "-S", "-p", "", "sh", "-c", "id"], user="deploy", check=False,
                           input=PASSWORD + "\n")
    assert denied.returncode == 1 and "not allowed" in denied.stderr  # no root shell

    # run0 where polkit has no rule for the deploy user (it asks an administrator's password:
    # refused), and none for a user who is not root
    fleet.env["ELEVATE_VARIANT"] = ""
    run0 = fleet.run("deploy", "--json", "--elevate", "run0", *base)
    assert run0.returncode == 1, run0.stderr
    for row in rows(run0.stdout).values():
        assert "run0 was refused: polkit" in str(row["reason"]), row
    both = fleet.run("deploy", "--elevate", "run0", "--sudo-password-file", str(good), *base)
    assert both.returncode == 2 and "only sudo takes a password" in both.stderr, both.stderr
    fleet.env["HIVE_ELEVATE"] = "none"
    none = fleet.run("deploy", "--json", *base)
    assert none.returncode == 1
    for row in rows(none.stdout).values():
        assert "elevate none: the ssh user is not root" in str(row["reason"]), row


# As a NixOS host's `security.polkit.extraConfig` would say it: RESULT for the deploy user's
# units (run0 starts each command as a transient unit of systemd's)
RUN0_RULE = """polkit.addRule(function(action, subject) {
  if (action.id == "org.freedesktop.systemd1.manage-units" && subject.user == "deploy") {
    return polkit.Result.%s;
  }
});
"""


@needs_lab
def test_run0_deploys_where_polkit_lets_the_deploy_user_and_is_refused_where_it_asks(
        fleet_factory: Start, tmp_path: Path) -> None:
    """`--elevate run0` for real: systemd's run0 and polkitd on the hosts, the deploy user without
    any sudo rule. A polkit rule that lets it manage units (YES): deploy (a key, activation, a
    check), a failed check rolled back, `rollback`, all as root through run0. A rule that asks
    for an administrator's password (AUTH_ADMIN): refused in one line, nothing switched; and a
    password is not taken with run0 (polkit would ask on a terminal these calls do not have)."""
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, user="deploy")
    prepare(fleet, "")  # no sudo at all
    for host in TOPOLOGY:
        fleet.lab.run(host, ["sh", "-c", "cat > /etc/polkit-1/rules.d/50-nix-hive.rules"], input=RUN0_RULE % "YES")
        assert fleet.lab.run(host, ["sudo", "-n", "true"], user="deploy", check=False).returncode == 1
    fleet.env["ELEVATE_TOKEN"] = "token-run0"
    base = ("-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    result = fleet.run("deploy", "--json", "--elevate", "run0", *base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(r["outcome"] == "ok" for r in rows(result.stdout).values()), result.stdout
    v1 = fleet.lab.current_system("www-1")
    for host in TOPOLOGY:
        assert fleet.lab.activations(host)[-1].split()[-1] == "root"  # switch-to-configuration ran as root
    assert fleet.lab.read("www-1", "/run/keys/token") == "token-run0"
    journal = fleet.lab.run("www-1", ["journalctl", "--no-pager", "-q", "-o", "cat"]).stdout
    assert "Started run-" in journal, journal[-2000:]  # run0's transient units

    fleet.env["ELEVATE_VARIANT"] = "v2"
    v2 = fleet.run("deploy", "--json", "--elevate", "run0", *base, "www-1")
    assert v2.returncode == 0 and fleet.lab.current_system("www-1") != v1, v2.stdout + v2.stderr
    on_v2 = fleet.lab.current_system("www-1")
    fleet.env["ELEVATE_VARIANT"] = "unhealthy"  # a failed check: the abort, through run0
    unhealthy = fleet.run("deploy", "--json", "--elevate", "run0", *base, "www-1")
    assert rows(unhealthy.stdout)["www-1"]["outcome"] == "rolled back", unhealthy.stdout + unhealthy.stderr
    assert fleet.lab.current_system("www-1") == on_v2
    back = fleet.run("rollback", "--json", "--elevate", "run0", *base, "www-1")
    assert back.returncode == 0 and fleet.lab.current_system("www-1") == v1, back.stdout + back.stderr

    # polkit asks for a password (auth_admin): run0 --no-ask-password is refused, one line per host
    for host in TOPOLOGY:
        fleet.lab.run(host, ["sh", "-c", "cat > /etc/polkit-1/rules.d/50-nix-hive.rules"],
                      input=RUN0_RULE % "AUTH_ADMIN")
    fleet.env["ELEVATE_VARIANT"] = "v3"
    asks = fleet.run("deploy", "--json", "--elevate", "run0", *base)
    assert asks.returncode == 1, asks.stdout + asks.stderr
    for row in rows(asks.stdout).values():
        assert "run0 was refused: polkit does not let the ssh user" in str(row["reason"]), row
    assert fleet.lab.current_system("www-1") == v1
    good = tmp_path / "good"
    good.write_text(PASSWORD + "\n")
    good.chmod(0o600)
    both = fleet.run("deploy", "--elevate", "run0", "--sudo-password-file", str(good), *base)
    assert both.returncode == 2 and "only sudo takes a password" in both.stderr, both.stderr


@needs_lab
def test_a_reboot_with_a_sudo_password_under_the_narrow_rules_alone(fleet_factory: Start, tmp_path: Path) -> None:
    """`deploy` and `deploy --reboot` as a deploy user whose sudo asks a password (from a file)
    and allows nix-hive's commands alone (`RULES`): keys uploaded (again after the reboot, which
    emptied /run), booted once, checked, kept; no `sh -c` as root."""
    fleet = fleet_factory(topology=TOPOLOGY, source=SOURCE, user="deploy")
    where = {cmd: fleet.lab.run("www-1", ["sh", "-c", f"command -v {cmd}"]).stdout.strip()
             for cmd, _ in elevate.RULES if not cmd.startswith("/")}
    prepare(fleet, elevate.sudoers("deploy", where))
    for host in TOPOLOGY:
        fleet.lab.run(host, ["visudo", "-cqf", "/etc/sudoers.d/lab-deploy"])
    good = tmp_path / "good"
    good.write_text(PASSWORD + "\n")
    good.chmod(0o600)
    fleet.env["ELEVATE_TOKEN"] = "token-narrow"
    base = ("--json", "--sudo-password-file", str(good), "-c", str(fleet.hive), "-I", f"nixpkgs={STANDIN}")
    first = fleet.run("deploy", *base)
    assert first.returncode == 0, first.stdout + first.stderr
    v1 = fleet.lab.current_system("www-1")
    before = len(fleet.lab.boots("www-1"))

    fleet.env["ELEVATE_VARIANT"] = "v2"
    result = fleet.run("deploy", "--reboot", "--reboot-timeout", "60", *base, "www-1")
    row = rows(result.stdout)["www-1"]
    assert result.returncode == 0 and row["outcome"] == "ok", result.stdout + result.stderr
    new = str(row["path"])
    boots = fleet.lab.boots("www-1")
    assert new != v1 and len(boots) == before + 1 and (boots[-1].entry, boots[-1].system) == ("oneshot", new)
    assert fleet.lab.current_system("www-1") == new  # kept after its check: the default entry now
    assert fleet.lab.read("www-1", "/run/keys/token") == "token-narrow"
    assert fleet.lab.run("www-1", ["cat", "/boot/standin/default"]).stdout.strip() == new
    journal = fleet.lab.run("www-1", ["journalctl", "--no-pager", "-q", "-o", "cat"]).stdout
    commands = [ln.split("COMMAND=", 1)[1] for ln in journal.splitlines() if "COMMAND=" in ln]
    for call in ("keys.sh upload", "reboot.sh keep"):  # this boot's journal: after the reboot
        assert [c for c in commands if f"/{call} " in c], (call, commands[-8:])
    assert not [c for c in commands if " -c " in c] and PASSWORD not in journal
    left = fleet.lab.run("www-1", ["sh", "-c", "ls /run/nix-hive/*/keys.sh /run/nix-hive/*/reboot.sh"], check=False)
    assert left.returncode != 0 and left.stdout == "", left.stdout  # each removed itself once started

    # a reboot accepted but not done (a shutdown that hangs): its one-shot entry is cleared under
    # the same rules (`reboot.sh cancel BOOTID`)
    fleet.lab.run("www-1", ["sh", "-c", "cat > /etc/systemd/system/lab-hold.service && systemctl daemon-reload && "
                            "systemctl start lab-hold.service"], input=HOLD_SHUTDOWN)
    fleet.env["ELEVATE_VARIANT"] = "v3"
    result = fleet.run("deploy", "--reboot", "--reboot-timeout", "5", *base, "www-1")
    reason = str(rows(result.stdout)["www-1"]["reason"])
    assert result.returncode == 1 and f"its one-shot entry was cleared, it stays on its last good system {new}" \
        in reason, result.stdout + result.stderr
    assert fleet.lab.read("www-1", "/boot/standin/oneshot") is None
    journal = fleet.lab.run("www-1", ["journalctl", "--no-pager", "-q", "-o", "cat"]).stdout
    assert [ln for ln in journal.splitlines() if "COMMAND=" in ln and "/reboot.sh cancel " in ln]
