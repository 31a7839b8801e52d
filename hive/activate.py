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
"""

from __future__ import annotations

import secrets
import shlex
import time
from typing import Any

from hive import health, process
from hive.errors import HiveError, RolledBackError, StepError, TimedOutError
from hive.model import Goal, Instance, Step
from hive.remote import SYSTEM_PROFILE, Remote, as_root
from hive.session import Session

STATE_DIR = "/run/nix-hive"
POLL = 0.1  # seconds between looks at the host's state (a channel of the shared connection)

# The host's side, as one POSIX shell script run as root. @NAME@ are filled in (quoted).
HOST_SCRIPT = r"""
set -u
umask 022
# a transient systemd unit starts with systemd's default PATH: NixOS keeps its tools elsewhere
PATH="/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:$PATH"; export PATH
d=@DIR@; P=@PROFILE@; new=@PATH@; goal=@GOAL@
say() { echo "$1" > "$d/state.tmp" && mv -f "$d/state.tmp" "$d/state"; }
echo $$ > "$d/pid"
find @STATE_DIR@ -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} + 2>/dev/null
# an earlier activation still waiting for its confirmation is superseded: it must not roll back over this one
for o in @STATE_DIR@/*/; do
  if [ "${o%/}" != "$d" ] && [ "$(cat "$o/state" 2>/dev/null)" = waiting ]; then touch "$o/superseded"; fi
done
prev=$(readlink -f /run/current-system 2>/dev/null || true)
gen=$(readlink "$P" 2>/dev/null || true)
rollback() {
  say "rolling-back $1"
  if [ @SETS_PROFILE@ = 1 ]; then
    n=${gen#system-}; n=${n%-link}
    if [ -z "$gen" ] || [ "$n" = "$gen" ]; then say "failed-no-previous $1"; exit 1; fi
    nix-env -p "$P" --switch-generation "$n" >> "$d/log" 2>&1 || { say "failed-rollback $1"; exit 1; }
    back=$(readlink -f "$P")
  else
    if [ -z "$prev" ]; then say "failed-no-previous $1"; exit 1; fi
    back=$prev
  fi
  timeout -k 10 @TIMEOUT@ "$back/bin/switch-to-configuration" "$goal" >> "$d/log" 2>&1 \
    || { say "failed-rollback $1"; exit 1; }
  say "rolled-back $1"; exit 0
}
if [ @SETS_PROFILE@ = 1 ]; then
  nix-env -p "$P" --set "$new" >> "$d/log" 2>&1 || { say "failed-profile"; exit 1; }
fi
say activating
timeout -k 10 @TIMEOUT@ "$new/bin/switch-to-configuration" "$goal" >> "$d/log" 2>&1; rc=$?
why=
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why=timed-out; elif [ $rc -ne 0 ]; then why=failed-$rc; fi
if [ -n "$why" ]; then
  if [ @ROLLBACK@ = 1 ]; then rollback "$why"; fi
  say "$why"; exit 1
fi
if [ @CONFIRM@ -gt 0 ]; then
  say waiting
  end=$(( $(date +%s) + @CONFIRM@ ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ -e "$d/confirm" ]; then say confirmed; exit 0; fi
    if [ -e "$d/superseded" ]; then say superseded; exit 0; fi
    if [ -e "$d/abort" ]; then rollback "$(cat "$d/abort")"; fi
    sleep 0.05
  done
  rollback not-confirmed
fi
say done
"""

# Starts the script detached: a transient unit where the host runs systemd, else setsid.
LAUNCHER = r"""
if [ "$(id -u)" -eq 0 ]; then s=; else s="sudo -n"; fi
$s mkdir -p -m 755 @STATE_DIR@ @DIR@ || exit 1
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  $s systemd-run --quiet --collect --unit=@UNIT@ sh -c @SCRIPT@
else
  $s setsid sh -c @SCRIPT@ > /dev/null 2>&1 < /dev/null &
fi
"""

FINAL = ("done", "confirmed", "superseded", "rolled-back", "failed-", "timed-out")


def _fill(template: str, **values: str | int) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", shlex.quote(str(value)) if isinstance(value, str) else str(value))
    return template


def host_script(path: str, goal: Goal, directory: str, *, timeout: int, rollback: bool, confirm: int) -> str:
    """The host's side of one activation (see the module's docstring)."""
    return _fill(HOST_SCRIPT, STATE_DIR=STATE_DIR, DIR=directory, PROFILE=SYSTEM_PROFILE, PATH=path, GOAL=goal.value,
                 SETS_PROFILE=int(goal.sets_profile), TIMEOUT=timeout, ROLLBACK=int(rollback), CONFIRM=confirm)


def launcher(run_id: str, script: str) -> str:
    directory = f"{STATE_DIR}/{run_id}"
    return _fill(LAUNCHER, STATE_DIR=STATE_DIR, DIR=directory, UNIT=f"nix-hive-activate-{run_id}", SCRIPT=script)


class Activation:
    """One instance's activation, followed from the deployer."""

    def __init__(self, session: Session, instance: Instance) -> None:
        self.session = session
        self.instance = instance
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
        self.checks = instance.checks if checked else ()
        self.post_keys = session.keys.of(instance.name, post=True) if session.plan.keys else []
        self.seconds: dict[str, float] = {}
        self.failure: str | None = None  # why nix-hive had the host roll back (a check, the confirmation)

    def run(self) -> dict[str, Any]:
        path = self.session.need_path(self.instance.system)
        script = host_script(path, self.goal, self.directory, timeout=self.timeout,
                             rollback=self.rollback, confirm=self.confirm)
        self.remote.forget()
        try:
            process.run(self.remote.shell_argv(launcher(self.id, script)))
            state = self._follow(self.timeout + 30, until=("waiting", *FINAL))
            if state == "waiting" or (state == "done" and (self.checks or self.post_keys)):
                state = self._check_and_confirm(state)
            return self._result(state, path)
        finally:
            self.remote.release()

    def _read(self, name: str) -> str | None:
        """A file of the activation's state directory, over the shared connection (None when
        the host cannot be asked right now)."""
        try:
            out = process.run(self.remote.shell_argv(as_root([["cat", f"{self.directory}/{name}"]])),
                              check=False, timeout=30)
        except HiveError:
            return None
        return out.stdout.strip() if out.exit_code == 0 else None

    def _follow(self, seconds: float, *, until: tuple[str, ...]) -> str:
        """Wait for the host's state to reach one of `until` (prefixes), asking again after a
        dropped connection, for at most `seconds`."""
        deadline = time.monotonic() + seconds
        state = ""
        while time.monotonic() < deadline:
            state = self._read("state") or state
            if state.startswith(until):
                return state
            time.sleep(POLL)
        raise TimedOutError(f"activation timed out after {self.timeout} s (state: {state or '?'})")

    def _check_and_confirm(self, state: str) -> str:
        """Post-activation keys, then the health checks; then the confirmation (or the
        abort that makes the host roll back)."""
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
        if state == "done":  # no magic rollback: a failed check fails the instance, no more
            if failed is not None:
                raise StepError(failed, seconds=self.seconds)
            return state
        start = time.monotonic()
        if failed is None:
            # confirm, then wait (in the same call) for the host to take it: one login, no poll
            wait = (f"d={shlex.quote(self.directory)}; touch \"$d/confirm\"; i=0; "
                    'while [ "$(cat "$d/state")" = waiting ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done')
            try:
                process.run(self.remote.fresh_argv(as_root([["sh", "-c", wait]])), timeout=self.confirm_timeout)
            except HiveError as exc:
                failed = f"no confirmation: a new ssh connection failed ({exc})"
        else:
            abort = as_root([["sh", "-c", f"echo check-failed > {self.directory}/abort"]])
            process.run(self.remote.shell_argv(abort), check=False, timeout=30)
        final = self._follow(self.confirm_timeout + self.timeout + 30, until=FINAL)
        # after a failed check: the time the host took to roll back; else the confirmation's
        self.seconds["rollback" if failed is not None else "confirm"] = round(time.monotonic() - start, 2)
        self.failure = failed
        return final

    def _result(self, state: str, path: str) -> dict[str, Any]:
        word, _, why = state.partition(" ")
        if word in ("done", "confirmed", "superseded"):
            return {"path": path, "seconds": self.seconds}
        reason = self._why(why if word != "timed-out" else "timed-out")
        log = self._read("log") or ""
        if word == "rolled-back":
            raise RolledBackError(f"rolled back: {reason}", log=log, seconds=self.seconds)
        if word == "timed-out":
            raise TimedOutError(reason, log=log, seconds=self.seconds)
        if word == "failed-no-previous":
            raise StepError(f"{reason}; no previous system to roll back to", log=log, seconds=self.seconds)
        if word.startswith("failed-") and word[7:].isdigit():
            raise StepError(f"activation failed (exit {word[7:]})", log=log, seconds=self.seconds)
        raise StepError(f"{word} ({reason})" if why else word, log=log, seconds=self.seconds)

    def _why(self, code: str) -> str:
        if code == "timed-out":
            return f"activation timed out after {self.timeout} s"
        if code.startswith("failed-") and code[7:].isdigit():
            return f"activation failed (exit {code[7:]})"
        if code == "not-confirmed":
            return self.failure or (
                f"no confirmation within {self.confirm_timeout} s (did the new system cut ssh access?)")
        if code == "check-failed":
            return self.failure or "a health check failed"
        return code


def activate(session: Session, instance: Instance) -> dict[str, Any]:
    """The action of `activate:<instance>`."""
    return Activation(session, instance).run()


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

