"""The test suite under the Nix of other Debian releases (issue 17): `make test-matrix`.

    python3 -m tests.matrix [--release R ...] [--keep-going] [--rebuild] [-- PYTEST ARGS]
    python3 -m tests.matrix --release trixie --run [-- CMD ...]      (default CMD: bash)

Debian's releases carry three Nix versions: bookworm 2.8, trixie 2.26 (Python 3.13, OpenSSH 10),
sid 2.34 (Python 3.14).  The matrix is the two releases this machine is not: trixie and sid on
Debian 12, bookworm and sid on Debian 13.  Runs as root with the system's python3 and the
standard library only: it runs before any venv exists.

For each release:
- a tree (debootstrap --variant=minbase) in $NIX_HIVE_TREES/<release> (default
  /var/cache/nix-hive/trees), kept between runs; made anew only when missing, when the package
  list changed (the stamp file /var/lib/nix-hive-matrix/provisioned in the tree) or --rebuild;
- its packages: the Makefile's APT_PACKAGES plus make, python3-venv and ca-certificates,
  installed by apt-get inside the tree, with this machine's CA certificates (for PyPI) and a
  policy-rc.d that keeps services from starting;
- a venv of the tree's own Python at /opt/nix-hive-venv in the tree, made by the Makefile's venv
  target from this checkout's pyproject.toml (`.[dev]`, editable);
- the suite, `make -C <checkout> pytest VENV=/opt/nix-hive-venv`, inside the tree: the root of a
  private mount namespace and a PID namespace of its own (its proc, /sys, /dev, a tmpfs /run and
  /tmp, this checkout and the directory of trees bound at their own paths, pivot_root; not a
  chroot, which breaks Nix's sandbox, `ip netns` and `nsenter -m`).  The tree's /nix is the
  tree's own, its /usr read-only.  Every mount and every process left behind ends with the
  namespaces, which end with this process.

Prints each release's pytest output as it runs, a line per release, a table, and exits non-zero
if any release failed.  A release whose run skipped a test for any need but ALLOWED_SKIPS
(chromium: tests/conftest.py's needs, read from pytest's SKIPPED lines) failed, whatever
pytest's status.  --run runs one command in a tree instead (made and provisioned first),
from the checkout, with this terminal: e.g. `--release sid --run -- nix --version`.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RELEASES = ("bookworm", "trixie", "sid")
TREES = Path(os.environ.get("NIX_HIVE_TREES", "/var/cache/nix-hive/trees"))
MIRROR = os.environ.get("NIX_HIVE_MIRROR", "http://deb.debian.org/debian")
VENV = "/opt/nix-hive-venv"
# debootstrap: the lab's systemd hosts run from a tree of their own (tests/lab/tree.py), made in
# the same directory of trees, which is bound at its own path in every tree.
EXTRA_PACKAGES = ("make", "python3-venv", "ca-certificates", "debootstrap")
# Bump when the provisioning below changes: every tree is made anew.
RECIPE = "2"
STAMP = "var/lib/nix-hive-matrix/provisioned"
CA_DIR = Path("/usr/local/share/ca-certificates")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# sid's Release file may be past its Valid-Until.
APT = "apt-get -q -o Acquire::Check-Valid-Until=false -o Dpkg::Use-Pty=0"
# Passed from this environment into the tree's, when set.
# What the suite may skip in a tree (tests/conftest.py: needs), passed as NIX_HIVE_ALLOW_SKIP:
# any other skip fails the release, whatever pytest's status.
ALLOWED_SKIPS = ("chromium",)
PASS_ENV = ("TERM", "CI", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "NIX_HIVE_TREES")

# Run by the host's sh as PID 1 of new mount and PID namespaces: makes the tree the root of the
# mount namespace, then runs the command from the work directory (as a child, so that this shell
# reaps the orphans; when it exits, the kernel ends every process left in the namespace).
# The tree's /usr is read-only but while provisioning: a sandbox path that is a symlink into /usr
# (merged /usr: /bin -> usr/bin) makes Nix >= 2.2x create its /bin/sh mount point through it,
# truncating the tree's /usr/bin/dash (seen with extra-sandbox-paths = /bin /usr on trixie).
ENTER_SCRIPT = r"""
set -e
root="$1"; checkout="$2"; workdir="$3"; usr="$4"; trees="$5"; shift 5
mount --bind "$root" "$root"
if [ "$usr" = ro ]; then mount --bind "$root/usr" "$root/usr"; mount -o remount,bind,ro "$root/usr"; fi
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root$checkout"
mount --bind "$checkout" "$root$checkout"
mkdir -p "$root$trees"
mount --bind "$trees" "$root$trees"
mkdir -p "$root/.oldroot"
cd "$root"
pivot_root . .oldroot
cd /
umount -l /.oldroot
cd "$workdir"
set +e
"$@"
"""

# Inside the tree, as root: what the project needs, from the tree's release, with the packages
# they recommend, as the Makefile's apt target installs them (nix-bin's nix-setup-systemd is the
# one that makes /etc/nix, which the lab binds each host's own over).
PROVISION_SCRIPT = r"""
set -eu
update-ca-certificates >/dev/null
{apt} update
{apt} install -y "$@"
{apt} clean
"""

# Inside the tree: the venv, by the Makefile's own rule (it installs again when pyproject.toml is
# newer than its stamp).  A venv made for another checkout path or another Python is made anew.
VENV_SCRIPT = r"""
set -eu
venv="$1"; checkout="$2"
want="$checkout $(python3 -c 'import sys; print(sys.version)' | head -n 1)"
if [ "$(cat "$venv/.matrix" 2>/dev/null)" != "$want" ]; then rm -rf "$venv"; fi
make -s -C "$checkout" venv VENV="$venv"
echo "$want" > "$venv/.matrix"
"""


class MatrixError(Exception):
    """A tree could not be made, provisioned or entered."""


def log(msg: str) -> None:
    print(f"matrix: {msg}", flush=True)


def default_releases(debian_version: str | None = None) -> list[str]:
    """The releases other than this machine's own: bookworm (12) or trixie (13), and sid."""
    if debian_version is None:
        debian_version = Path("/etc/debian_version").read_text()
    v = debian_version.strip()
    if v.startswith("12") or v.startswith("bookworm"):
        return ["trixie", "sid"]
    if v.startswith("13") or v.startswith("trixie"):
        return ["bookworm", "sid"]
    raise MatrixError(f"/etc/debian_version says {v!r}: neither Debian 12 nor 13, no default matrix")


def apt_packages(makefile: Path = REPO / "Makefile") -> list[str]:
    """The Makefile's APT_PACKAGES (`:=`, `=` and `+=` lines, continuation lines joined)."""
    text = re.sub(r"\\\n", " ", makefile.read_text())
    packages: list[str] = []
    for line in text.splitlines():
        m = re.match(r"\s*APT_PACKAGES\s*([:+?]?)=(.*)", line)
        if m:
            words = m.group(2).split("#", 1)[0].split()
            packages = [*packages, *words] if m.group(1) == "+" else words
    if not packages:
        raise MatrixError(f"no APT_PACKAGES in {makefile}")
    return packages


def tree_packages() -> list[str]:
    return sorted({*apt_packages(), *EXTRA_PACKAGES})


def tree_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of commands in a tree: a clean one, the tree's CA bundle for pip."""
    env = {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8",
           "SHELL": "/bin/bash", "DEBIAN_FRONTEND": "noninteractive",
           "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    return {**env, **(extra or {})}


def enter_argv(tree: Path, argv: Sequence[str], workdir: str = "/", writable_usr: bool = False) -> list[str]:
    """argv run inside tree (see ENTER_SCRIPT), as root of its private namespaces."""
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
            "/bin/sh", "-c", ENTER_SCRIPT, "enter", str(tree), str(REPO), workdir,
            "rw" if writable_usr else "ro", str(TREES), *argv]


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when this process dies (unshare --kill-child then ends
    the namespace's PID 1, and so every process in it)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def run_in(tree: Path, argv: Sequence[str], *, capture: bool = False, workdir: str = "/",
           writable_usr: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(enter_argv(tree, argv, workdir, writable_usr), env=tree_env(), check=False, text=True,
                          preexec_fn=die_with_parent,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)


def checked(proc: subprocess.CompletedProcess[str], what: str) -> str:
    """proc's output; a MatrixError with its last lines if it failed."""
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").strip().splitlines()[-40:])
        raise MatrixError(f"{what} failed ({proc.returncode})" + (f":\n{tail}" if tail else ""))
    return proc.stdout or ""


@contextmanager
def locked(release: str) -> Iterator[None]:
    """One process at a time makes or provisions a release's tree."""
    TREES.mkdir(parents=True, exist_ok=True)
    with open(TREES / f".{release}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def mounts_under(path: Path) -> list[str]:
    """This mount namespace's mount points at or under path, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(path) or point.startswith(f"{path}/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    for point in mounts_under(path):  # left by a debootstrap that was interrupted
        subprocess.run(["umount", "-l", point], check=False)
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap", path=PATH) is None:
        log("installing debootstrap")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "debootstrap"], check=True, env=env)


def bootstrap(release: str, tree: Path) -> None:
    """A minimal tree of release at tree (made beside it, renamed into place when complete)."""
    ensure_debootstrap()
    partial = tree.with_name(tree.name + ".partial")
    remove_tree(partial)
    log(f"{release}: debootstrap into {tree}")
    proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=ca-certificates", release,
                           str(partial), MIRROR], check=False, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PATH": PATH})
    if proc.returncode != 0:
        raise MatrixError(f"debootstrap {release} failed ({proc.returncode}):\n"
                          + "\n".join(proc.stdout.splitlines()[-20:]))
    partial.rename(tree)


def ca_certs() -> list[Path]:
    return sorted(p for p in CA_DIR.rglob("*.crt") if p.is_file()) if CA_DIR.is_dir() else []


def stamp_text(packages: Sequence[str]) -> str:
    return f"recipe {RECIPE}\npackages {' '.join(packages)}\n"


def prepare_files(tree: Path) -> bool:
    """Files the tree needs, written from outside: this machine's resolver and CA certificates,
    /etc/hosts and /nix (the lab binds each host's own over them), a policy-rc.d.  Whether a
    CA certificate is new."""
    resolv = Path("/etc/resolv.conf")
    target = tree / "etc/resolv.conf"
    if resolv.exists() and (target.is_symlink() or not target.exists()
                            or target.read_bytes() != resolv.read_bytes()):
        target.unlink(missing_ok=True)
        target.write_bytes(resolv.read_bytes())
    hosts = tree / "etc/hosts"
    if not hosts.exists():
        hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (tree / "nix").mkdir(mode=0o755, exist_ok=True)  # the tree's own, empty until Nix writes it
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# nix-hive matrix: no service starts in this tree\nexit 101\n")
    policy.chmod(0o755)
    dest = tree / "usr/local/share/ca-certificates"
    dest.mkdir(parents=True, exist_ok=True)
    new = False
    for cert in ca_certs():
        copy = dest / cert.relative_to(CA_DIR).as_posix().replace("/", "_")
        if not copy.exists() or copy.read_bytes() != cert.read_bytes():
            shutil.copyfile(cert, copy)
            new = True
    return new


def provision(release: str, tree: Path) -> None:
    """The project's packages in the tree, unless its stamp says they are there already."""
    packages = tree_packages()
    want = stamp_text(packages)
    stamp = tree / STAMP
    new_certs = prepare_files(tree)
    if stamp.exists() and stamp.read_text() == want:
        if new_certs:
            checked(run_in(tree, ["update-ca-certificates"], capture=True, writable_usr=True),
                    f"{release}: update-ca-certificates")
        return
    log(f"{release}: apt-get install {' '.join(packages)}")
    script = PROVISION_SCRIPT.format(apt=APT)
    proc = run_in(tree, ["/bin/sh", "-c", script, "provision", *packages], capture=True, writable_usr=True)
    checked(proc, f"{release}: provisioning")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(want)


def make_venv(release: str, tree: Path) -> None:
    proc = run_in(tree, ["/bin/sh", "-c", VENV_SCRIPT, "venv", VENV, str(REPO)], capture=True)
    checked(proc, f"{release}: venv {VENV}")  # pip's output only when it fails: setuptools is verbose


@dataclass
class Result:
    release: str
    nix: str = "?"
    python: str = "?"
    counts: dict[str, int] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    returncode: int | None = None
    error: str = ""
    unexpected_skips: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.error and not self.unexpected_skips

    def count(self, *words: str) -> int:
        return sum(self.counts.get(w, 0) for w in words)

    def line(self) -> str:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items())
        what = (f"{self.count('passed')} passed, {self.count('failed')} failed, "
                f"{self.count('error', 'errors')} errors, {self.count('skipped')} skipped"
                if self.counts else f"pytest exit {self.returncode}" if self.returncode is not None
                else "not run")
        status = "ok" if self.ok else "FAILED"
        error = (f" -- {self.error.splitlines()[0]}" if self.error else
                 f" -- skipped what it should run: {self.unexpected_skips[0]}" if self.unexpected_skips else "")
        return f"{self.release}: Nix {self.nix}, Python {self.python}: {what} [{steps}] {status}{error}"


@contextmanager
def timed(result: Result, step: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        result.times[step] = time.monotonic() - start
        if step != "suite":
            log(f"{result.release}: {step} {result.times[step]:.1f}s")


def ensure(release: str, result: Result, rebuild: bool = False) -> Path:
    """The release's tree, made and provisioned, with its venv."""
    tree = TREES / release
    with locked(release):
        stamp = tree / STAMP
        if stamp.exists() and stamp.read_text() != stamp_text(tree_packages()):
            log(f"{release}: the package list changed since {tree} was made")
            rebuild = True
        if rebuild:
            log(f"{release}: removing {tree}")
            remove_tree(tree)
        if not tree.is_dir():
            with timed(result, "debootstrap"):
                bootstrap(release, tree)
        with timed(result, "apt"):
            provision(release, tree)
        with timed(result, "venv"):
            make_venv(release, tree)
    out = checked(run_in(tree, ["/bin/sh", "-c", "nix --version; python3 --version"], capture=True),
                  f"{release}: nix --version")
    for line in out.splitlines():
        if line.startswith("nix "):
            result.nix = line.split()[-1]
        elif line.startswith("Python "):
            result.python = line.split()[-1]
    return tree


SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b")


def pytest_counts(lines: Sequence[str]) -> dict[str, int]:
    """The counts of pytest's closing line ("2 failed, 250 passed, 3 skipped in 310.12s")."""
    for line in reversed(lines):
        if re.search(r"\bin [\d.]+s\b", line) and SUMMARY.search(line):
            return {word: int(n) for n, word in SUMMARY.findall(line)}
    return {}


# One line per skip reason in pytest's short summary (-ra, pyproject.toml), e.g.
# "SKIPPED [2] tests/test_timeline.py:380: [chromium] chromium is not installed ...": what the
# tests needed is the name in brackets (tests/conftest.py: needs).
SKIPPED = re.compile(r"SKIPPED \[(\d+)\] \S+: (?:\[([a-z][a-z0-9-]*)\] )?")


def unexpected_skips(lines: Sequence[str], counts: dict[str, int], allowed: Sequence[str]) -> list[str]:
    """The skips of a run it should not have made: the summary's SKIPPED lines that name no
    allowed need, and skips that no SKIPPED line lists (the summary was cut, or -r changed)."""
    unexpected, listed = [], 0
    for line in lines:
        m = SKIPPED.match(line)
        if m is None:
            continue
        listed += int(m[1])
        if m[2] not in allowed:
            unexpected.append(line)
    if counts.get("skipped", 0) > listed:
        unexpected.append(f"{counts['skipped'] - listed} skipped that no SKIPPED line lists")
    return unexpected


def run_suite(release: str, tree: Path, pytest_args: Sequence[str], result: Result) -> None:
    # APT_BROWSER (chromium) is the main run's alone: the tree has no room to install it (/usr is
    # read-only), and the tests that need it are the only ones it may skip
    argv = ["make", "-C", str(REPO), "pytest", f"VENV={VENV}", "APT_BROWSER=",
            f"NIX_HIVE_ALLOW_SKIP={','.join(ALLOWED_SKIPS)}"]
    if pytest_args:
        argv.append(f"PYTEST_ARGS={shlex.join(pytest_args)}")
    print(f"\n===== {release} (Nix {result.nix}, Python {result.python}): {shlex.join(argv)}",
          flush=True)
    tail: list[str] = []
    skips: list[str] = []
    with timed(result, "suite"):
        proc = subprocess.Popen(enter_argv(tree, argv, str(REPO)), env=tree_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                tail = [*tail[-49:], line.rstrip("\n")]
                if SKIPPED.match(line):
                    skips.append(line.rstrip("\n"))
            result.returncode = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the namespace ends with its PID 1
                proc.kill()
                proc.wait()
    result.counts = pytest_counts(tail)
    result.unexpected_skips = unexpected_skips(skips, result.counts, ALLOWED_SKIPS)
    for line in result.unexpected_skips:
        log(f"{release}: skipped what it should run: {line}")


def table(results: Sequence[Result]) -> str:
    head = ("release", "nix", "python", "passed", "failed", "errors", "skipped", "setup s", "suite s",
            "result")
    rows = [head]
    for r in results:
        setup = sum(v for k, v in r.times.items() if k != "suite")
        rows.append((r.release, r.nix, r.python, str(r.count("passed")), str(r.count("failed")),
                     str(r.count("error", "errors")), str(r.count("skipped")), f"{setup:.0f}",
                     f"{r.times.get('suite', 0):.0f}", "ok" if r.ok else "FAILED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m tests.matrix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--release", action="append", choices=RELEASES,
                   help="a release to run (repeatable; default: the two this machine is not)")
    p.add_argument("--keep-going", action="store_true",
                   help="run the next release after one that failed")
    p.add_argument("--rebuild", action="store_true", help="make the trees anew (debootstrap)")
    p.add_argument("--run", action="store_true",
                   help="run the command after -- (default: bash) in the tree, from the checkout")
    p.add_argument("--writable-usr", action="store_true",
                   help="with --run: the tree's /usr writable (read-only otherwise), e.g. for apt-get")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then pytest's arguments, or --run's command")
    args = p.parse_args(argv)
    if args.rest and args.rest[0] == "--":
        args.rest = args.rest[1:]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("matrix: needs root (debootstrap, mount and PID namespaces)", file=sys.stderr)
        return 2
    try:
        releases = list(dict.fromkeys(args.release or default_releases()))
        if args.run:
            if len(releases) != 1:
                raise MatrixError("--run takes one --release")
            tree = ensure(releases[0], Result(releases[0]), args.rebuild)
            return subprocess.run(enter_argv(tree, args.rest or ["bash"], str(REPO), args.writable_usr),
                                  env=tree_env(), check=False, preexec_fn=die_with_parent).returncode
    except MatrixError as e:
        print(f"matrix: {e}", file=sys.stderr)
        return 2
    results: list[Result] = []
    for release in releases:
        result = Result(release)
        results.append(result)
        try:
            tree = ensure(release, result, args.rebuild)
            run_suite(release, tree, args.rest, result)
        except (MatrixError, OSError, subprocess.CalledProcessError) as e:
            result.error = str(e).strip()
            print(f"matrix: {e}", file=sys.stderr, flush=True)
        log(result.line())
        if not result.ok and not args.keep_going:
            break
    print("\n" + table(results))
    skipped = [r for r in releases if r not in {x.release for x in results}]
    if skipped:
        print(f"not run (a release failed; --keep-going runs them): {' '.join(skipped)}")
    passed = sum(r.count("passed") for r in results)
    failed = sum(r.count("failed", "error", "errors") for r in results)
    skipped_tests = sum(r.count("skipped") for r in results)
    print(f"matrix: {passed} passed, {failed} failed, {skipped_tests} skipped", flush=True)
    return 0 if all(r.ok for r in results) and not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
