"""hive/diff.py: store path names read as `nix store diff-closures` reads them, closures
compared, hosts grouped; and the same answers as the real diff-closures of this machine's Nix."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hive import changes, nix, process, remote, resources, ssh, text
from hive.diff import (
    ClosureDiff,
    HostFacts,
    Kind,
    State,
    StoreName,
    compare_versions,
    delta,
    diff_closures,
    fetch_bytes,
    group_hosts,
    size,
    span,
)
from hive.errors import HiveError
from hive.model import Hive, Instance, System, frozen_map
from tests.conftest import needs_nix
from tests.fleet import closure_bytes, closure_sizes, nix_env


def p(name: str, tag: str = "a") -> str:
    """A store path named `name` (`tag` makes two paths of one name differ)."""
    return f"/nix/store/{tag * 32}-{name}"


@pytest.mark.parametrize(("path", "name", "version", "output"), [
    (p("openssl-3.0.13"), "openssl", "3.0.13", ""),
    (p("openssl-3.0.13-dev"), "openssl", "3.0.13", "dev"),  # an output suffix goes first
    (p("openssl-3.0.13-man"), "openssl", "3.0.13", "man"),
    (p("glibc-2.39-52-bin"), "glibc", "2.39-52", "bin"),
    (p("gcc-13.2.0-lib64"), "gcc", "13.2.0", "lib64"),  # the two outputs with digits
    (p("python3-3.11.7"), "python3", "3.11.7", ""),  # digits in the name: split at `-` + digit
    (p("perl5.38.2-Foo-Bar-1.0"), "perl5.38.2-Foo-Bar", "1.0", ""),
    (p("foo-unstable-2024-01-01"), "foo-unstable", "2024-01-01", ""),  # as diff-closures: no output here
    (p("foo-unstable"), "foo", "", "unstable"),  # and here `unstable` looks like an output
    (p("etc"), "etc", "", ""),  # no version
    (p("system-units"), "system", "", "units"),  # Nix cannot tell this from an output either
    (p("unit-sshd.service"), "unit-sshd.service", "", ""),
    (p("nixos-system-www-26.11.20240101.abcdef0"), "nixos-system-www", "26.11.20240101.abcdef0", ""),
    (p("linux-6.6.30-modules-shrunk"), "linux", "6.6.30-modules", "shrunk"),  # the output first, then at -6
    (p("hello-2.12.1.drv"), "hello", "2.12.1.drv", ""),
    (p("x-_y"), "x", "_y", ""),  # `-` then anything but a letter splits, not only a digit
    ("openssl-3.0.13", "openssl", "3.0.13", ""),  # a bare name, without store or hash
])
def test_store_names_split_as_diff_closures_splits_them(path: str, name: str, version: str, output: str) -> None:
    assert StoreName.parse(path) == StoreName(name, version, output)


@pytest.mark.parametrize(("older", "newer"), [
    ("3.0.13", "3.0.15"), ("1.9", "1.10"), ("2.3a", "2.3.1"), ("1.0pre1", "1.0"), ("2023-12-31", "2024-01-01"),
    ("1.0", "1.0.1"), ("", "1"), ("a", "b"),
])
def test_versions_are_ordered_as_nix_orders_them(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1 and compare_versions(newer, older) == 1
    assert compare_versions(newer, newer) == 0


def test_a_diff_lists_version_changes_additions_and_removals_and_the_sizes() -> None:
    old = {p("openssl-3.0.13"): 6_000_000, p("openssl-3.0.13-bin"): 1_000_000, p("curl-8.5.0"): 500_000,
           p("gone-1.0"): 30_000, p("etc"): 10_000, p("same-1.0"): 100_000, p("grow-2.0"): 100_000,
           p("nixos-system-www-1"): 5_000}
    new = {p("openssl-3.0.15", "b"): 6_100_000, p("openssl-3.0.15-bin", "b"): 1_000_000,
           p("curl-8.4.0", "b"): 490_000, p("nginx-1.24.0"): 200_000, p("etc", "b"): 10_100,
           p("same-1.0"): 100_000, p("grow-2.0", "b"): 120_000, p("nixos-system-www-2", "b"): 5_000}
    found = diff_closures(old, new)
    shown = {c.name: (c.kind, c.versions(), c.size_delta) for c in found.packages}
    assert shown == {
        "openssl": (Kind.UPGRADED, "3.0.13 → 3.0.15", 100_000),  # two outputs, one version: one line
        "curl": (Kind.DOWNGRADED, "8.5.0 → 8.4.0", -10_000),
        "gone": (Kind.REMOVED, "1.0 → ∅", -30_000),
        "nginx": (Kind.ADDED, "∅ → 1.24.0", 200_000),
        "grow": (Kind.SIZE, "∅ → ∅", 20_000),  # same version, 20 kB more: listed, as diff-closures lists it
        "nixos-system-www": (Kind.UPGRADED, "1 → 2", 0),
    }  # `etc` moved 100 bytes (under 8 KiB) and `same` not at all: not listed
    assert [c.name for c in found.packages] == sorted(shown)  # by name, as diff-closures prints them
    assert found.old_bytes == sum(old.values()) and found.new_bytes == sum(new.values())
    assert found.size_delta == sum(new.values()) - sum(old.values())
    assert (found.old_paths, found.new_paths, found.paths_added, found.paths_removed) == (8, 8, 7, 7)
    assert found.counts() == {Kind.UPGRADED: 2, Kind.DOWNGRADED: 1, Kind.ADDED: 1, Kind.REMOVED: 1, Kind.SIZE: 1}
    assert list(found.counts()) == [Kind.UPGRADED, Kind.DOWNGRADED, Kind.ADDED, Kind.REMOVED, Kind.SIZE]


def test_several_versions_of_one_name_show_only_those_that_changed() -> None:
    old = {p("zlib-1.2.13"): 100_000, p("zlib-1.3"): 100_000, p("zlib-1.3-dev"): 50_000}
    new = {p("zlib-1.3"): 100_000, p("zlib-1.3-dev"): 50_000, p("zlib-1.3.1"): 100_000, p("zlib-1.4"): 100_000}
    [change] = diff_closures(old, new).packages
    assert (change.kind, change.before, change.after) == (Kind.CHANGED, ("1.2.13",), ("1.3.1", "1.4"))
    assert change.versions() == "1.2.13 → 1.3.1, 1.4" and change.size_delta == 100_000
    # a version added beside one kept is a change, not an addition: the name was there
    [kept] = diff_closures({p("zlib-1.3"): 1}, {p("zlib-1.3"): 1, p("zlib-1.4"): 1}).packages
    assert (kept.kind, kept.versions()) == (Kind.CHANGED, "∅ → 1.4")


def test_the_same_name_and_version_twice_in_a_closure_counts_both_paths() -> None:
    """Two paths of one name and version (a package built twice with other inputs): one line,
    both sizes; one of them replaced is a size change only."""
    old = {p("libfoo-1.0", "a"): 40_000, p("libfoo-1.0", "b"): 40_000}
    new = {p("libfoo-1.0", "a"): 40_000, p("libfoo-1.0", "c"): 60_000}
    [change] = diff_closures(old, new).packages
    assert (change.kind, change.before, change.after, change.size_delta) == (Kind.SIZE, (), (), 20_000)
    assert diff_closures(old, old).packages == ()


def test_empty_versions_show_as_epsilon_and_a_new_host_gets_every_package() -> None:
    new = {p("etc"): 10_000, p("hello-2.12"): 50_000, p("hello-2.12-man"): 9_000}
    found = diff_closures({}, new)
    assert [(c.name, c.kind, c.versions()) for c in found.packages] == [
        ("etc", Kind.ADDED, "∅ → ε"), ("hello", Kind.ADDED, "∅ → 2.12")]
    assert found.size_delta == found.new_bytes == 69_000 and found.old_paths == 0


def test_bytes_to_fetch_are_the_sizes_of_the_new_paths_a_host_lacks() -> None:
    new = {p("a-1"): 10, p("b-1"): 200, p("c-1"): 3000}
    assert fetch_bytes(new, [p("b-1"), p("c-1")]) == 3200
    assert fetch_bytes(new, [p("b-1"), p("b-1"), p("other-1")]) == 200  # once each; not of the closure: nothing
    assert fetch_bytes(new, []) == 0


def test_hosts_group_by_old_and_new_system() -> None:
    a, b, c, x = p("nixos-system-www-1"), p("nixos-system-www-2"), p("nixos-system-db-1"), p("nixos-system-db-2")
    facts = [HostFacts("www-1", "www", b, current=a, missing=frozenset({"m1"})),
             HostFacts("db-1", "db", x, current=c),
             HostFacts("www-2", "www", b, current=a),
             HostFacts("www-3", "www", b, current=b),
             HostFacts("www-4", "www", b, reachable=False, reason="Connection timed out"),
             HostFacts("www-5", "www", b, current=None),
             HostFacts("www-6", "www", b, current=a),
             HostFacts("db-2", "db", None, reason="system db could not be built")]
    groups, left = group_hosts(facts)
    assert [(g.old, g.new, g.instances, g.systems, g.state) for g in groups] == [
        (a, b, ("www-1", "www-2", "www-6"), ("www",), State.CHANGES),
        (c, x, ("db-1",), ("db",), State.CHANGES),
        (b, b, ("www-3",), ("www",), State.UNCHANGED),
        (None, b, ("www-5",), ("www",), State.NEW)]
    assert groups[0].missing == {"www-1": frozenset({"m1"}), "www-2": frozenset(), "www-6": frozenset()}
    assert [(f.instance, f.state) for f in left] == [("www-4", State.UNREACHABLE), ("db-2", State.NOT_BUILT)]
    assert [f.state for f in facts[:3]] == [State.CHANGES] * 3


def test_sizes_read_as_nix_prints_them() -> None:
    assert [size(n) for n in (0, 512, 8192, 14_234, 1_258_291, 3 * 1024 ** 3)] == [
        "0 B", "512 B", "8.0 KiB", "13.9 KiB", "1.2 MiB", "3.0 GiB"]
    assert [delta(n) for n in (0, 14_234, -2 * 1024 ** 2)] == ["+0 B", "+13.9 KiB", "-2.0 MiB"]
    assert span([]) == "-" and span([2048, 2048]) == "2.0 KiB" and span([3072, 1024]) == "1.0…3.0 KiB"
    assert span([512, 2048]) == "512 B…2.0 KiB"


def test_host_lists_are_compacted_into_runs() -> None:
    www = [f"www-{n}" for n in range(1, 121)]
    assert text.compact(www) == "www-1…www-120"
    assert text.compact(["www-10", "db", "www-9", "www-8", "www-2", "www-1", "www-3", "a7"]) == \
        "a7, db, www-1…www-3, www-8…www-10"
    assert text.compact([f"www-{n:03}" for n in range(98, 103)]) == "www-098…www-102"  # padding kept
    assert text.compact(["www-1", "www-2"]) == "www-1, www-2"  # a run of two stays two names
    assert text.compact(["a1b", "a2b", "a3b"]) == "a1b, a2b, a3b"  # the number must end the name
    assert text.compact([]) == ""


# The real diff-closures ---------------------------------------------------------------------

# Store objects named as the cases above, each a directory of a given size: their closure is the
# root's, which refers to each of them.
NAMES = {
    "old": {"openssl-3.0.13": 20_000, "openssl-3.0.13-dev": 9_000, "python3-3.11.7": 30_000,
            "foo-unstable-2024-01-01": 1_000, "gone-1.0": 12_000, "etc": 2_000, "zlib-1.2.13": 1_000,
            "zlib-1.3": 1_000, "hello-2.12-man": 500, "grow-1.0": 1_000, "same-1.0": 500},
    "new": {"openssl-3.0.15": 21_000, "openssl-3.0.15-dev": 9_000, "python3-3.12.1": 31_000,
            "foo-unstable-2024-03-01": 1_000, "nginx-1.24.0": 40_000, "etc": 2_000, "zlib-1.3": 1_000,
            "zlib-1.3.1": 1_000, "hello-2.12-man": 500, "grow-1.0": 30_000, "same-1.0": 500},
}


ROOTS = {"old": "1", "new": "2"}  # the roots' own versions


def _closure_nix(side: str, directory: Path) -> Path:
    parts = [f'(mk "{name}" {bytes_})' for name, bytes_ in NAMES[side].items()]
    # `same-1.0` and `hello-2.12-man` are the same derivations on both sides: the same paths
    expr = f"""
      let
        mk = name: n: derivation {{
          inherit name; system = builtins.currentSystem; builder = "/usr/bin/sh";
          args = [ "-c" "/usr/bin/head -c ${{toString n}} /dev/zero > $out" ];
        }};
      in derivation {{
        name = "root-{ROOTS[side]}"; system = builtins.currentSystem; builder = "/usr/bin/sh";
        refs = [ {' '.join(parts)} ];
        args = [ "-c" "echo $refs > $out" ];
      }}
    """
    file = directory / f"{side}.nix"
    file.write_text(expr)
    return file


def _realised(file: Path) -> str:
    out = subprocess.run(["nix-build", "--no-out-link", str(file)], capture_output=True, text=True, env=nix_env())
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()



LINE = re.compile(r"^(\S+): (.*?)(?:, ([+-]?\d+(?:\.\d+)? [KMG]iB))?$")


@needs_nix
def test_the_packages_are_those_the_real_diff_closures_lists(tmp_path: Path) -> None:
    """Two closures built by this machine's Nix, compared by `nix store diff-closures` and by
    hive/diff.py: the same names, the same versions on each side, sizes to diff-closures'
    rounding (0.1 KiB)."""
    old, new = (_realised(_closure_nix(side, tmp_path)) for side in ("old", "new"))
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command", "store", "diff-closures", old, new],
                         capture_output=True, text=True, env={**nix_env(), "NO_COLOR": "1"})
    assert out.returncode == 0, out.stderr
    nix_says: dict[str, tuple[str, float | None]] = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", out.stdout).splitlines():
        found = LINE.match(line)
        assert found is not None, line
        name, versions, shown = found.groups()
        if shown is None and re.fullmatch(r"[+-]?\d+(?:\.\d+)? [KMG]iB", versions):  # a size change alone
            versions, shown = "", versions
        kib = float(shown.split()[0]) * {"K": 1, "M": 1024, "G": 1024 ** 2}[shown.split()[1][0]] if shown else None
        nix_says[name] = (versions, kib)
    ours: ClosureDiff = diff_closures(closure_sizes(old), closure_sizes(new))
    mine = {c.name: ("" if c.kind is Kind.SIZE else c.versions(), c.size_delta / 1024 if abs(c.size_delta) >= 8192
                     else None) for c in ours.packages}
    assert set(mine) == set(nix_says), (mine, out.stdout)
    for name, (versions, kib) in nix_says.items():
        my_versions, my_kib = mine[name]
        assert my_versions == versions, (name, mine[name], versions)
        if kib is None or my_kib is None:
            assert kib is my_kib is None, (name, mine[name], kib)
        else:
            assert abs(my_kib - kib) <= 0.051, (name, mine[name], kib)
    assert {"openssl", "python3", "foo-unstable", "gone", "nginx", "zlib", "grow", "root"} <= set(mine)
    assert "same" not in mine and "hello" not in mine and "etc" not in mine


# Asking hosts -------------------------------------------------------------------------------

def _host_script(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """hive/host/diff.sh as nix-hive sends it, run here (this machine as the host)."""
    return subprocess.run(["sh", "-c", resources.host_script("diff.sh"), "sh", *args], input=stdin,
                          capture_output=True, text=True, env=nix_env())


@needs_nix
def test_the_host_script_reads_what_a_host_runs_lacks_and_holds(tmp_path: Path) -> None:
    """diff.sh on a real store: the paths it lacks among those sent, and a closure with its
    NAR sizes that add up to `nix path-info -S` and agree with the deployer's own reading
    (hive/nix.py)."""
    root = _realised(_closure_nix("new", tmp_path))
    closure = closure_sizes(root)
    gone = "/nix/store/" + "0" * 32 + "-nixos-system-gone"
    asked = [*sorted(closure), gone]
    out = _host_script("facts", stdin="".join(f"{x}\n" for x in asked))
    assert out.returncode == 0, out.stderr
    found = remote.parse_facts(out.stdout, asked)
    current = os.readlink("/run/current-system") if os.path.islink("/run/current-system") else None
    assert found == remote.Facts(reachable=True, current=current, missing=frozenset({gone}))
    nothing = _host_script("facts")  # no path to check: nix-store is given none, and says nothing
    assert nothing.returncode == 0 and remote.parse_facts(nothing.stdout, []).missing == frozenset()

    listed = _host_script("closure", root)
    assert listed.returncode == 0, listed.stderr
    read = remote.parse_closure(listed.stdout)
    assert read == closure == nix.closure(root, timeout=60)
    assert sum(read.values()) == closure_bytes(root)
    bad = _host_script("closure", gone)
    assert (bad.returncode, bad.stdout) == (3, "error its store does not hold it\n"), bad
    assert _host_script("nonsense").stdout == "error usage: diff.sh facts | closure PATH\n"


class Answers:
    """process.run faked: each call's argv and input recorded, answered by `answer`."""

    def __init__(self, answer: process.Result | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[list[str], Any]] = []

    def __call__(self, argv: Sequence[str], *, input: Any = None, **_: Any) -> process.Result:
        self.calls.append((list(argv), input))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _remote(tmp_path: Path) -> remote.Remote:
    h = Hive(file=tmp_path / "hive.nix", shown="hive.nix", paths=frozen_map(),
             systems={"s": System("s", frozen_map())}, instances={"w": Instance("w", "s", host_key="ssh-ed25519 AAAA")})
    return remote.Remote(ssh.prepare(h, tmp_path), "w", hive=h)


def test_a_host_is_asked_once_with_the_paths_on_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = _remote(tmp_path)
    fake = Answers(process.Result("current /nix/store/a-old\nmissing /nix/store/b-y\nmissing /nix/store/zz\nend\n",
                                  "", 0))
    monkeypatch.setattr(process, "run", fake)
    found = w.facts(["/nix/store/b-y", "/nix/store/a-x"], timeout=45)
    assert found == remote.Facts(True, "/nix/store/a-old", frozenset({"/nix/store/b-y"}))  # only what was asked
    [(argv, stdin)] = fake.calls
    assert argv[:2] == ["ssh", "-F"] and argv[-2] == "w"
    words = shlex.split(argv[-1])
    assert words[:3] == ["sh", "-c", resources.host_script("diff.sh")] and words[3:] == ["sh", "facts"]
    assert stdin == "/nix/store/b-y\n/nix/store/a-x\n"  # no path on the command line
    never = remote.parse_facts("current \nend\n", [])
    assert never == remote.Facts(True, None, frozenset())


@pytest.mark.parametrize(("answer", "reason"), [
    (process.Result("", "ssh: connect to host 10.0.0.9 port 22: Connection timed out\r\n", 255),
     "ssh: connect to host 10.0.0.9 port 22: Connection timed out"),
    (process.Result("", "Host key verification failed.\n", 255), "Host key verification failed."),
    (process.Result("current /nix/store/a\nerror nix-store --check-validity failed\n", "boom\n", 3),
     "nix-store --check-validity failed"),
    (process.Result("current /nix/store/a\nmissing /nix/store/b\n", "", 0), "its answer was cut short"),
    (process.Result("", "sh: 1: xargs: not found\n", 127), "sh: 1: xargs: not found"),
    (process.ProcessTimeoutError(["ssh"], 45, ""), "no answer within 45 s"),
])
def test_a_host_that_cannot_be_asked_says_why_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         answer: process.Result | Exception, reason: str) -> None:
    monkeypatch.setattr(process, "run", Answers(answer))
    found = _remote(tmp_path).facts(["/nix/store/b"], timeout=45)
    assert not found.reachable and found.reason.startswith(reason) and "\n" not in found.reason, found


def test_a_closure_read_on_a_host_is_checked_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = _remote(tmp_path)
    fake = Answers(process.Result("path /nix/store/a-x\npath /nix/store/b-y\nsize 10\nsize 20\nend\n", "", 0))
    monkeypatch.setattr(process, "run", fake)
    assert w.closure("/nix/store/a-x", timeout=85) == {"/nix/store/a-x": 10, "/nix/store/b-y": 20}
    assert shlex.split(fake.calls[0][0][-1])[3:] == ["sh", "closure", "/nix/store/a-x"]
    for cut in ("path /nix/store/a-x\npath /nix/store/b-y\nsize 10\nend\n", "path /nix/store/a-x\nsize 10\n",
                "end\n", "path /nix/store/a-x\nsize ten\nend\n"):
        monkeypatch.setattr(process, "run", Answers(process.Result(cut, "", 0)))
        with pytest.raises(HiveError, match=r"^w: its answer about a closure does not add up"):
            w.closure("/nix/store/a-x", timeout=85)
    monkeypatch.setattr(process, "run", Answers(process.Result("error its store does not hold it\n", "", 3)))
    with pytest.raises(HiveError, match=r"^w: its store does not hold it$"):
        w.closure("/x", timeout=85)


def test_the_deployer_reads_a_closure_with_the_path_info_closure_bytes_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """One `nix path-info --json --recursive` (nix.closure_argv), each path with its NAR size,
    in either shape Nix prints (a list up to 2.18, an object keyed by path since 2.19)."""
    old = json.dumps([{"path": "/nix/store/a", "narSize": 100}, {"path": "/nix/store/b", "narSize": 20}])
    new = json.dumps({"/nix/store/a": {"narSize": 100}, "/nix/store/b": {"narSize": 20}, "/nix/store/c": None})
    for printed in (old, new):
        calls = Answers(process.Result(printed, "", 0))
        monkeypatch.setattr(process, "run", calls)
        assert nix.closure("/nix/store/r", timeout=7) == {"/nix/store/a": 100, "/nix/store/b": 20}
        assert [argv for argv, _ in calls.calls] == [nix.closure_argv(["/nix/store/r"])]


# What a person and a program read -------------------------------------------------------------

def _fleet() -> changes.FleetDiff:
    """A fleet's diff as hive/changes.py makes it: 120 www hosts moved A -> B, one already on B,
    one new, a db host, one www host unreachable and one whose system was not built."""
    a, b = p("nixos-system-www-26.11.1", "a"), p("nixos-system-www-26.11.2", "b")
    db1, db2 = p("nixos-system-database-server-26.11.1", "c"), p("nixos-system-database-server-26.11.2", "d")
    old = {a: 5_000, p("openssl-3.0.13"): 6_000_000, p("nginx-1.24.0"): 1_200_000, p("etc"): 10_000}
    new = {b: 5_000, p("openssl-3.0.15", "b"): 6_100_000, p("nginx-1.26.1", "b"): 1_250_000, p("etc"): 10_000,
           p("very-long-package-name-for-the-table-to-cut-1.0"): 30_000_000}
    www = [f"www-{n}" for n in range(1, 121)]
    facts = [HostFacts(n, "www", b, current=a, missing=frozenset({b, p("openssl-3.0.15", "b")}) if n != "www-7"
                       else frozenset(new)) for n in www]
    facts += [HostFacts("www-121", "www", b, current=b), HostFacts("www-122", "www", b, current=None,
                                                                     missing=frozenset(new)),
              HostFacts("db-1", "database-server", db2, current=db1),
              HostFacts("www-123", "www", b, reachable=False,
                        reason="ssh: connect to host 10.0.0.123 port 22: Connection timed out (through portico)"),
              HostFacts("cache", "cache", None, reason="system cache was not built")]
    groups, left = group_hosts(facts)
    done = []
    for g in groups:
        if g.new == db2:
            done.append(changes.GroupDiff(g, None, {"db-1": 0},
                                          error="cannot read the old system's closure: db-1: no answer within 85 s"))
            continue
        before = {} if g.old is None else new if g.old == g.new else old
        done.append(changes.GroupDiff(g, diff_closures(before, new),
                                      {h: fetch_bytes(new, g.missing[h]) for h in g.instances},
                                      old_from="deployer" if g.old == a else ""))
    return changes.FleetDiff(tuple(done), tuple(left), tuple(facts))


def test_the_tables_fit_80_columns_and_piped_are_whole() -> None:
    found = _fleet()
    shown = changes.tables(found, 80)
    print(shown)
    lines = shown.splitlines()
    assert max(text.columns(ln) for ln in lines) <= 79, shown
    assert lines[0].split() == ["hosts", "system", "packages", "closure", "fetch"]
    www = next(ln for ln in lines if ln.startswith("www-1…www-120"))
    assert "3 upgraded, 1 added" in www and "+28.8 MiB" in www and "5.8…35.6 MiB" in www, www
    assert any("unchanged" in ln and ln.startswith("www-121") for ln in lines)
    assert any("new host: 5 packages" in ln for ln in lines)
    assert any(ln.startswith("db-1") and "not compared (below)" in ln for ln in lines)
    assert any(ln.startswith("db-1") and "cannot read the old system's closure: db-1: no answe" in ln
               for ln in lines)
    assert "www-1…www-120 (www), 120 hosts:" in lines
    assert "  nixos-system-www-26.11.1 (aaaaaaa…) → nixos-system-www-26.11.2 (bbbbbbb…)" in lines
    openssl = next(ln for ln in lines if ln.startswith("openssl"))
    assert openssl.split() == ["openssl", "upgraded", "3.0.13", "3.0.15", "+97.7", "KiB"]
    assert any(ln.startswith("www-123") and "unreachable  ssh: connect to host 10.0.0.123" in ln for ln in lines)
    assert any(ln.startswith("cache") and "not built" in ln for ln in lines)
    whole = changes.tables(found, None)
    assert p("nixos-system-www-26.11.1", "a") in whole and "(through portico)" in whole
    assert "very-long-package-name-for-the-table-to-cut" in whole


def test_the_json_has_every_field() -> None:
    found = _fleet()
    data = json.loads(json.dumps(found.as_json()))
    www, unchanged, new, db = data["groups"]
    assert www["instances"] == [f"www-{n}" for n in range(1, 121)] and www["state"] == "changes"
    assert www["systems"] == ["www"] and www["oldFrom"] == "deployer" and www["error"] == ""
    assert {pk["name"]: (pk["kind"], pk["before"], pk["after"]) for pk in www["packages"]} == {
        "nginx": ("upgraded", ["1.24.0"], ["1.26.1"]), "openssl": ("upgraded", ["3.0.13"], ["3.0.15"]),
        "nixos-system-www": ("upgraded", ["26.11.1"], ["26.11.2"]),
        "very-long-package-name-for-the-table-to-cut": ("added", [], ["1.0"])}
    assert www["closure"]["sizeDelta"] == www["closure"]["newBytes"] - www["closure"]["oldBytes"] == 30_150_000
    assert www["fetch"]["min"] == 6_105_000 and www["fetch"]["max"] == 37_365_000
    assert www["fetch"]["instances"]["www-7"] == 37_365_000
    assert unchanged["state"] == "unchanged" and unchanged["packages"] == [] and unchanged["oldFrom"] is None
    assert new["state"] == "new" and new["old"] is None and len(new["packages"]) == 5
    assert db["closure"] is None and db["error"] == "cannot read the old system's closure: db-1: no answer within 85 s"
    hosts = {h["instance"]: h for h in data["hosts"]}
    assert hosts["www-7"] == {"instance": "www-7", "system": "www", "state": "changes",
                              "current": www["old"], "expected": www["new"], "group": 0,
                              "fetchBytes": 37_365_000, "reason": ""}
    assert hosts["www-123"]["state"] == "unreachable" and hosts["www-123"]["group"] is None
    assert hosts["cache"]["state"] == "not built" and hosts["db-1"]["reason"].startswith("cannot read the old")
    assert not found.complete


def test_a_closure_is_read_once_from_the_first_place_that_answers() -> None:
    closures = changes._Closures()
    asked: list[str] = []

    def reader(where: str, answer: dict[str, int] | None) -> tuple[str, Any]:
        def read() -> dict[str, int]:
            asked.append(where)
            if answer is None:
                raise HiveError(f"{where}: no answer within 85 s")
            return answer
        return where, read

    found = closures.get("/nix/store/a-old", [reader("db-1", None), reader("db-2", {"/nix/store/a-old": 5})])
    assert found == ({"/nix/store/a-old": 5}, "db-2") and asked == ["db-1", "db-2"]
    assert closures.get("/nix/store/a-old", [reader("db-3", None)]) == found and asked == ["db-1", "db-2"]
    with pytest.raises(HiveError, match=r"^x: no answer within 85 s; y: no answer within 85 s$"):
        closures.get("/nix/store/b", [reader("x", None), reader("y", None)])
    with pytest.raises(HiveError, match=r"^x: no answer"):  # remembered, not asked again
        closures.get("/nix/store/b", [reader("z", {})])
    assert asked == ["db-1", "db-2", "x", "y"]
