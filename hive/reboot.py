"""Rebooting a host into a system, safely: boot it once, keep it only when it comes back healthy.

The host side is hive/host/reboot.sh (see it for the boot loaders). For one host:

1. `start`: the new system is added to the system profile and set as the boot loader's
   one-shot entry; the last good system (the one the host runs, else the profile's) stays the
   default entry; the host reboots.
2. nix-hive waits until the host answers ssh again with another boot id
   (/proc/sys/kernel/random/boot_id, read before the reboot) and its boot has finished
   (`rebootTimeout`, `--reboot-timeout`), with progress.
3. It checks that the host booted the new system, uploads the instance's keys again (a reboot
   empties /run), runs the health checks, then over a *new* ssh login (proof the new system
   lets nix-hive in) makes the new system the default entry (`keep`).
4. Otherwise: a host that answers is put back (`fall-back`: it reboots into the default entry,
   the last good system) and reported rolled back with the reason; a host that does not come
   back is reported failed: its one-shot entry is used up, so it boots its last good system at
   its next power cycle.

A reboot that does not happen is no reboot: one refused at once (`systemctl reboot` fails: a
masked reboot.target, an inhibitor lock) is undone by reboot.sh itself, one accepted but not
done when `rebootTimeout` ends (the host still answers with the boot id it had: a shutdown that
hangs) by `cancel`: either way its one-shot entry is cleared, the host stays on the system it
runs (its last good one, nothing was switched) and is reported failed with the reason.

A host that reboots nowhere near a deployer (a run that died, a power cut) is never left on an
untested default: the default entry only changes in step 3. The next run finds a host that
runs the new system on trial and goes on from step 3 (`resume`).

`--reboot=auto` reboots only the hosts whose new system has another kernel, initrd or kernel
parameters than the booted one (as nixos-needsreboot compares them), or a switch inhibitor
whose value changed (NixOS would refuse to switch: hive/host/inhibitors.sh); the others switch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from hive import elevate, health, process
from hive.activate import LOCK_MARGIN, Activation, who
from hive.errors import HiveError, ProcessError, RolledBackError, StepError
from hive.model import Instance
from hive.process import ProcessTimeoutError
from hive.remote import Remote
from hive.report import Row
from hive.resources import host_script
from hive.session import Session, gate

POLL = 1.0  # seconds between two ssh tries while a host reboots
PROGRESS_EVERY = 10.0  # seconds between two progress lines of a host that is not back yet
TRY_MARGIN = 5.0  # seconds a try may take beyond the deadline (the host's own wait ends at it)
KERNEL_FILES = ("kernel", "initrd", "kernel-params")
INHIBITED = "switch-inhibitors"  # `needs` says so when NixOS would refuse to switch (hive/host/inhibitors.sh)


ROOT_CALLS = ("start", "keep", "cancel", "fall-back")  # reboot.sh's calls that run as root (the others only read)


def host_argv(remote: Remote, what: str, *args: str, fresh: bool = False, share: bool = True) -> list[str]:
    """The ssh call running `reboot.sh WHAT ARGS` on `remote`: over the host's shared
    connection (without `share`: one if open, leaving none behind), or `fresh`, over a new
    login of its own. A call of `ROOT_CALLS` runs as root the way the host's instance
    elevates: `reboot.sh root ID WHAT ARGS` behind elevate.sh, which writes the script (its
    standard input, `host_input`) to /run/nix-hive/ID/ and runs it with `as_root sh`; the
    others run as the ssh user."""
    if what in ROOT_CALLS:
        script, words = remote.root_script(host_script("reboot.sh")), ["root", elevate.call_id(), what, *args]
    else:
        script, words = host_script("reboot.sh"), [what, *args]
    return remote.fresh_argv(script, args=words) if fresh else remote.shell_argv(script, share=share, args=words)


def host_input(remote: Remote, what: str) -> str | None:
    """The standard input of `host_argv(remote, what, …)`: for a root call, the sudo
    password's line (when one was asked), then reboot.sh's text."""
    return remote.root_input(host_script("reboot.sh")) if what in ROOT_CALLS else None


def host_run(remote: Remote, what: str, *args: str, timeout: float, fresh: bool = False,
             check: bool = False) -> process.Result:
    """Run `reboot.sh WHAT ARGS` on `remote` (`host_argv`), within `timeout` seconds."""
    return process.run(host_argv(remote, what, *args, fresh=fresh), input=host_input(remote, what),
                       check=check, timeout=timeout)


def parse_needs(stdout: str) -> tuple[str, ...]:
    """What `reboot.sh needs` says differs (kernel, initrd, kernel-params; switch-inhibitors:
    NixOS would refuse to switch; "unknown": the host has no /run/booted-system to compare
    with)."""
    line = next((ln for ln in stdout.splitlines() if ln.split()[:1] == ["needs"]), None)
    if line is None:
        raise HiveError(f"unexpected answer to a reboot check: {stdout.strip()[:200]!r}")
    return tuple(w for w in line.split()[1:] if w in (*KERNEL_FILES, INHIBITED, "unknown"))


def needs(remote: Remote, path: str) -> tuple[str, ...]:
    """The files of `path` (kernel, initrd, kernel-params) that differ from the booted
    system's: empty when `path` runs without a reboot; ("unknown",) when the host cannot tell
    (nix-hive then reboots it)."""
    return parse_needs(host_run(remote, "needs", path, timeout=60, check=True).stdout)


@dataclass(frozen=True)
class Answer:
    """A line of reboot.sh: its first word and the rest."""

    word: str
    rest: str = ""

    @classmethod
    def parse(cls, stdout: str, words: tuple[str, ...]) -> Answer | None:
        for line in stdout.splitlines():
            word, _, rest = line.strip().partition(" ")
            if word in words:
                return cls(word, rest)
        return None


class UnreachableError(StepError):
    """The host did not answer (or finish booting) in time."""


class NotRebootedError(StepError):
    """The host still answered with the boot id it had before the reboot when the time was up:
    the reboot did not happen (yet)."""


PROFILE = "-"  # reboot.sh start's NEW for "the system the profile names" (nix-hive reboot)


class Reboot:
    """One host's reboot into `path`, followed from the deployer."""

    def __init__(self, session: Session, instance: Instance, path: str) -> None:
        self.session = session
        self.instance = instance
        self.path = path
        self.remote: Remote = session.remotes[instance.name]
        self.timeout = session.options.reboot_timeout or instance.reboot_timeout
        self.lock_wait = (session.options.confirm_timeout or instance.confirm_timeout) + LOCK_MARGIN
        self.seconds: dict[str, float] = {}
        self.good = ""  # the last good system: the default boot entry

    def run(self) -> dict[str, Any]:
        rid = elevate.call_id()
        self.remote.forget()
        try:
            out = host_run(self.remote, "start", rid, self.path, str(self.lock_wait), who(),
                           timeout=self.lock_wait + 600)
            said = Answer.parse(out.stdout, ("ready", "same", "resume", "busy", "error"))
            if said is None:  # no word: the host refused (sudo), or could not be reached
                raise StepError(f"cannot start the reboot: {_why(out)}", seconds=self.seconds)
            if said.word == "busy":
                raise StepError(f"another activation is running on it ({said.rest}); waited {self.lock_wait} s",
                                seconds=self.seconds)
            if said.word == "error":
                raise StepError(f"cannot reboot: {said.rest}", log=out.stderr, seconds=self.seconds)
            self.good = said.rest.split()[-1]
            named = Answer.parse(out.stdout, ("system",))  # what `-` (the profile) was, under the host lock
            if named is not None and named.rest:
                self.path = named.rest
            expected = self.good if said.word == "same" else self.path
            refused = Answer.parse(out.stdout, ("refused",))
            if refused is not None:  # reboot.sh cleared the one-shot entry
                running, _, why = refused.rest.partition(" ")
                raise StepError(f"the host did not reboot: {why}; {self._stays(running)}", seconds=self.seconds)
            boot_id = Answer.parse(out.stdout, ("boot-id",)) if said.word != "resume" else Answer("boot-id", "-")
            if boot_id is None or not boot_id.rest:
                raise StepError(f"cannot follow the reboot: the host said no boot id ({_why(out)})",
                                log=out.stderr, seconds=self.seconds)
            if said.word == "resume":
                self._progress("on trial since a reboot of an earlier run: checking it")
            booted = self._booted(boot_id.rest, oneshot=said.word == "ready")
            if booted != expected:
                return self._fall_back(f"booted {booted or 'no system'}, not {expected}")
            failed = self._check()
            if failed is None:
                failed = self._keep(expected)
            if failed is not None:
                return self._fall_back(failed)
            return {"path": expected, "seconds": self.seconds,
                    "note": "rebooted" if said.word != "resume" else "kept after an earlier run's reboot"}
        finally:
            self.remote.release()

    # -- waiting -------------------------------------------------------------------------

    def _progress(self, detail: str) -> None:
        self.session.progress.step("reboot", self.instance.name, "...", detail)

    def _booted(self, boot_id: str, *, oneshot: bool) -> str:
        """The system the host booted after the reboot (`oneshot`: into a new system) from the
        boot `boot_id`; StepError when it did not reboot, or did not come back, in time."""
        try:
            try:
                return self._wait(boot_id, "boot")
            except NotRebootedError as exc:
                self._cancel(boot_id, str(exc), oneshot=oneshot)
        except UnreachableError as exc:
            raise UnreachableError(f"{exc}; it boots its last good system {self.good} at its next power cycle "
                                   "(the new system's one-shot entry is used up)", seconds=self.seconds) from None

    def _wait(self, boot_id: str, phase: str) -> str:
        """Wait until the host answers with another boot id than `boot_id` (`-`: any) and has
        finished booting; the system it runs. Once `self.timeout` seconds have passed,
        NotRebootedError if its last answer still had `boot_id`, else UnreachableError."""
        self.remote.close()  # the connection from before the reboot is of no use after it
        start = time.monotonic()
        deadline = start + self.timeout
        said = start
        answer: Answer | None = None
        try:
            while True:
                if self.session.abandoned:  # a second Ctrl-C or SIGTERM: stop following the host
                    raise StepError(f"{self.session.cause}: stopped waiting for the host (the default boot entry "
                                    f"is still its last good system {self.good})", seconds=self.seconds)
                left = deadline - time.monotonic()
                if left <= 0 and answer is not None:  # it answers, from the same boot
                    raise NotRebootedError(f"the host did not reboot within {self.timeout} s: it still answers, "
                                           "with the boot id it had before", seconds=self.seconds)
                if left <= 0:
                    raise UnreachableError(f"did not come back within {self.timeout} s", seconds=self.seconds)
                try:
                    # the host waits for its boot to finish for the time left. The try that finds it
                    # booted leaves the shared connection open: the checks and a fall-back go over it
                    # (sshd keeps open connections when a new system stops it)
                    argv = host_argv(self.remote, "booted", boot_id, str(max(1, int(left))))
                    out = process.run(argv, check=False, timeout=left + TRY_MARGIN)
                    answer = Answer.parse(out.stdout, ("booted", "waiting"))
                except ProcessTimeoutError:
                    answer = None
                if answer is not None and answer.word == "booted":
                    return answer.rest.strip()
                if answer is not None:  # not down yet: a connection to a host going down is of no use
                    self.remote.close()
                if time.monotonic() - said >= PROGRESS_EVERY:
                    said = time.monotonic()
                    state = "not down yet" if answer is not None else "no ssh yet"
                    self._progress(f"{state}: {said - start:.0f} s of {self.timeout} s")
                time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        finally:
            self.seconds[phase] = round(time.monotonic() - start, 2)

    # -- after the boot ------------------------------------------------------------------

    def _check(self) -> str | None:
        """The instance's keys again (a reboot empties /run), then its health checks: why
        they failed, or None."""
        start = time.monotonic()
        try:
            keys = self.session.keys
            if self.session.plan.keys and self.instance.keys:
                try:
                    keys.upload(self.remote, keys.of(self.instance.name, post=False)
                                + keys.of(self.instance.name, post=True), only_changed=False)
                except StepError as exc:
                    return f"keys: {exc}"
            for check in self.instance.checks:
                result = health.run(self.remote, check)
                if not result.healthy:
                    return f"check {check.name} failed: {result.detail}"
            return None
        finally:
            self.seconds["check"] = round(time.monotonic() - start, 2)

    def _keep(self, path: str) -> str | None:
        """Make `path` the default boot entry, over a new login; why it could not, or None."""
        try:
            out = host_run(self.remote, "keep", path, fresh=True, timeout=300)
        except ProcessTimeoutError:
            return "keeping the new system timed out after 300 s"
        said = Answer.parse(out.stdout, ("kept", "error"))
        if said is not None and said.word == "kept":
            return None
        if said is not None:
            return f"cannot keep it: {said.rest}"
        if out.exit_code == 255:
            return "no new ssh login after the checks (does the new system let nix-hive in?)"
        return f"cannot keep it: {_why(out)}"

    def _stays(self, running: str) -> str:
        """Where a host that did not reboot stays (`running`: the system it runs, `-`: none)."""
        if running == self.good:
            return f"it stays on its last good system {self.good}"
        running = running if running not in ("", "-") else "no system"
        return f"it still runs {running} (its default boot entry is its last good system {self.good})"

    def _cancel(self, boot_id: str, why: str, *, oneshot: bool) -> NoReturn:
        """A reboot asked for that had not happened when the time was up (the host still
        answers from the boot `boot_id`): its one-shot entry is cleared, so that it stays on its
        last good system; failed, saying so (`oneshot`: the reboot was into a new system).
        UnreachableError when the host has rebooted after all (its one-shot entry is used)."""
        try:
            out: process.Result | None = host_run(self.remote, "cancel", boot_id, timeout=120)
        except ProcessTimeoutError:
            out = None
        said = Answer.parse(out.stdout, ("cancelled", "rebooted", "error")) if out is not None else None
        if said is not None and said.word == "cancelled":
            cleared = "its one-shot entry was cleared, " if oneshot else ""
            raise StepError(f"{why}; {cleared}{self._stays(said.rest.strip())}", seconds=self.seconds)
        if said is not None and said.word == "rebooted":  # just after the time was up: not back in time
            raise UnreachableError(f"did not come back within {self.timeout} s", seconds=self.seconds)
        failed = said.rest if said is not None else _why(out) if out is not None else "timed out after 120 s"
        nxt = (f"the new system {self.path} once, then its last good system {self.good}" if oneshot
               else f"its last good system {self.good}")
        raise StepError(f"{why}; clearing its one-shot entry failed ({failed}): its next boot boots {nxt}",
                        seconds=self.seconds)

    def _fall_back(self, why: str) -> dict[str, Any]:
        """Back to the last good system (the default entry): rolled back, or failed when
        the host cannot be reached or does not reboot."""
        last = f"its last good system {self.good}" if self.good else "its last good system"
        try:
            out = host_run(self.remote, "fall-back", timeout=120)
        except ProcessTimeoutError:
            out = None
        said = Answer.parse(out.stdout, ("on", "rebooting")) if out is not None else None
        if out is None or said is None:
            raise StepError(f"{why}; the host cannot be reached now: it boots {last} at its next power cycle",
                            seconds=self.seconds)
        if said.word == "rebooting":
            refused = Answer.parse(out.stdout, ("refused",))
            if refused is not None:
                running, _, reason = refused.rest.partition(" ")
                raise StepError(f"{why}; the reboot into {last} was refused: {reason}; it runs {running} until "
                                f"its next boot, which boots {last}", seconds=self.seconds)
            boot_id = Answer.parse(out.stdout, ("boot-id",))
            if boot_id is None or not boot_id.rest:
                raise StepError(f"{why}; rebooting into {last}: the host said no boot id, nix-hive cannot follow "
                                f"the reboot (its next boot boots that system)", seconds=self.seconds)
            try:
                booted = self._wait(boot_id.rest, "rollback")
            except NotRebootedError as exc:
                raise StepError(f"{why}; rebooting into {last}: {exc}; it runs the system it booted until its "
                                f"next boot, which boots {last}", seconds=self.seconds) from None
            except UnreachableError as exc:
                raise StepError(f"{why}; rebooted into {last}, it {exc} (it boots that system at its next power "
                                "cycle)", seconds=self.seconds) from None
            if booted != said.rest.strip():
                raise StepError(f"{why}; rebooted into {last}, it booted {booted or 'no system'}",
                                seconds=self.seconds)
        raise RolledBackError(why, seconds=self.seconds)  # the outcome says "rolled back"


def _why(out: process.Result) -> str:
    refused = elevate.refusal(out.exit_code, out.stderr)
    if refused is not None:  # one clear line (a wrong password is tried once, never again)
        return refused
    said = (out.stderr.strip() or out.stdout.strip()).splitlines()
    if out.exit_code == 255:
        return f"ssh failed ({said[-1]})" if said else "ssh failed"
    return said[-1] if said else f"exit {out.exit_code}"


def reboot_into(session: Session, instance: Instance) -> dict[str, Any]:
    """The action of `activate:<instance>` under `deploy --reboot[=auto]`: a reboot into the
    instance's new system, or with `auto` and nothing to reboot for, the usual activation."""
    path = session.need_path(instance.system)
    remote = session.remotes[instance.name]
    if session.options.reboot == "auto":
        try:
            changed = needs(remote, path)
        except ProcessError as exc:
            raise StepError(f"cannot tell whether it needs a reboot: {exc}") from None
        if not changed:
            done = Activation(session, instance).run()
            return {**done, "note": "no reboot needed"}
        known = [w for w in changed if w != "unknown"]
        why = "; ".join([*(["the booted system is unknown"] if "unknown" in changed else []),
                         *([f"{', '.join(known)} changed"] if known else [])])
        session.progress.step("reboot", instance.name, "...", f"needed: {why}")
    return Reboot(session, instance, path).run()


def reboot_all(session: Session) -> list[Row]:
    """`nix-hive reboot`: every selected instance into its default system (its profile's),
    wave after wave, `-j` at once. A failed wave stops the later ones (unless --keep-going), as
    do more than --max-failures failed reboots."""
    options, plan = session.options, session.plan
    rows: list[Row] = []
    stopped: str | None = None
    session.connect_all()  # every host asked first, at once: an unreachable one is known before any reboot

    def one(i: Instance) -> Row:
        start = time.monotonic()
        seconds: dict[str, float] = {}
        try:
            found = session.remotes[i.name].probe(())  # connect_all's answer: blocked unless it was reached
            if found.profile is None:
                raise StepError("no system profile: nothing to reboot into")
            # the profile's system as the host reads it under its lock (`-`): another run may
            # switch or roll back the host between this probe and the reboot
            done = Reboot(session, i, PROFILE)
            try:
                result = done.run()
            finally:
                seconds = dict(done.seconds)
        except HiveError as exc:
            status = exc.status if isinstance(exc, StepError) else "failed"
            seconds.update(exc.seconds if isinstance(exc, StepError) else {})
            seconds["reboot"] = round(time.monotonic() - start, 2)
            session.progress.step("reboot", i.name, status, str(exc))
            return Row(i.name, i.system, "", status, str(exc), seconds)
        seconds["reboot"] = round(time.monotonic() - start, 2)
        session.progress.step("reboot", i.name, "ok", f"{seconds['reboot']:.1f}s")
        return Row(i.name, i.system, str(result["path"]), "ok", "", seconds)

    def blocked(i: Instance) -> Row:
        """An instance connect_all found unreachable, or whose wave will not start."""
        failure = session.instance_failure(i.name)
        if failure is not None:
            return Row(i.name, i.system, "", "failed", session.why_failed(i.name, *failure))
        return Row(i.name, i.system, "", "skipped", session.blocked[i.name])

    pool = ThreadPoolExecutor(max_workers=options.jobs)
    try:
        for number, wave in enumerate(plan.waves, 1):
            if stopped is not None:
                rows += [Row(i.name, i.system, "", "skipped", stopped) for i in wave]
                continue
            session.progress.line(f"wave {number}/{len(plan.waves)}: {len(wave)} instance(s)")
            done = list(pool.map(lambda i: blocked(i) if i.name in session.blocked else one(i), wave))
            rows += done
            failed = [r.instance for r in done if r.result not in ("ok", "skipped")]
            stopped = gate(number, failed, sum(1 for r in rows if r.result not in ("ok", "skipped")), options)
    except KeyboardInterrupt:  # stop following the hosts: each boots its default entry, its last good system
        session.abandon()
        process.terminate_children()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        session.close()
    return rows


def reboot_needed(session: Session, targets: dict[str, str | None]) -> dict[str, str]:
    """`nix-hive status`: for each reachable host (name -> the system it boots next), "no",
    "yes (kernel, …)" or "-" when it cannot tell."""

    def one(item: tuple[str, str | None]) -> tuple[str, str]:
        name, path = item
        if path is None:
            return name, "-"
        try:
            changed = needs(session.remotes[name], path)
        except HiveError:
            return name, "-"
        if changed == ("unknown",):  # no /run/booted-system: nix-hive cannot tell (deploy --reboot=auto reboots)
            return name, "-"
        return name, f"yes ({', '.join(changed)})" if changed else "no"

    run: Callable[[tuple[str, str | None]], tuple[str, str]] = one
    with ThreadPoolExecutor(max_workers=session.options.jobs) as pool:
        return dict(pool.map(run, targets.items()))
