"""Pull mode's documents (docs/pull.md): the deployment record, the
pointer that names the newest one, and the agent's status document. Text in, text out, no I/O.

A record is a store path in the cache, signed by the deployment's key like the closures: its
name is `nix-hive-record-<instance>-<serial>` (`record_name`), its content lines of
`KEY<TAB>VALUE…` in a fixed order (`render_record`, `parse_record`), and it references the
system it names, so its signature (the narinfo fingerprint: NAR hash and references) covers
both. The pointer is unsigned: it can only choose among signed records, which a host refuses
when for another instance or not newer than the one it applied. The host side reads the same
format with sh (hive/host/agent.sh).

Why a record is not made with `builtins.toFile`: such a path is content-addressed (`ca = text:sha256:…`), and
Nix takes every content-addressed path as trusted whatever its signatures
(`ValidPathInfo::checkSignatures` returns the maximum for one): `nix store verify
--sigs-needed 1` with any key, and a host's `nix copy --from C` under `require-sigs`, accept
an unsigned record anyone wrote into the cache, its checks (commands run as root) included.
Measured on Nix 2.8: a toFile record passed `nix store verify` with a key that never signed it.
So a record is made input-addressed instead: its NAR and `nix-store --export` entry are written
here (`export`), its store path's hash derived from its name and content (`record_path`), and
`nix-store --import` registers it with the system as its one reference (hive/nix.py). Without a
content address, Nix checks its signature like any other path: unsigned, or signed by another
key, it is refused. The agent checks the record's signature by the deployment's key itself all the same
(hive/host/agent.sh): a hostile cache may serve a content-addressed record of its own.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hive.errors import HiveError, InputError
from hive.model import Check

FORMAT = "nix-hive-record-1"
STATUS_FORMAT = "nix-hive-status-1"
NAME_PREFIX = "nix-hive-record-"
NAME_LIMIT = 200  # characters of a record's store path name before its instance is cut
NAME_KEEP = 150  # characters of the instance kept in a name past that limit
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
OUTCOMES = ("ok", "unchanged", "refused", "failed", "rolled-back")

# A store path as a record names it: /nix/store, 32 characters of Nix's base32, a name.
_STORE_PATH = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+")
_SERIAL = re.compile(r"0|[1-9][0-9]*")
_RUN = re.compile(r"[0-9a-f]{12}")
_INSTANCE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CHECK_NAME = re.compile(r"[^\t\n\x00-\x1f\x7f]+")
_KEYS = ("format", "instance", "system", "serial", "time", "wave", "run")


class RecordError(HiveError):
    """A record, pointer or status document that is not what docs/pull.md says it is."""


@dataclass(frozen=True)
class Record:
    """What a host is told to run: a system for an instance, with a serial that only grows."""

    instance: str
    system: str  # the system's store path
    serial: int
    time: str  # UTC, TIME_FORMAT
    wave: int  # 1-based
    run: str  # the publish run's id: 12 lowercase hex
    checks: tuple[Check, ...] = ()  # in name order


@dataclass(frozen=True)
class AgentStatus:
    """What an agent last said of its host (`C/nix-hive/status/<instance>.json`)."""

    instance: str
    system: str | None  # what /run/current-system is now
    record: str | None  # the record path it handled last
    serial: int | None  # that record's serial
    record_time: str | None
    outcome: str  # one of OUTCOMES
    reason: str
    started: str
    finished: str
    applied_serial: int | None


# Records ------------------------------------------------------------------------------------

def check_line(check: Check) -> str:
    """A check's line (without its newline); a command or URL that holds a tab or a line break
    cannot be written, and is bad input naming the check."""
    head = f"check\t{check.name}\t{check.timeout}\t{check.retries}\t{check.interval}"
    if check.http is not None:
        what = check.http
        statuses = ",".join(str(s) for s in check.status) if check.status else "-"
        fields = f"http\t{what}\t{statuses}"
    else:
        what = check.command or ""
        fields = f"command\t{what}"
    if not _CHECK_NAME.fullmatch(check.name) or "\t" in what or "\n" in what or "\r" in what or not what:
        raise InputError(f"check {check.name!r}: a pull-mode record holds each check on one line: its "
                         f"{'URL' if check.http is not None else 'command'} must be non-empty, without a tab "
                         "or a line break")
    return f"{head}\t{fields}"


def render_record(record: Record) -> str:
    """The record's content, exactly as docs/pull.md lays it out."""
    for key, value in (("instance", record.instance), ("system", record.system), ("time", record.time),
                       ("run", record.run)):
        if "\t" in value or "\n" in value:
            raise InputError(f"record {key} {value!r}: holds a tab or a line break")
    lines = [f"format\t{FORMAT}", f"instance\t{record.instance}", f"system\t{record.system}",
             f"serial\t{record.serial}", f"time\t{record.time}", f"wave\t{record.wave}", f"run\t{record.run}",
             *(check_line(c) for c in sorted(record.checks, key=lambda c: c.name))]
    return "".join(f"{line}\n" for line in lines)


def _number(text: str, what: str) -> int:
    if not _SERIAL.fullmatch(text):
        raise RecordError(f"record: {what} {text!r} is not a decimal integer")
    return int(text)


def _time(text: str, what: str) -> str:
    try:
        time.strptime(text, TIME_FORMAT)
    except ValueError:
        raise RecordError(f"{what} {text!r} is not a UTC time as {TIME_FORMAT}") from None
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text):
        raise RecordError(f"{what} {text!r} is not a UTC time as {TIME_FORMAT}")
    return text


def _parse_check(fields: list[str], number: int) -> Check:
    where = f"record: line {number}"
    if len(fields) < 6:
        raise RecordError(f"{where}: a check line has too few fields")
    name, timeout, retries, interval, kind, *rest = fields
    if not _CHECK_NAME.fullmatch(name):
        raise RecordError(f"{where}: check name {name!r} is not allowed")
    numbers = [_number(v, f"check {name} {k}") for k, v in
               (("timeout", timeout), ("retries", retries), ("interval", interval))]
    if kind == "command" and len(rest) == 1 and rest[0]:
        return Check(name, command=rest[0], timeout=numbers[0], retries=numbers[1], interval=numbers[2])
    if kind == "http" and len(rest) == 2 and rest[0]:
        url, statuses = rest
        codes = () if statuses == "-" else tuple(_number(s, f"check {name} status") for s in statuses.split(","))
        return Check(name, http=url, timeout=numbers[0], retries=numbers[1], interval=numbers[2], status=codes)
    raise RecordError(f"{where}: check {name!r} is neither `command TEXT` nor `http URL STATUSES`")


def parse_record(text: str) -> Record:
    """The record `text` holds, or a `RecordError` that says what is wrong with it: any line
    out of order, missing, extra or malformed, or text not ending in a newline."""
    if not text.endswith("\n"):
        raise RecordError("record: does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < len(_KEYS):
        raise RecordError(f"record: {len(lines)} line(s), expected at least {len(_KEYS)}")
    values: dict[str, str] = {}
    for number, (key, line) in enumerate(zip(_KEYS, lines, strict=False), 1):
        found, tab, value = line.partition("\t")
        if found != key or not tab:
            raise RecordError(f"record: line {number} is not `{key}<TAB>…` ({line[:60]!r})")
        if "\t" in value or not value:
            raise RecordError(f"record: line {number}: {key} must be one non-empty field")
        values[key] = value
    if values["format"] != FORMAT:
        raise RecordError(f"record: format {values['format']!r}, expected {FORMAT}")
    if not _INSTANCE.fullmatch(values["instance"]):
        raise RecordError(f"record: instance {values['instance']!r} is not an instance name")
    if not _STORE_PATH.fullmatch(values["system"]):
        raise RecordError(f"record: system {values['system']!r} is not a store path")
    if not _RUN.fullmatch(values["run"]):
        raise RecordError(f"record: run {values['run']!r} is not 12 lowercase hex digits")
    wave = _number(values["wave"], "wave")
    if wave < 1:
        raise RecordError("record: wave 0: waves count from 1")
    checks: list[Check] = []
    for number, line in enumerate(lines[len(_KEYS):], len(_KEYS) + 1):
        key, _, rest = line.partition("\t")
        if key != "check":
            raise RecordError(f"record: line {number} is not a check line ({line[:60]!r})")
        checks.append(_parse_check(rest.split("\t"), number))
    names = [c.name for c in checks]
    if names != sorted(names) or len(set(names)) != len(names):
        raise RecordError("record: its checks are not in name order, each once")
    return Record(instance=values["instance"], system=values["system"], serial=_number(values["serial"], "serial"),
                  time=_time(values["time"], "record: time"), wave=wave, run=values["run"], checks=tuple(checks))


def record_name(instance: str, serial: int) -> str:
    """The record's store path name: `nix-hive-record-<instance>-<serial>`, the instance cut to
    its first NAME_KEEP characters when the name would pass NAME_LIMIT (the content's instance
    is what counts)."""
    name = f"{NAME_PREFIX}{instance}-{serial}"
    return name if len(name) <= NAME_LIMIT else f"{NAME_PREFIX}{instance[:NAME_KEEP]}-{serial}"


def serial_of(path: str) -> int | None:
    """The serial a record's store path names (its name's last part), or None when `path` is
    no record's path."""
    if not _STORE_PATH.fullmatch(path):
        return None
    name = path.split("-", 1)[1]
    found = re.fullmatch(rf"{NAME_PREFIX}.+-({_SERIAL.pattern})", name)
    return int(found.group(1)) if found else None


def next_serial(now_ms: int, current: int | None) -> int:
    """The serial of a new record: the time in milliseconds since the epoch, unless the record
    the pointer names now has that or more (a clock set back, two runs in one millisecond):
    then one more than it. A host refuses any serial not above the one it applied."""
    return now_ms if current is None else max(now_ms, current + 1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def utc(seconds: float | None = None) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(seconds))


def seconds_of(stamp: str) -> float:
    """Seconds since the epoch of a UTC `TIME_FORMAT` stamp."""
    return float(calendar.timegm(time.strptime(stamp, TIME_FORMAT)))


# Pointers -----------------------------------------------------------------------------------

def render_pointer(record_path: str) -> str:
    return f"{record_path}\n"


def parse_pointer(text: str) -> str:
    """The record path a pointer names (one line: the path, then a newline)."""
    path = text.removesuffix("\n")
    if "\n" in path or serial_of(path) is None:
        raise RecordError(f"pointer: not one record store path ({text[:80]!r})")
    return path


# Layout -------------------------------------------------------------------------------------

def pointer_url(base: str, instance: str) -> str:
    return f"{base.rstrip('/')}/nix-hive/pointers/{instance}"


def status_url(base: str, instance: str) -> str:
    return f"{base.rstrip('/')}/nix-hive/status/{instance}.json"


# Status documents ---------------------------------------------------------------------------

def _optional(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise RecordError(f"status: {key} is not a {kind.__name__} or null")
    return value


def parse_status(text: str | bytes) -> AgentStatus:
    """An agent's status document, or a `RecordError` saying what is wrong with it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"status: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RecordError("status: not a JSON object")
    if data.get("format") != STATUS_FORMAT:
        raise RecordError(f"status: format {data.get('format')!r}, expected {STATUS_FORMAT}")
    for key in ("instance", "outcome", "reason", "started", "finished"):
        if not isinstance(data.get(key), str):
            raise RecordError(f"status: {key} is missing or not a string")
    if data["outcome"] not in OUTCOMES:
        raise RecordError(f"status: outcome {data['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    return AgentStatus(instance=data["instance"], system=_optional(data, "system", str),
                       record=_optional(data, "record", str), serial=_optional(data, "serial", int),
                       record_time=_optional(data, "record_time", str), outcome=data["outcome"],
                       reason=data["reason"], started=data["started"], finished=data["finished"],
                       applied_serial=_optional(data, "applied_serial", int))


def render_status(status: AgentStatus) -> str:
    """A status document as an agent writes it (the tests' fake agents write these)."""
    return json.dumps({"format": STATUS_FORMAT, "instance": status.instance, "system": status.system,
                       "record": status.record, "serial": status.serial, "record_time": status.record_time,
                       "outcome": status.outcome, "reason": status.reason, "started": status.started,
                       "finished": status.finished, "applied_serial": status.applied_serial})


def checks_lines(checks: Sequence[Check]) -> list[str]:
    """Every check's line, refusing (InputError naming it) one a record cannot hold."""
    return [check_line(c) for c in sorted(checks, key=lambda c: c.name)]


# The record in the store ------------------------------------------------------------------------

NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's own alphabet (no e, o, u, t)
STORE_DIR = "/nix/store"


def nix_base32(data: bytes) -> str:
    """`data` in Nix's base32, as store path hashes are written (its last bit first)."""
    count = (len(data) * 8 - 1) // 5 + 1
    out = []
    for n in range(count - 1, -1, -1):
        bit = n * 5
        i, j = bit // 8, bit % 8
        value = (data[i] >> j) | ((data[i + 1] << (8 - j)) if i + 1 < len(data) else 0)
        out.append(NIX_BASE32[value & 0x1F])
    return "".join(out)


def record_path(name: str, content: str) -> str:
    """The record's store path: an input-addressed path (no content address, so Nix checks its
    signature: see the module's docstring) whose hash is the first 160 bits of the SHA-256 of
    its name and content, so one record is one path."""
    digest = hashlib.sha256(f"nix-hive-record\0{name}\0{content}".encode()).digest()[:20]
    return f"{STORE_DIR}/{nix_base32(digest)}-{name}"


def _string(data: bytes) -> bytes:
    """A string of Nix's archive and export formats: its length, itself, zeros to 8 bytes."""
    return struct.pack("<Q", len(data)) + data + b"\0" * (-len(data) % 8)


def nar(content: bytes) -> bytes:
    """The NAR of a regular file (not executable) holding `content`."""
    head = b"".join(_string(w) for w in (b"nix-archive-1", b"(", b"type", b"regular", b"contents"))
    return head + _string(content) + _string(b")")


EXPORT_MAGIC = 0x4558494E  # "NIXE"


def export(entries: Sequence[tuple[str, str, Sequence[str]]]) -> bytes:
    """`nix-store --export`'s format of (path, content, references) entries: what
    `nix-store --import` reads (no deriver, no signature)."""
    out = b""
    for path, content, references in entries:
        out += struct.pack("<Q", 1) + nar(content.encode()) + struct.pack("<Q", EXPORT_MAGIC) + _string(path.encode())
        out += struct.pack("<Q", len(references)) + b"".join(_string(r.encode()) for r in references)
        out += _string(b"") + struct.pack("<Q", 0)  # no deriver; no signature
    return out + struct.pack("<Q", 0)
