"""Pull mode, the deployer's side (issue 32): `nix-hive publish` and `nix-hive status --from`.

`publish` builds as `deploy` does (the same build step: orchestrate.build), makes a record per
instance (hive/pull.py) in this machine's store, signs the records and the closures with the
deployment's key, copies them all to the cache in one `nix copy --to C` (Nix writes the
cache: PUT for HTTP, files for file://), then writes the pointers wave by wave (PUT, through
hive/cachefiles.py) and, between waves, reads the hosts' status documents until every host of
the wave reported the published serial or --wait-timeout passed; the wave gate is deploy's
(`session.gate`). No ssh to any instance: the hosts fetch what they are told to run.

`status --from C` reads each instance's status document and pointer, and names the hosts that
did not report lately.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from hive import cachefiles, nix, orchestrate, pull, text
from hive.errors import HiveError
from hive.model import Instance
from hive.pull import AgentStatus, Record, RecordError
from hive.session import Session, gate, listed

READERS = 32  # cache files read or written at once

OK = "ok"
PUBLISHED = "published"  # --no-wait: the pointer is written, nobody waited for the host
NO_REPORT = "no report"
SKIPPED = "skipped"
FAILED = "failed"
GOOD = frozenset({OK, PUBLISHED})
# an agent's outcome -> the summary's
AGENT_OUTCOMES = {"ok": OK, "failed": FAILED, "rolled-back": "rolled back", "refused": "refused"}

T = TypeVar("T")
U = TypeVar("U")


def _each(func: Callable[[T], U], items: Sequence[T]) -> list[U]:
    """`func` over `items`, READERS at once (each bounded by its own timeout), in order."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(READERS, len(items))) as pool:
        return list(pool.map(func, items))


@dataclass(frozen=True)
class Published:
    """One instance's line in publish's summary."""

    instance: str
    wave: int
    serial: int | None  # the record's, once one was made
    outcome: str
    reason: str = ""
    record: str | None = None
    system: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "wave": self.wave, "serial": self.serial, "outcome": self.outcome,
                "reason": self.reason, "record": self.record, "system": self.system}


def pointer_of(base: str, instance: str) -> str | None:
    """The record path the pointer of `instance` names now (None: no pointer). A pointer that
    is no record's path is treated as none: the serial rule then starts from the clock."""
    data = cachefiles.get(pull.pointer_url(base, instance))
    if data is None:
        return None
    try:
        return pull.parse_pointer(data.decode("utf-8", "replace"))
    except RecordError:
        return None


def status_of(base: str, instance: str) -> AgentStatus | None:
    """The status document of `instance` (None: none yet). One for another instance is a
    `RecordError`."""
    data = cachefiles.get(pull.status_url(base, instance))
    if data is None:
        return None
    found = pull.parse_status(data)
    if found.instance != instance:
        raise RecordError(f"status of {instance} names instance {found.instance!r}")
    return found


def reported(status: AgentStatus, serial: int) -> tuple[str, str] | None:
    """The outcome and reason of a host whose status is `status`, for the record of `serial`;
    None while it has not handled that record yet."""
    if status.serial is None or status.serial < serial:
        return None
    newer = f" (it handled a newer record since: serial {status.serial})" if status.serial > serial else ""
    if status.outcome == "unchanged":  # a heartbeat: the record was handled before
        good = status.applied_serial is not None and status.applied_serial >= serial
        return (OK, newer.strip(" ()")) if good else (FAILED, f"not applied: {status.reason}{newer}")
    return AGENT_OUTCOMES[status.outcome], f"{status.reason}{newer}"


class Publish:
    """One publish run over a built session."""

    def __init__(self, session: Session, base: str, *, wait: bool, wait_timeout: float, poll: float) -> None:
        self.session = session
        self.base = base
        self.wait = wait
        self.wait_timeout = wait_timeout
        self.poll = poll
        self.run_id = secrets.token_hex(6)
        self.rows: dict[str, Published] = {}
        self.records: dict[str, tuple[Record, str]] = {}  # instance -> its record, its store path
        self.progress = session.progress

    def line(self, what: str) -> None:
        self.progress.line(what)

    def _fail(self, names: Sequence[str], reason: str, outcome: str = FAILED) -> None:
        for name in names:
            wave = self.session.plan.wave_of(name) or 0
            record = self.records.get(name)
            self.rows[name] = Published(name, wave, record[0].serial if record else None, outcome, reason,
                                        record[1] if record else None, record[0].system if record else None)

    def built(self) -> list[Instance]:
        """Build (deploy's build step); the instances whose system is here and signed-ready.
        Systems built on a build host are fetched here first (the records reference them)."""
        s = self.session
        orchestrate.build(s)
        ready: list[Instance] = []
        fetched: dict[str, str | None] = {}  # system -> why it could not be fetched
        for instance in s.plan.instances:
            failure = s.instance_failure(instance.name)
            if failure is not None:
                self._fail([instance.name], s.why_failed(instance.name, *failure))
                continue
            path = s.path_of(instance.system)
            if path is None:
                self._fail([instance.name], f"build of {instance.system}: no result")
                continue
            host = s.hive.systems[instance.system].build_host
            if host is not None and instance.system not in fetched:
                fetched[instance.system] = self._fetch(host, path)
            if fetched.get(instance.system):
                self._fail([instance.name], f"fetching {instance.system} from build host {host}: "
                           f"{fetched[instance.system]}")
                continue
            ready.append(instance)
        return ready

    def _fetch(self, host: str, path: str) -> str | None:
        s = self.session
        self.line(f"fetching {text.short_path(path)} from build host {host}")
        try:
            nix.fetch(f"ssh-ng://{host}", [path], env=s.remotes.setup.env,
                      timeout=s.options.copy_deadline(None) * 10)
        except HiveError as exc:
            return str(exc)
        return None

    def make_records(self, ready: Sequence[Instance]) -> None:
        """A record per ready instance, its serial by the serial rule against its pointer now."""
        s = self.session
        now = pull.utc()
        try:
            current = _each(lambda i: pointer_of(self.base, i.name), ready)
        except HiveError as exc:
            raise HiveError(f"cannot read the pointers at {self.base}: {exc}") from exc
        made: list[Record] = []
        for instance, pointer in zip(ready, current, strict=True):
            serial = pull.next_serial(pull.now_ms(), pull.serial_of(pointer) if pointer else None)
            made.append(Record(instance=instance.name, system=s.need_path(instance.system), serial=serial, time=now,
                               wave=s.plan.wave_of(instance.name) or 1, run=self.run_id,
                               checks=tuple(sorted(instance.checks, key=lambda c: c.name))))
        entries = []
        for r in made:
            content = pull.render_record(r)
            entries.append((pull.record_path(pull.record_name(r.instance, r.serial), content), content, [r.system]))
        paths = nix.import_paths(pull.export(entries))
        if paths != [path for path, _, _ in entries]:
            raise HiveError(f"nix-store --import registered {len(paths)} path(s), not the {len(entries)} records")
        self.records = {r.instance: (r, p) for r, p in zip(made, paths, strict=True)}

    def copy(self) -> bool:
        """Sign the records and their closures, copy them to the cache in one `nix copy`."""
        s = self.session
        paths = [p for _, p in self.records.values()]
        key = s.hive.signing_key
        assert key is not None  # cli refuses a hive without one before anything runs
        try:
            size: int | None = nix.closure_bytes(paths)
        except HiveError:
            size = None
        self.line(f"copying {len(paths)} record(s) and their closures to {self.base}"
                  + (f" ({size / 1e6:.1f} MB at most)" if size is not None else ""))
        started = time.monotonic()
        try:
            nix.sign(key, paths)
            nix.copy(self.base, paths, substitute=False, env={}, timeout=s.options.copy_deadline(size))
            if cachefiles.ensure_cache_info(self.base):
                self.line(f"wrote {self.base}/nix-cache-info (the cache had none)")
        except HiveError as exc:
            self._fail(list(self.records), f"copy to {self.base} failed: {exc}")
            return False
        self.line(f"copied in {time.monotonic() - started:.1f} s")
        return True

    def write_pointers(self, names: Sequence[str]) -> list[str]:
        """Write the pointers of `names`; those written."""
        def one(name: str) -> str | None:
            try:
                cachefiles.put(pull.pointer_url(self.base, name), pull.render_pointer(self.records[name][1]).encode())
            except HiveError as exc:
                return str(exc)
            return None

        written = []
        for name, why in zip(names, _each(one, names), strict=True):
            if why is not None:
                self._fail([name], f"pointer not written: {why}")
            else:
                written.append(name)
        return written

    def await_reports(self, names: Sequence[str], wave: int, last: bool) -> None:
        """Read the status documents of `names` every --poll seconds until each reported its
        record's serial, or --wait-timeout passed (those then count as failed)."""
        pending = {n: self.records[n][0].serial for n in names}
        said: dict[str, str] = {}  # a host's status that could not be read, the last time
        self.line(f"wave {wave}: waiting up to {self.wait_timeout:g} s for {len(pending)} host(s) to report")
        deadline = time.monotonic() + self.wait_timeout
        try:
            while pending:
                order = sorted(pending)

                def one(name: str) -> AgentStatus | str | None:
                    try:
                        return status_of(self.base, name)
                    except HiveError as exc:
                        return str(exc)

                for name, found in zip(order, _each(one, order), strict=True):
                    if isinstance(found, str):
                        said[name] = found
                        continue
                    outcome = reported(found, pending[name]) if found is not None else None
                    if outcome is not None:
                        self._report(name, *outcome)
                        del pending[name]
                left = deadline - time.monotonic()
                if not pending or left <= 0:
                    break
                time.sleep(min(self.poll, left))
        except KeyboardInterrupt:
            self._fail(sorted(pending), "interrupted: the host keeps polling and will apply it by itself",
                       NO_REPORT)
            raise
        for name in sorted(pending):
            also = f" (its status: {said[name]})" if name in said else ""
            self._fail([name], f"no report within {self.wait_timeout:g} s: the host keeps polling and will apply "
                       f"it by itself{also}", NO_REPORT)

    def _report(self, name: str, outcome: str, reason: str) -> None:
        record, path = self.records[name]
        self.rows[name] = Published(name, record.wave, record.serial, outcome, reason, path, record.system)
        self.progress.step("report", name, outcome, reason)

    def waves(self) -> None:
        """Each wave's pointers, then (unless --no-wait) its hosts' reports, then the gate."""
        s = self.session
        waves = s.plan.waves
        stopped: str | None = None
        for number, wave in enumerate(waves, 1):
            names = [i.name for i in wave if i.name in self.records and i.name not in self.rows]
            if stopped is not None:
                self._fail([i.name for i in wave if i.name not in self.rows], stopped, SKIPPED)
                continue
            written = self.write_pointers(names)
            self.line(f"wave {number}/{len(waves)}: {len(written)} pointer(s) written")
            if self.wait:
                try:
                    self.await_reports(written, number, number == len(waves))
                except KeyboardInterrupt:
                    stopped = "not started: interrupted"
                    continue
            else:
                for name in written:
                    record, path = self.records[name]
                    self.rows[name] = Published(name, number, record.serial, PUBLISHED, "", path, record.system)
            failed = sorted(i.name for i in wave if self.rows[i.name].outcome not in GOOD)
            total = sum(1 for r in self.rows.values() if r.outcome not in GOOD | {SKIPPED})
            if number < len(waves):
                stopped = gate(number, failed, total, s.options)
                if stopped is not None:
                    s.halted = stopped
                    self.line(stopped.removeprefix("not started: ") + ": the later waves' pointers are not written")

    def run(self) -> tuple[int, list[Published]]:
        ready = self.built()
        if ready:
            self.make_records(ready)
            self.copy()
        self.waves()
        found = [self.rows[i.name] for i in self.session.plan.instances]
        return (0 if all(r.outcome in GOOD for r in found) else 1), found


def publish(session: Session, base: str, *, wait: bool, wait_timeout: float, poll: float
            ) -> tuple[int, list[Published], dict[str, Any]]:
    """The publish run: exit status, a row per instance (wave order), what the JSON says of the run."""
    job = Publish(session, base, wait=wait, wait_timeout=wait_timeout, poll=poll)
    code, found = job.run()
    failed = [r.instance for r in found if r.outcome not in GOOD]
    return code, found, {"run": job.run_id, "to": base, "halted": session.halted,
                         "failed": f"{listed(failed)} failed" if failed else None}


# status --from ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostReport:
    """What the cache says of one instance: its pointer and its agent's last status."""

    instance: str
    pointer: str | None
    status: AgentStatus | None
    problem: str = ""  # a file that could not be read or understood

    def published_serial(self) -> int | None:
        return pull.serial_of(self.pointer) if self.pointer else None

    def record_time(self) -> float | None:
        """When the newest record (the pointer's) was made: its time when the status names it,
        else its serial (by the serial rule, its publication time in milliseconds)."""
        if self.pointer is None:
            return None
        if self.status is not None and self.status.record == self.pointer and self.status.record_time:
            try:
                return pull.seconds_of(self.status.record_time)
            except ValueError:
                pass
        serial = self.published_serial()
        return serial / 1000 if serial is not None else None

    def report_time(self) -> float | None:
        if self.status is None:
            return None
        try:
            return pull.seconds_of(self.status.finished)
        except ValueError:
            return None


def read_reports(base: str, names: Sequence[str]) -> list[HostReport]:
    def one(name: str) -> HostReport:
        problems = []
        try:
            pointer = pointer_of(base, name)
        except HiveError as exc:
            pointer, problems = None, [f"pointer: {exc}"]
        try:
            found = status_of(base, name)
        except HiveError as exc:
            found = None
            problems.append(str(exc) if str(exc).startswith("status") else f"status: {exc}")
        return HostReport(name, pointer, found, "; ".join(problems))

    return _each(one, list(names))


def age(seconds: float | None) -> str:
    """An age as a person reads it: `42 s`, `7 min`, `3 h`, `2 d`; `-` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def status_rows(reports: Sequence[HostReport], stale: float, now: float | None = None) -> list[dict[str, Any]]:
    """`status --from`'s rows: outcome, running system, applied and published serial, the
    newest record's age, the report's age, whether the host is stale (no report, or none
    newer than `stale` seconds)."""
    now = time.time() if now is None else now
    out = []
    for r in reports:
        recorded, reported_at = r.record_time(), r.report_time()
        st = r.status
        out.append({
            "instance": r.instance,
            "outcome": st.outcome if st is not None else NO_REPORT,
            "reason": r.problem or (st.reason if st is not None else ""),
            "system": st.system if st is not None else None,
            "record": st.record if st is not None else None,
            "applied_serial": st.applied_serial if st is not None else None,
            "published_serial": r.published_serial(),
            "pointer": r.pointer,
            "record_age": round(now - recorded, 1) if recorded is not None else None,
            "report_age": round(now - reported_at, 1) if reported_at is not None else None,
            "stale": reported_at is None or now - reported_at > stale,
        })
    return out


def newest(row: Mapping[str, Any]) -> str:
    """Whether a `status_rows` row's host applied the newest published record: "yes", "no"
    (an older one, or none), "-" (nothing published for it)."""
    if row["published_serial"] is None:
        return "-"
    return "yes" if row["applied_serial"] == row["published_serial"] else "no"


def stale_line(rows: Sequence[Mapping[str, Any]], stale: float) -> str:
    names = [r["instance"] for r in rows if r["stale"]]
    if not names:
        return f"stale: none (every host reported within {stale:g} s)"
    shown = ", ".join(names)
    if len(shown) > STALE_NAMES:  # a fleet's worth: the count, the first and the last (--json lists all)
        shown = text.summary(names, "hosts", STALE_NAMES)
    return f"stale ({len(names)}: no report newer than {stale:g} s): {shown}"


STALE_NAMES = 160  # characters of stale hosts' names the line shows
