"""Activating an instance, safely.

The activation runs on the host as a process of its own that survives the ssh connection
that started it (a transient systemd unit where the host runs systemd, else `setsid`), with
its state, log and exit under /run/nix-hive/<id>/. It points the system profile at the new
system (goals switch and boot), runs `switch-to-configuration GOAL` under `timeout`, and:

- if that fails or times out, puts the host back on the system it ran before (automatic
  rollback: the profile's previous generation, or for `test` the system that was running);
- with magic rollback, waits for a confirmation that nix-hive sends over a *new* ssh
  connection once the health checks passed; without one within `confirmTimeout` seconds (or
  on an abort, when a check failed) it rolls back by itself. A system that stops sshd or
  breaks the network therefore restores itself, with no help from the deployer.

nix-hive follows the state over the host's shared connection (which outlives a stopped sshd:
sshd keeps existing connections), and picks it up again after a dropped connection.

The host lock: one change of a host at a time, whichever run, state file or operator starts
it. It is `flock` on the directory /run/nix-hive itself (a directory, so no cleanup can remove
it while it is held; opened for reading, so a rollback run as the ssh user can hold it too).
Every command that changes what a host runs or boots takes it before it reads what the change
depends on, and holds it until the host's state is final:

- an activation (`deploy`, `push` does not activate; `--rollback-on-failure`'s put-back):
  activate.sh, from before it reads the running system and the profile to the end of the
  confirmation window and of any rollback;
- `nix-hive rollback`: rollback.sh, from before it reads the profile to the end of its switch;
- a reboot (`deploy --reboot`, `nix-hive reboot`): reboot.sh's `start` (reading the profile,
  installing the one-shot entry, asking for the reboot), `keep`, `cancel` and `fall-back`, each
  as a whole (a lock cannot outlive the reboot itself; `nix-hive reboot` has the profile read
  under the lock, never before).

Each waits for it `confirmTimeout` + LOCK_MARGIN seconds (a killed run's activation rolls back
by itself within that), then fails its instance: "another activation is running on it (ID
started by user@host at TIME)". Keys take no lock: each key is replaced whole (rename), and
changes no system. Reads (`status`, the `--no` probe, `check`) take none.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import queue
import re
import secrets
import shlex
import threading
import time
from typing import Any

from hive import elevate, health, process
from hive.errors import HiveError, ProcessError, RolledBackError, StepError, TimedOutError
from hive.model import Goal, Instance, Step
from hive.plan import Kind, TaskId
from hive.process import ProcessKilledError, ProcessTimeoutError
from hive.remote import SYSTEM_PROFILE, Remote
from hive.resources import host_script
from hive.session import Session

STATE_DIR = "/run/nix-hive"
POLL = 0.1  # seconds between looks at the host's state, when its follow channel broke

FINAL = ("done", "confirmed", "rolled-back", "failed-", "timed-out", "busy", "abandoned")
# A second activation of a host waits for the host's lock that long beyond the first one's
# confirmation window: long enough for an activation whose run was killed to roll back by itself.
LOCK_MARGIN = 30
# A host that does not answer for its confirmation window and that long during its activation is
# reported with what it will do by itself, instead of being waited for until the activation's
# own timeout.
UNANSWERED_MARGIN = 10

# What control.sh may hand to systemd-run: systemd expands `$` (and `%` specifiers) in a unit's
# command line, so only words without them, nor white space, go there (a store path does).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9/._+=?:@-]+")


def host_args(path: str, goal: Goal, directory: str, *, timeout: int, rollback: bool, confirm: int,
              lock_wait: int, who: str, ignore_inhibitors: bool = False) -> list[str]:
    """hive/host/activate.sh's arguments for one activation (see that file)."""
    args = [directory, SYSTEM_PROFILE, path, goal.value, str(timeout), str(int(rollback)), str(confirm),
            str(lock_wait), who, str(int(ignore_inhibitors))]
    for arg in args:
        if not _PLAIN_WORD.fullmatch(arg):
            raise HiveError(f"cannot activate {arg!r} safely: a unit's command line would change it")
    return args


def who() -> str:
    """user@host of this deployer, as the host lock's owner line names it (a plain word)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return re.sub(r"[^A-Za-z0-9._@-]", "_", f"{user}@{platform.node() or 'deployer'}")


def control_argv(remote: Remote, what: str, *args: str, fresh: bool = False) -> list[str]:
    """The ssh call running `control.sh WHAT ARGS` on `remote` (see that file): over the host's
    shared connection, or `fresh`, over a new one."""
    script = remote.root_script(host_script("control.sh"))
    return remote.fresh_argv(script, args=[what, *args]) if fresh else remote.shell_argv(script, args=[what, *args])


class Activation:
    """One instance's activation, followed from the deployer."""

    def __init__(self, session: Session, instance: Instance, *, back_to: str | None = None) -> None:
        self.session = session
        self.instance = instance
        # the system to activate: the instance's, or (`back_to`) the one it ran before a run that
        # failed (--rollback-on-failure): no health checks nor keys then, the system ran before
        self.back_to = back_to
        self.remote: Remote = session.remotes[instance.name]
        self.goal = session.options.goal
        self.id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        self.directory = f"{STATE_DIR}/{self.id}"
        options = session.options
        self.timeout = options.activation_timeout or instance.activation_timeout
        self.confirm_timeout = options.confirm_timeout or instance.confirm_timeout
        self.rollback = options.rollback and self.goal is not Goal.DRY_ACTIVATE
        checked = self.goal in (Goal.SWITCH, Goal.TEST)
        self.confirm = self.confirm_timeout if self.rollback and checked else 0
        self.checks = instance.checks if checked and back_to is None else ()
        self.post_keys = session.keys.of(instance.name, post=True) if session.plan.keys and back_to is None else []
        self.lock_wait = self.confirm_timeout + LOCK_MARGIN
        self.unanswered = max(self.confirm_timeout, 10) + UNANSWERED_MARGIN
        self.seconds: dict[str, float] = {}
        self.failure: str | None = None  # why nix-hive had the host roll back (a check, the confirmation)
        self._state = ""  # the host's last word on the activation (its DIR/state)
        self._unheard = ""  # what nix-hive saw when a channel fell silent (said if the window passed)
        self.sent_after: float | None = None  # seconds into the confirmation window nix-hive sent the word
        self._answered = time.monotonic()  # when it came

    def run(self) -> dict[str, Any]:
        path = self.back_to or self.session.need_path(self.instance.system)
        # should the run stop following it (a second Ctrl-C, SIGTERM), what the host does then
        task = TaskId(Kind.ACTIVATE if self.back_to is None else Kind.UNDO, self.instance.name)
        self.session.on_its_own(task, lambda: self._on_its_own(self._state))
        args = host_args(path, self.goal, self.directory, timeout=self.timeout, rollback=self.rollback,
                         confirm=self.confirm, lock_wait=self.lock_wait, who=who(),
                         ignore_inhibitors=self.session.options.ignore_inhibitors)
        self.remote.forget()
        try:
            # one call starts the activation and follows it until it waits for its confirmation
            # or ends; a broken channel (ssh's own failure: the connection may have been cut
            # after the launch) makes nix-hive ask the host what it did, not guess
            seconds = self.lock_wait + self.timeout + 30
            until = ("waiting", *FINAL)
            start = time.monotonic()
            state = self._channel(control_argv(self.remote, "start", self.id, str(seconds), *args), seconds,
                                  input=self.remote.root_input(host_script("activate.sh")))
            if not state.startswith(until):
                state = self._follow(seconds - (time.monotonic() - start), until=until)
            if state == "waiting" or (state == "done" and (self.checks or self.post_keys)):
                state = self._check_and_confirm(state)
            return self._result(state, path)
        finally:
            self.remote.release()

    def _heard(self, line: str) -> None:
        """A line of a control.sh call that follows the activation (`state S`)."""
        if line.startswith("state "):
            self._state, self._answered = line.removeprefix("state "), time.monotonic()

    def _channel(self, argv: list[str], seconds: int, *,
                 input: str | queue.Queue[str | None] | None = None) -> str:
        """Run a control.sh call that follows the activation for at most `seconds`; the last
        state it printed. A channel that breaks (ssh's own failure, or no word from the host
        for `self.unanswered` seconds) is no error: the caller asks again. Any other failure
        is the host's refusal (sudo, a read-only /run): it raises."""
        try:
            process.run(argv, input=input, on_stdout=self._heard, timeout=seconds + 30,
                        idle_timeout=self.unanswered)
        except ProcessTimeoutError as exc:
            if exc.silent:
                self._unheard = (f"nix-hive heard nothing from the host for {self.unanswered} s (last state: "
                                 f"{self._state or 'none'})")
        except ProcessKilledError:
            if self.session.abandoned:  # the run stopped it (a second Ctrl-C, SIGTERM): reported so
                raise
            # nix-hive's own ssh died of a signal (killed by someone): a broken channel like any
            # other; the host goes on by itself, and is followed again
        except ProcessError as exc:
            if exc.returncode != 255:
                refused = elevate.refusal(exc.returncode, exc.stderr)
                if refused is not None:  # one clear line (a wrong password is tried once, never again)
                    raise StepError(refused, log=exc.stderr) from None
                raise
        return self._state

    def _read(self, name: str) -> str | None:
        """A file of the activation's state directory, over the shared connection (None when
        the host cannot be asked right now)."""
        try:
            # the state and log are readable by all (activate.sh's umask): root only if not
            path = shlex.quote(f"{self.directory}/{name}")
            out = process.run(self.remote.shell_argv(self.remote.root_script(
                f"cat {path} 2>/dev/null || as_root cat {path}")), input=self.remote.root_input(),
                check=False, timeout=min(30, self.unanswered / 2))
        except HiveError:
            return None
        return out.stdout.strip() if out.exit_code == 0 else None

    def _follow(self, seconds: float, *, until: tuple[str, ...]) -> str:
        """Ask the host for its state again and again (after a broken channel) until it reaches
        one of `until` (prefixes), for at most `seconds`; a host that has not answered for
        `self.unanswered` seconds is reported with what it will do by itself."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            read = self._read("state")
            now = time.monotonic()
            if read is not None:
                self._state, self._answered = read, now
                if read.startswith(until):
                    return read
            else:
                self._unheard = (f"nix-hive could not reach the host for {now - self._answered:.0f} s (last state: "
                                 f"{self._state or 'none'})")
            if read is None and now - self._answered > self.unanswered:
                raise TimedOutError(f"the host did not answer for {self.unanswered} s (last state: "
                                    f"{self._state or 'unknown'}); its state is unknown: "
                                    f"{self._on_its_own(self._state)}", seconds=self.seconds)
            time.sleep(POLL)
        raise TimedOutError(f"activation timed out after {self.timeout} s (state: {self._state or '?'})")

    def _on_its_own(self, state: str) -> str:
        """What the host does without nix-hive, from the last state it reported."""
        if state.startswith(FINAL):
            return f"it had ended ({state})"
        ends = (f"it rolls back by itself unless a confirmation comes within {self.confirm_timeout} s"
                if self.confirm else
                "it keeps the new system, or rolls back by itself if the activation fails" if self.rollback else
                "it keeps whatever the activation leaves")
        if state == "waiting":
            return ends
        started = "" if state else "if the activation started, "
        return f"{started}it finishes the activation (at most {self.timeout} s), then {ends.removeprefix('it ')}"

    def _check_and_confirm(self, state: str) -> str:
        """Post-activation keys, then the health checks; then the confirmation (or the abort
        that makes the host roll back). The confirmation goes over a new connection (proof that
        the new system still lets nix-hive in), opened while the keys and checks run: it
        confirms the moment they pass, and follows the host to its end."""
        confirming = _Confirmation(self) if state == "waiting" else None
        try:
            failed = self._check()
        except BaseException:
            if confirming is not None:
                confirming.cancel()
            raise
        if state == "done":  # no magic rollback: a failed check fails the instance, no more
            if failed is not None:
                raise StepError(failed, seconds=self.seconds)
            return state
        assert confirming is not None
        start = time.monotonic()
        if failed is None:
            failed = confirming.confirm()
        else:
            confirming.cancel()
            seconds = self.timeout + 30  # the host switches back to the previous system
            with contextlib.suppress(HiveError):  # asked again below
                self._channel(control_argv(self.remote, "abort", self.directory, str(seconds), "check-failed"),
                              seconds, input=self.remote.root_input())
        final = self._state if self._state.startswith(FINAL) else self._follow(
            self.confirm_timeout + self.timeout + 30, until=FINAL)
        # after a failed check: the time the host took to roll back; else the confirmation's
        self.seconds["rollback" if failed is not None else "confirm"] = round(time.monotonic() - start, 2)
        self.failure = failed
        return final

    def _check(self) -> str | None:
        """Post-activation keys, then the health checks: why they failed, or None."""
        failed = None
        if self.post_keys:
            start = time.monotonic()
            try:
                self.session.keys.upload(self.remote, self.post_keys, only_changed=False)
            except StepError as exc:
                failed = str(exc)
            self.seconds["post-keys"] = round(time.monotonic() - start, 2)
        start = time.monotonic()
        for check in self.checks if failed is None else ():
            result = health.run(self.remote, check)
            if not result.healthy:
                failed = f"check {check.name} failed: {result.detail}"
                break
        self.seconds["check"] = round(time.monotonic() - start, 2)
        return failed

    def _result(self, state: str, path: str) -> dict[str, Any]:
        word, _, why = state.partition(" ")
        if word in ("done", "confirmed"):
            if self.goal is Goal.DRY_ACTIVATE:  # what it would do is what it printed
                return {"path": path, "seconds": self.seconds, "log": self._read("log") or ""}
            return {"path": path, "seconds": self.seconds}
        if word == "busy":  # the host lock: another activation holds it, the host was not touched
            raise StepError(f"another activation is running on it ({why}); waited {self.lock_wait} s",
                            seconds=self.seconds)
        if word == "failed-inhibited":  # NixOS's pre-switch check would refuse it: nothing changed
            raise StepError(f"not switched: switch inhibitors changed ({why}); the host is as it was: boot it "
                            "(--reboot, or --reboot=auto), or switch anyway (--ignore-inhibitors)",
                            log=self._read("log") or "", seconds=self.seconds)
        if word == "failed-target":  # the new system is none the host can run: nothing changed
            raise StepError(f"not activated: {why} (the host and its profile are as they were)",
                            log=self._read("log") or "", seconds=self.seconds)
        if word == "failed-gone":  # no rollback: the previous system is none the host can run
            code, _, gone = why.partition(" ")
            raise StepError(f"{self._why(code)}; cannot roll back: the previous system {gone} (the profile "
                            "stays on the new system)", log=self._read("log") or "", seconds=self.seconds)
        reason = self._why(why if word != "timed-out" else "timed-out")
        log = self._read("log") or ""
        if word == "rolled-back":  # the outcome says "rolled back": the reason says why, once
            raise RolledBackError(reason, log=log, seconds=self.seconds)
        if word == "timed-out":
            raise TimedOutError(reason, log=log, seconds=self.seconds)
        if word == "failed-no-previous":
            raise StepError(f"{reason}; no previous system to roll back to", log=log, seconds=self.seconds)
        if word.startswith("failed-") and word[7:].isdigit():
            raise StepError(f"activation failed (exit {word[7:]})", log=log, seconds=self.seconds)
        if word == "failed-rollback":
            raise StepError(f"{reason}; the rollback to the previous system failed too", log=log, seconds=self.seconds)
        raise StepError(f"{word} ({reason})" if why else word, log=log, seconds=self.seconds)

    def _why(self, code: str) -> str:
        if code == "timed-out":
            return f"activation timed out after {self.timeout} s"
        if code.startswith("failed-") and code[7:].isdigit():
            return f"activation failed (exit {code[7:]})"
        if code == "not-confirmed":
            if self.failure:
                return self.failure
            if self._unheard:  # not the new system's fault, as far as nix-hive can tell: say what it saw
                return (f"no confirmation within {self.confirm_timeout} s: {self._unheard}, and the window passed "
                        "before nix-hive could confirm (the network or the host stalled)")
            if self.sent_after is not None:  # sent, over a login that worked, and taken too late
                return (f"no confirmation within {self.confirm_timeout} s: nix-hive sent it {self.sent_after:.0f} s "
                        "after the window opened, and the new login or the host took it too late (the host, its "
                        "sshd, the network or the deployer was slow; a longer --confirm-timeout, or fewer at once: "
                        "-j, --push-jobs)")
            return f"no confirmation within {self.confirm_timeout} s (did the new system cut ssh access?)"
        if code == "check-failed":
            return self.failure or "a health check failed"
        return code


class _Confirmation:
    """The confirmation of an activation, over a new ssh connection opened at once: control.sh
    `confirm` waits there for the word on its standard input, confirms, and follows the
    host to its end; end of input without it confirms nothing."""

    def __init__(self, activation: Activation) -> None:
        self.activation = activation
        self.go: queue.Queue[str | None] = queue.Queue()
        password = activation.remote.root_input()
        if password:  # the sudo password's line first (hive/elevate.py), then the word
            self.go.put(str(password))
        self.opened = time.monotonic()  # the host's confirmation window opened about now
        self.error: HiveError | None = None
        # the host rolls back by itself once its window is over: no confirmation is of use after it
        self.seconds = activation.confirm_timeout + 10
        argv = control_argv(activation.remote, "confirm", activation.directory, "30", fresh=True)
        self.thread = threading.Thread(target=self._run, args=(argv,), daemon=True,
                                       name=f"confirm {activation.instance.name}")
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        try:
            process.run(argv, input=self.go, on_stdout=self.activation._heard, timeout=self.seconds)
        except HiveError as exc:
            self.error = exc

    def confirm(self) -> str | None:
        """Send the word; why no confirmation could be given, or None."""
        self.activation.sent_after = time.monotonic() - self.opened
        self.go.put("confirm\n")
        self.go.put(None)
        self.thread.join(self.seconds + 5)
        took = time.monotonic() - self.opened
        if took >= self.activation.confirm_timeout and (self.error is not None or self.thread.is_alive()):
            return (f"no confirmation within {self.activation.confirm_timeout} s: the checks took "
                    f"{took:.0f} s (the host rolls back by itself once its window is over)")
        if self.error is not None:
            return f"no confirmation: a new ssh connection failed ({self.error})"
        return None

    def cancel(self) -> None:
        """End of input without the word: the host confirms nothing (and rolls back)."""
        self.go.put(None)
        self.thread.join(self.seconds + 5)


def activate(session: Session, instance: Instance) -> dict[str, Any]:
    """The action of `activate:<instance>`; a dry activation's output is kept in the session
    (`dry_runs`), for `nix-hive diff`."""
    done = Activation(session, instance).run()
    if "log" in done:
        session.dry_runs[instance.name] = str(done.pop("log"))
    return done


def put_back(session: Session, instance: Instance, path: str) -> dict[str, Any]:
    """--rollback-on-failure: `instance` back on `path`, the system it ran before the run, as
    safely as any activation (host lock, detached, automatic and magic rollback)."""
    return Activation(session, instance, back_to=path).run()


def upload_keys(session: Session, instance: Instance) -> dict[str, Any]:
    """The action of `keys:<instance>`: its pre-activation keys; and its post-activation ones
    too when the host already runs its system (`--no activate` will not switch it again).
    Under `--no activate` only the keys whose content differs on the host are sent."""
    keys = session.keys.of(instance.name, post=False)
    again = session.skips(Step.ACTIVATE)
    if again and session.probe(instance.name).current == session.path_of(instance.system):
        keys += session.keys.of(instance.name, post=True)
    done = session.keys.upload(session.remotes[instance.name], keys, only_changed=again)
    return {"note": done.note()}


def is_active(session: Session, instance: Instance) -> bool:
    """`--no activate`: the host already is where the goal would take it."""
    path = session.path_of(instance.system)
    found = session.probe(instance.name)
    return path is not None and not found.pending and session.options.goal.reached(path, found.current, found.profile)

