"""The state file: recorded at once, never lost, never an obstacle, never a way to write
elsewhere. A damaged file is cleaned with one warning (proved through real doit and real Nix,
and over any bytes with hypothesis); a link planted at any of the state's names is one
`error:` line and its target is left alone."""

from __future__ import annotations

import contextlib
import io
import json
import operator
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import doit.dependency
import pytest
from doit.dependency import Dependency, MD5Checker
from doit.task import Task
from doit.tools import check_timestamp_unchanged, config_changed, timeout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive import cli
from hive.errors import UnsafeStateError
from hive.state import (
    COMPACT_NAME,
    DOIT_KEYS,
    FORMAT,
    JournalDB,
    Lock,
    load,
    locked,
    read,
    valid_record,
    write_compact,
)
from tests.conftest import STANDIN, needs_nix, nix_hive, write_hive

GOOD = {"_values_:": {"result": "/nix/store/a", "_config_changed": "d41d8cd98f00b204e9800998ecf8427e"},
        "checker:": "MD5Checker", "/d/hive.nix": [1700000000.5, 12, "0" * 32], "deps:": ["/d/hive.nix"]}


def line(entry: Any) -> bytes:
    return json.dumps(entry).encode() + b"\n"


def header() -> bytes:
    return line({"format": FORMAT})


# The journal ----------------------------------------------------------------------------------


def test_journal_records_each_task_at_once_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "state"
    db = JournalDB(str(path))
    db.set("build:a", "_values_:", {"result": "/nix/store/a"})
    assert load(path) == {}  # not finished yet: doit writes "deps:" last
    db.set("build:a", "deps:", [])
    assert load(path)["build:a"]["_values_:"] == {"result": "/nix/store/a"}
    db.set("build:b", "deps:", [])
    db.remove("build:b")
    assert set(load(path)) == {"build:a"}
    with open(path, "a") as fh:
        fh.write('{"task": "build:c", "data": {"deps:"')  # a kill in the middle of a write
    assert read(path) == (load(path), 0)  # torn last line: dropped, and not worth a warning
    assert set(load(path)) == {"build:a"}
    again = JournalDB(str(path))  # reopening compacts: the torn line is gone, the rest stays
    assert again.get("build:a", "_values_:") == {"result": "/nix/store/a"}
    assert path.read_text().count("\n") == 2
    again.remove_all()
    again.dump()
    assert load(path) == {}


def test_a_second_run_on_the_same_state_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hive.nix").write_text('{ systems.s.configuration = {}; instances.i.system = "s"; }')
    with locked(tmp_path / ".hive.state"):
        assert cli.main(["build", "--no", "build"]) == 2
    assert capsys.readouterr().err == f"error: another nix-hive run is using {tmp_path / '.hive.state'}\n"


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state"
    (tmp_path / "state.d").mkdir(mode=0o755)  # as an older nix-hive (or ssh.prepare) made it
    os.chmod(tmp_path / "state.d", 0o755)
    with locked(path):
        db = JournalDB(str(path))
        db.set("t", "deps:", [])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # appended to a fresh file
        db.dump()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # compacted
    assert stat.S_IMODE((tmp_path / "state.d").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state.d" / "lock").stat().st_mode) == 0o600
    assert not (tmp_path / "state.d" / COMPACT_NAME).exists()


def test_a_compaction_killed_before_its_rename_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    path = tmp_path / "state"
    (tmp_path / "state.d").mkdir()
    (tmp_path / "state.d" / COMPACT_NAME).write_bytes(header() + b'{"task": "half')
    with locked(path):
        write_compact(path, {"t": {"deps:": []}})
    assert load(path) == {"t": {"deps:": []}}


def test_a_checker_change_drops_the_file_states_of_the_other_checker(tmp_path: Path) -> None:
    """doit reads a file's recorded state (MD5Checker.get_state: `state[0]`) before it notices
    the checker changed; the states another checker stored must be gone by then."""
    path = tmp_path / "state"
    path.write_bytes(header() + line({"task": "t", "data": {"checker:": "TimestampChecker", "/f": 1.5,
                                                             "deps:": ["/f"]}}))
    db = JournalDB(str(path))
    assert db.get("t", "/f") == 1.5
    db.set("t", "checker:", "MD5Checker")
    assert db.get("t", "/f") is None and db.get("t", "deps:") == ["/f"]


# A damaged state file -------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000  # beyond the JSON reader's recursion limit
NESTED = {"task": "t", "data": {**GOOD, "_values_:": {"result": "x", "deep": json.loads("[" * 40 + "]" * 40)}}}


def bad(**data: Any) -> bytes:
    return line({"task": "t", "data": {**GOOD, **data}})


# What each damage would do to the reader (before) or to doit, given the record.
DAMAGE: dict[str, bytes] = {
    "not UTF-8": b'{"task": "t", "data": {"deps:": ["\xff\xfe"]}}\n',  # UnicodeDecodeError
    "not JSON": b"hello\n",
    "JSON too deep": DEEP.encode() + b"\n",  # RecursionError
    "integer too long": b'{"task": "t", "data": {"/f": [' + b"9" * 5000 + b', 1, "x"]}}\n',
    "NaN": b'{"task": "t", "data": {"/d/hive.nix": [NaN, 12, "x"]}}\n',
    "a list": b"[1, 2]\n",
    "task not a string": line({"task": 7, "data": GOOD}),
    "data not a dict": line({"task": "t", "data": [1]}),
    "unknown entry": line({"task": "t", "data": GOOD, "extra": 1}),
    "reset not true": line({"reset": "yes"}),
    "deps: not a list": bad(**{"deps:": 5}),  # set(5)
    "deps: not strings": bad(**{"deps:": [["/d/hive.nix"]]}),  # unhashable
    "file state short": bad(**{"/d/hive.nix": [1700000000.5, 12]}),  # timestamp, size, md5 = state
    "file state a string": bad(**{"/d/hive.nix": "abc"}),
    "file state without checker": line({"task": "t", "data": {"/d/hive.nix": 5, "deps:": ["/d/hive.nix"]}}),
    "_values_: a list": bad(**{"_values_:": [1]}),  # values.get(...)
    "_config_changed not a digest": bad(**{"_values_:": {"_config_changed": {"a": 1}}}),
    "success-time not a number": bad(**{"_values_:": {"success-time": "now"}}),  # time() - last
    "checker: not a string": bad(**{"checker:": 5}),
    "result: a number": bad(**{"result:": 5}),
    "nested garbage": line(NESTED),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_line_is_dropped_with_one_warning(damage: bytes, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state"
    path.write_bytes(header() + line({"task": "a", "data": GOOD}) + damage + line({"task": "b", "data": GOOD}))
    assert load(path) == {"a": GOOD, "b": GOOD}
    assert capsys.readouterr().err == (f"warning: {path}: 1 unreadable line dropped "
                                       "(the state only spares work; those steps will run again)\n")
    JournalDB(str(path)).dump()  # the compaction writes the cleaned state
    assert read(path) == ({"a": GOOD, "b": GOOD}, 0)


def test_every_damaged_line_counts_once_in_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state"
    path.write_bytes(header() + b"".join(DAMAGE.values()) + line({"task": "a", "data": GOOD}) + b"\n\n"
                     + b'{"task": "torn", "da')
    assert load(path) == {"a": GOOD}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{len(DAMAGE)} unreadable lines dropped" in err


def test_shapes_doit_stores_are_kept() -> None:
    assert valid_record(GOOD)
    assert valid_record({"checker:": "TimestampChecker", "/f": 1700000000.5, "deps:": ["/f"]})
    assert valid_record({"checker:": "MyChecker", "/f": {"anything": [1]}, "deps:": ["/f"], "ignore:": "1"})
    assert valid_record({"result:": {"path": "/nix/store/p"}, "_values_:": {"/.st_mtime": 5}})
    assert valid_record({"_values_:": None, "result:": "0" * 32})
    assert not valid_record({"_values_:": {"/.st_mtime": "5"}})


# Through real doit (and real Nix): a damaged state never stops nix-hive -----------------------

SMALL = f"""
{{
  paths.nixpkgs = {STANDIN};
  systems.x.configuration = {{ networking.hostName = "x"; }};
  instances.i.system = "x";
}}
"""


def damaged(good: bytes, build_x: dict[str, Any]) -> dict[str, bytes]:
    """Each kind of damage, aimed at the record doit will read (`build:x`), so that a reader
    that let it through would hand doit a value it trips over."""
    records = good.splitlines(keepends=True)
    mine = next(i for i, r in enumerate(records) if json.loads(r).get("task") == "build:x")
    files = [k for k in build_x if k not in DOIT_KEYS]

    def replace(**data: Any) -> bytes:
        return b"".join(records[:mine]) + line({"task": "build:x", "data": {**build_x, **data}}) \
            + b"".join(records[mine + 1:])

    return {
        "not UTF-8": good + b'{"task": "build:x", "\xff": 1}\n',
        "JSON of the wrong shape": good + b'[{"task": "build:x"}]\n',
        "task not a string": good + line({"task": ["build:x"], "data": build_x}),
        "JSON too deep": good + DEEP.encode() + b"\n",
        "deps: not strings": replace(**{"deps:": [[f] for f in files]}),
        "file state of the wrong shape": replace(**{f: [1, 2] for f in files}),
        "_values_: not a dict": replace(**{"_values_:": ["result", build_x["_values_:"]["result"]]}),
        "nested garbage": replace(**{"_values_:": {**build_x["_values_:"], "x": json.loads("[" * 50 + "]" * 50)}}),
    }


@needs_nix
def test_nix_hive_runs_on_any_damaged_state(tmp_path: Path) -> None:
    hive = write_hive(tmp_path / "h", SMALL)
    first = nix_hive("build", "-c", str(hive))
    assert first.returncode == 0, first.stderr
    path = hive.parent / ".hive.state"
    good = path.read_bytes()
    build_x = load(path)["build:x"]
    assert [k for k in build_x if k not in DOIT_KEYS]  # the deployment's files are doit file_deps
    for kind, text in damaged(good, build_x).items():
        path.write_bytes(text)
        run = nix_hive("build", "--no", "build", "-c", str(hive))
        assert run.returncode == 0, (kind, run.stderr)
        assert "Traceback" not in run.stderr, kind
        warnings = [ln for ln in run.stderr.splitlines() if ln.startswith("warning:")]
        assert warnings == [f"warning: {path}: 1 unreadable line dropped "
                            "(the state only spares work; those steps will run again)"], (kind, run.stderr)
        assert read(path).dropped == 0, kind  # cleaned for good
        assert json.loads(run.stdout)["systems"]["x"]["result"] == build_x["_values_:"]["result"], kind


# Any bytes ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)
FILES = st.sampled_from(["/d/hive.nix", "/d/b.nix", "rel.nix"])
NUMBER = st.floats(allow_nan=False, allow_infinity=False) | st.integers()
MD5_STATE = st.tuples(NUMBER, st.integers(), st.text(max_size=4)).map(list)

VALUES = st.fixed_dictionaries({}, optional={
    "_config_changed": st.text(max_size=32), "success-time": NUMBER, "/.st_mtime": NUMBER,
    "result": st.text(max_size=8), "x": JSON})
# Records of the shapes doit stores; the same with one value replaced by any JSON (the case
# that tells which check matters); and any dict at all.
GOOD_RECORD = st.fixed_dictionaries({}, optional={
    "deps:": st.lists(FILES, max_size=3),
    "checker:": st.sampled_from(["MD5Checker", "TimestampChecker", "OtherChecker", ""]),
    "ignore:": st.just("1"),
    "_values_:": VALUES,
    "result:": st.text(max_size=8) | st.dictionaries(st.text(max_size=4), JSON, max_size=2),
    "/d/hive.nix": MD5_STATE | NUMBER,
    "rel.nix": MD5_STATE | NUMBER,
})
FAULTS = ["deps:", "checker:", "ignore:", "_values_:", "result:", "/d/hive.nix", "rel.nix",
          "_config_changed", "success-time", "/.st_mtime"]


def one_fault(record: dict[str, Any], key: str, junk: Any) -> dict[str, Any]:
    if key.endswith(":") or key.startswith("/d/") or key == "rel.nix":
        return {**record, key: junk}
    values = record.get("_values_:")
    return {**record, "_values_:": {**(values if isinstance(values, dict) else {}), key: junk}}


RECORD = st.one_of(
    GOOD_RECORD,
    st.builds(one_fault, GOOD_RECORD, st.sampled_from(FAULTS), JSON),
    st.dictionaries(st.sampled_from(sorted(DOIT_KEYS)) | FILES | st.text(max_size=4), JSON, max_size=5))
TASKS = st.sampled_from(["build:a", "build:b"]) | st.text(max_size=4)
ENTRY = st.one_of(
    st.fixed_dictionaries({"task": TASKS, "data": RECORD}),
    st.fixed_dictionaries({"task": TASKS, "data": RECORD}),
    st.fixed_dictionaries({"task": TASKS, "data": RECORD}),
    st.fixed_dictionaries({"task": TASKS | JSON, "data": RECORD | JSON}),
    st.fixed_dictionaries({"task": TASKS, "removed": st.just(True) | JSON}),
    st.fixed_dictionaries({"reset": st.just(True) | JSON}),
    st.fixed_dictionaries({"format": st.just(FORMAT) | JSON}),
    JSON)
LINE = ENTRY.map(lambda e: json.dumps(e).encode()) | st.binary(max_size=24)
STATE_BYTES = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.lists(LINE, max_size=8), st.booleans()).map(lambda t: b"\n".join(t[0]) + (b"\n" if t[1] else b"")))



def fake_os() -> SimpleNamespace:
    """doit.dependency's view of the files: every one exists, 7 bytes, modified at 3.0; so
    that doit's checker really reads each recorded state (`timestamp, size, md5 = state`)."""
    return SimpleNamespace(path=SimpleNamespace(getmtime=lambda p: 3.0, getsize=lambda p: 7, exists=lambda p: True),
                           stat=lambda p: SimpleNamespace(st_mtime=3.0, st_size=7), error=OSError)


def doit_task(name: str, record: dict[str, Any]) -> Task:
    files = {k for k in record if k not in DOIT_KEYS} | set(record.get("deps:") or [])
    return Task(name, None, file_dep=sorted(files),
                uptodate=[config_changed({"a": 1}), timeout(60), check_timestamp_unchanged("/", cmp_op=operator.ge)])


def exercise_doit(path: Path, raw: bytes) -> None:
    """Every read doit makes of the loaded records, through doit's own code: the values and
    result, the stock up-to-date checks, the status with every reason (get_log), and, as
    after a status that stopped at the first reason, the saving of a success."""
    with mock.patch.object(doit.dependency, "os", fake_os()), \
            mock.patch.object(doit.dependency, "get_file_md5", lambda p: "0" * 32):
        for full in (True, False):
            path.write_bytes(raw)
            dep = Dependency(JournalDB, str(path), checker_cls=MD5Checker)
            tasks = {name: doit_task(name, record) for name, record in read(path).data.items()
                     if "=" not in name}  # doit refuses such a name: it never reads such a record
            for name, task in tasks.items():
                dep.get_values(name)
                dep.get_result(name)
                dep.status_is_ignore(task)
                dep.get_status(task, tasks, get_log=full)
                if not full:
                    task.save_extra_values()
                    dep.save_success(task)
            dep.close()


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "state"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STATE_BYTES)
def test_any_bytes_load_into_records_doit_can_use(raw: bytes) -> None:
    with scratch() as path:
        path.write_bytes(raw)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            data = load(path)
        assert err.getvalue().count("\n") <= 1
        assert all(isinstance(k, str) and isinstance(v, dict) and valid_record(v) for k, v in data.items())
        exercise_doit(path, raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STATE_BYTES)
def test_the_journal_works_on_any_bytes(raw: bytes) -> None:
    with scratch() as path:
        path.write_bytes(raw)
        with contextlib.redirect_stderr(io.StringIO()):
            data = load(path)
            db = JournalDB(str(path))
        assert read(path) == (data, 0)  # compacted: clean, and nothing usable lost
        assert all(db.in_(name) and db.get(name, "deps:") == data[name].get("deps:") for name in data)
        db.set("build:new", "_values_:", {"result": "/nix/store/new"})
        db.set("build:new", "deps:", [])
        assert db.get("build:new", "_values_:") == {"result": "/nix/store/new"}
        db.remove("build:a")
        db.dump()
        expected = {**data, "build:new": {"_values_:": {"result": "/nix/store/new"}, "deps:": []}}
        expected.pop("build:a", None)
        assert read(path) == (expected, 0)


# Links planted at the state's names ----------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A file the links point to; the returned check asserts it is exactly as it was."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    os.chmod(target, 0o644)
    before = target.stat()

    def untouched() -> None:
        after = target.stat()
        assert target.read_text() == "precious\n"
        assert (after.st_mtime_ns, after.st_size, stat.S_IMODE(after.st_mode)) == \
            (before.st_mtime_ns, before.st_size, 0o644)

    yield untouched
    untouched()


PLACES = {"lock": "h/.hive.state.d/lock", "compaction": f"h/.hive.state.d/{COMPACT_NAME}",
          "state file": "h/.hive.state", "state directory": "h/.hive.state.d"}


def plant(tmp_path: Path, place: str) -> Path:
    link = tmp_path / PLACES[place]
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path / "victim", link)
    return link


@pytest.mark.parametrize("place", PLACES)
def test_a_link_at_any_state_name_is_refused_before_anything_starts(
        place: str, tmp_path: Path, victim: Callable[[], None]) -> None:
    link = plant(tmp_path, place)
    with pytest.raises(UnsafeStateError) as caught:
        Lock(tmp_path / "h" / ".hive.state")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{link} is a symbolic link")
    assert caught.value.exit_code == 2


@needs_nix
@pytest.mark.parametrize("place", PLACES)
def test_nix_hive_refuses_a_planted_link_in_one_line(place: str, tmp_path: Path, victim: Callable[[], None],
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    link = plant(tmp_path, place)
    monkeypatch.chdir(tmp_path / "h")
    (tmp_path / "h" / "hive.nix").write_text('{ systems.s.configuration = {}; instances.i.system = "s"; }')
    assert cli.main(["build", "--no", "build"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {link} is a symbolic link")
    assert link.is_symlink()


@pytest.mark.parametrize("place", ["compaction", "state directory"])
def test_a_compaction_never_writes_through_a_link(place: str, tmp_path: Path, victim: Callable[[], None]) -> None:
    link = plant(tmp_path, place)
    with pytest.raises(UnsafeStateError, match=f"^{link} is a symbolic link"):
        write_compact(tmp_path / "h" / ".hive.state", {"t": {"deps:": []}})
    assert not (tmp_path / "h" / ".hive.state").exists()


def test_the_journal_never_writes_through_a_link(tmp_path: Path, victim: Callable[[], None],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A link planted after the lock's check, in the middle of a run: the run goes on, the
    state is not written, one warning says so."""
    path = tmp_path / "h" / ".hive.state"
    path.parent.mkdir()
    write_compact(path, {"a": {"deps:": []}})
    db = JournalDB(str(path))
    os.replace(path, tmp_path / "kept")
    os.symlink(tmp_path / "victim", path)
    db.set("b", "deps:", [])
    db.set("c", "deps:", [])
    db.dump()
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1
    assert warning.startswith(f"warning: {path}: cannot update the state file ({path} is a symbolic link")
    assert load(tmp_path / "kept") == {"a": {"deps:": []}}
    assert db.get("c", "deps:") == []  # the run itself goes on


def test_a_linked_state_file_is_not_read_either(tmp_path: Path, victim: Callable[[], None],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = plant(tmp_path, "state file")
    with pytest.raises(UnsafeStateError, match=f"^{path} is a symbolic link"):
        load(path)
    db = JournalDB(str(path))  # inside doit: a warning, never a traceback
    db.set("a", "deps:", [])
    db.dump()
    assert capsys.readouterr().err.count("\n") == 1


def test_a_hard_link_at_the_state_file_is_left_alone(tmp_path: Path, victim: Callable[[], None]) -> None:
    path = tmp_path / "h" / ".hive.state"
    path.parent.mkdir()
    os.link(tmp_path / "victim", path)
    with locked(path):
        db = JournalDB(str(path))  # the compaction replaces the name: the other one keeps its file
        db.set("a", "deps:", [])
        db.dump()
    assert load(path) == {"a": {"deps:": []}}


def test_a_fifo_at_the_state_file_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "state"
    os.mkfifo(path)
    with pytest.raises(UnsafeStateError, match="is not a regular file"):
        Lock(path)
    with pytest.raises(UnsafeStateError, match="is not a regular file"):
        read(path)
