"""One function per Nix verb nix-hive uses. Each builds an argv and hands it to `process`.

Every `nix` call carries `--extra-experimental-features "nix-command flakes"`, so nix-hive works
on a machine whose nix.conf does not enable them.

nix-hive runs on every Nix from 2.8 to 2.34 (and Lix). Where their command lines differ, the
argv is made for the version of the Nix that parses it (`NixVersion`, asked once per machine):
a derivation to build is `DRV^out` from Nix 2.13 on (since 2.15 a bare `DRV` names the `.drv`
file itself, and builds nothing), and a bare `DRV` before (2.8 refuses `^`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hive import process
from hive.errors import HiveError, ProcessError
from hive.process import ProcessTimeoutError
from hive.resources import nix_file

NIX = ("nix", "--extra-experimental-features", "nix-command flakes")
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


@dataclass(frozen=True, order=True)
class NixVersion:
    """A Nix release, as `nix --version` names it (`nix (Nix) 2.26.3`, `nix (Lix, like Nix) 2.91.1`)."""

    major: int
    minor: int
    patch: int = 0
    name: str = "Nix"  # the implementation: Nix or Lix

    @classmethod
    def parse(cls, text: str) -> NixVersion:
        """The version in `nix --version`'s output; a `HiveError` when there is none."""
        found = re.search(r"\((\w+)[^)]*\)\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
        if found is None:
            raise HiveError(f"cannot tell the Nix version from {text.strip()[:80]!r}")
        name, major, minor, patch = found.groups()
        return cls(int(major), int(minor), int(patch or 0), name)

    def at_least(self, major: int, minor: int) -> bool:
        """This is that release or a later one (Lix counts as the Nix it forked, 2.18)."""
        mine = (2, 18) if self.name == "Lix" else (self.major, self.minor)
        return mine >= (major, minor)

    def __str__(self) -> str:
        return f"{self.name} {self.major}.{self.minor}.{self.patch}"


# The oldest Nix nix-hive is tested with (Debian 12's); older releases are refused by name.
OLDEST = NixVersion(2, 8)


def checked_version(text: str, where: str) -> NixVersion:
    """The version `nix --version` printed `where` (the deployer, a build host), refused
    when older than `OLDEST`."""
    version = NixVersion.parse(text)
    if not version.at_least(OLDEST.major, OLDEST.minor):
        raise HiveError(f"{where} runs {version}; nix-hive needs Nix {OLDEST.major}.{OLDEST.minor} or later")
    return version


@functools.cache
def local_version() -> NixVersion:
    """The deployer's Nix, asked once per run."""
    return checked_version(process.run(["nix", "--version"]).stdout, "this machine")


def version_argv() -> list[str]:
    """The command that prints a Nix's version (run on a build host)."""
    return ["nix", "--version"]


def installable(derivation: str, version: NixVersion) -> str:
    """The command-line argument that builds `derivation`'s `out` with the Nix `version`."""
    return f"{derivation}^out" if version.at_least(2, 13) else derivation


def deployment_env(file: Path, flake: str | None = None, attr: str = "") -> dict[str, str]:
    """How nix/deployment.nix finds the deployment: a file, or a flake's output."""
    if flake is not None:
        return {"NIX_HIVE_FLAKE": flake, "NIX_HIVE_ATTR": attr, "NIX_HIVE_DEPLOYMENT": ""}
    return {"NIX_HIVE_DEPLOYMENT": str(file), "NIX_HIVE_FLAKE": ""}


def _include_flags(paths: Mapping[str, str]) -> list[str]:
    flags: list[str] = []
    for name, value in sorted(paths.items()):
        flags += ["-I", f"{name}={value}"]
    return flags


def eval_inventory(source: Mapping[str, str], directory: Path) -> Any:
    """Evaluate the deployment (`source`: deployment_env) into its inventory (nix/eval.nix),
    building nothing."""
    # --read-only: a value such as "${./key.sec}" is never copied into the store, even
    # before nix-hive refuses it. (A flake is in the store already: Nix copies its source
    # to read it, and writes its lock file when it has none, as `nix build` does.)
    read_only = [] if source.get("NIX_HIVE_FLAKE") else ["--read-only"]
    argv = [*NIX, "eval", "--json", "--impure", *read_only, "--show-trace",
            *_include_flags({"deployment": str(directory)}), "--file", str(nix_file("eval.nix"))]
    out = process.run(argv, env=source, binary=True)  # read whole, not decoded line by line (5,000 instances)
    return json.loads(out.stdout_bytes)


_show_trace = False  # --show-trace: Nix's whole trace of a system's evaluation that fails


def set_show_trace(on: bool) -> None:
    global _show_trace
    _show_trace = on


def show_trace() -> bool:
    return _show_trace


def instantiate(source: Mapping[str, str], directory: Path, system: str, paths: Mapping[str, str]) -> str:
    """Evaluate one system of the deployment into its derivation (written to the store, as
    `nix-instantiate` does). Each system is evaluated by a process of its own, so several can
    be evaluated at once (one core and its memory each)."""
    include = {"deployment": str(directory), **paths}
    trace = ["--show-trace"] if _show_trace else []
    argv = [*NIX, "eval", "--impure", "--raw", *trace, *_include_flags(include), "--file",
            str(nix_file("build.nix")), f"{system}.drvPath"]
    return process.run(argv, env=source).stdout.strip()


def flake_metadata(flake: str) -> Any:
    """`nix flake metadata --json`: the flake's source in the store and its locked inputs."""
    return json.loads(process.run([*NIX, "flake", "metadata", "--json", flake]).stdout)


def realise(derivations: Sequence[str], *, on_line: Callable[[str], None] | None = None) -> list[str]:
    """Build `derivations` in one call, so Nix builds them in parallel; their outputs, in order."""
    out = process.run(["nix-store", "--realise", *derivations], on_stderr=on_line)
    return out.stdout.split()


def _garbled(stderr: str) -> bool:
    return "protocol mismatch" in stderr and "got 'started" in stderr


def _over_ssh(argv: list[str], *, env: Mapping[str, str] | None, check: bool = True,
              on_stderr: Callable[[str], None] | None = None, timeout: float | None = None) -> process.Result:
    """`process.run` of a Nix command that reaches a store over ssh (NIX_SSHOPTS in `env`).

    Nix since 2.15 asks ssh to print `started` once a new connection is up, and guesses (racily)
    whether its connection reuses a shared one, which prints nothing: when it guesses wrong, the
    word reaches the store protocol ("protocol mismatch from 'www-1', got 'started…'",
    NixOS/nix#14132). Such a command is run again once, without shared connections."""
    try:
        out = process.run(argv, env=env, check=check, on_stderr=on_stderr, timeout=timeout)
    except ProcessTimeoutError:
        raise
    except ProcessError as exc:
        if not _garbled(exc.stderr) or env is None or "NIX_SSHOPTS" not in env:
            raise
    else:
        if out.exit_code == 0 or not _garbled(out.stderr) or env is None or "NIX_SSHOPTS" not in env:
            return out
    alone = {**env, "NIX_SSHOPTS": f"{env['NIX_SSHOPTS']} -o ControlMaster=no -o ControlPath=none"}
    return process.run(argv, env=alone, check=check, on_stderr=on_stderr, timeout=timeout)


def copy_derivations(store: str, derivations: Sequence[str], *, env: Mapping[str, str],
                     timeout: float | None = None) -> None:
    """Copy `derivations` and their closures (derivations and sources, no outputs) to `store`:
    what a build host needs to build them (killed after `timeout` seconds)."""
    _over_ssh([*NIX, "copy", "--derivation", "--to", store, *derivations], env=env, timeout=timeout)


def build_in_argv(store: str, derivations: Sequence[str], version: NixVersion) -> list[str]:
    """`nix build` of `derivations` in `store`, for the deployer's Nix `version`."""
    return [*NIX, "build", "--no-link", "--json", "--store", store,
            *(installable(d, version) for d in derivations)]


def built_outputs(stdout: str, derivations: Sequence[str]) -> list[str]:
    """The `out` path of each of `derivations`, in order, from `nix build --json`'s answer:
    a list of `{"drvPath": …, "outputs": {"out": …}}` on every version (more keys on newer
    ones). Any other shape is a `HiveError` that quotes it."""
    try:
        entries = json.loads(stdout)
        built = {entry["drvPath"]: entry["outputs"]["out"] for entry in entries}
        return [built[d] for d in derivations]
    except (ValueError, TypeError, KeyError) as exc:
        raise HiveError(f"nix build --json printed what nix-hive does not understand ({exc!r}): "
                        f"{stdout.strip()[:200]}") from exc


def build_in(store: str, derivations: Sequence[str], *, env: Mapping[str, str],
             on_line: Callable[[str], None] | None = None) -> list[str]:
    """Build `derivations` (already in `store`) in that store, by its own Nix (a build host
    reached as ssh-ng://host builds them there); their `out` paths, in order."""
    out = _over_ssh(build_in_argv(store, derivations, local_version()), env=env, on_stderr=on_line)
    return built_outputs(out.stdout, derivations)


def add_root_argv(path: str, link: str) -> list[str]:
    """The command that keeps `path` alive through the symlink `link` (run where the path is)."""
    return ["nix-store", "--realise", path, "--add-root", link, "--indirect"]


def add_root(path: str, link: Path) -> None:
    """Keep `path` alive across garbage collections through the symlink `link`."""
    link.parent.mkdir(parents=True, exist_ok=True)
    process.run(["nix-store", "--realise", path, "--add-root", str(link), "--indirect"])


def invalid_paths(paths: Sequence[str]) -> set[str]:
    """The paths among `paths` that the local store does not hold (asked of Nix)."""
    if not paths:
        return set()
    out = process.run(["nix-store", "--check-validity", "--print-invalid", *paths])
    return set(out.stdout.split())


def sign(key_file: Path, paths: Sequence[str], *, store: str | None = None,
         env: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
    """Sign the closures of `paths` with the secret key in `key_file` (the key stays there).
    With `store` (a build host's), the paths are signed in that store: Nix computes the
    signatures here and sends them, never the key (killed after `timeout` seconds)."""
    where = ["--store", store] if store else []
    _over_ssh([*NIX, "store", "sign", *where, "--key-file", str(key_file), "--recursive", *paths], env=env,
              timeout=timeout)


# Binary caches Nix reaches over the network, remembering what they hold (`copy_argv`).
_NETWORK_CACHES = frozenset({"http", "https", "s3"})


def copy_argv(to: str, paths: Sequence[str], *, substitute: bool, source: str | None = None,
              check_sigs: bool = True) -> list[str]:
    """`nix copy` of the closures of `paths` to the store `to` (from `source`, default the
    local store); with `substitute`, the destination first tries its own substituters (a relay
    store) and receives only what they lack; without `check_sigs`, `--no-check-sigs` (the
    destination adds them without checking their signatures, when it trusts the sender).

    To a binary cache over the network (http, https, s3), Nix's own record of what the cache
    held is not trusted: Nix keeps it for 30 days (narinfo-cache-positive-ttl) and skips every
    path it lists, so a cache emptied or replaced at the same URL would be left without them,
    and its hosts unable to fetch. The cache is asked instead (one narinfo request a path)."""
    argv = [*NIX, "copy", *(["--from", source] if source else []), "--to", to]
    if to.partition("://")[0] in _NETWORK_CACHES:
        argv += ["--option", "narinfo-cache-positive-ttl", "0"]
    if substitute:
        argv.append("--substitute-on-destination")
    if not check_sigs:
        argv.append("--no-check-sigs")
    return [*argv, *paths]


def copy(
    to: str,
    paths: Sequence[str],
    *,
    substitute: bool,
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None = None,
    source: str | None = None,
    timeout: float | None = None,
    check_sigs: bool = True,
) -> None:
    """Run `copy_argv` here; after `timeout` seconds it is killed (`ProcessTimeoutError`)."""
    _over_ssh(copy_argv(to, paths, substitute=substitute, source=source, check_sigs=check_sigs), env=env,
              on_stderr=on_line, timeout=timeout)


def closure_argv(paths: Sequence[str], store: str | None = None, *, derivation: bool = False) -> list[str]:
    """`nix path-info --json --recursive`: every path of the closures of `paths` with its NAR
    size (with `derivation`, of the derivations themselves: the derivations and sources a
    build needs, what `copy_derivations` moves)."""
    return [*NIX, "path-info", "--json", "--recursive", *(["--derivation"] if derivation else []),
            *(["--store", store] if store else []), *paths]


def closure_sizes(stdout: str) -> dict[str, int]:
    """Each path `closure_argv`'s answer lists, once, with its NAR size: a list of
    `{"path": …, "narSize": …}` up to Nix 2.18, an object keyed by path since 2.19."""
    try:
        found = json.loads(stdout)
        entries = found.items() if isinstance(found, dict) else ((e["path"], e) for e in found)
        return {path: int(entry.get("narSize") or 0) for path, entry in dict(entries).items() if entry}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise HiveError(f"nix path-info --json printed what nix-hive does not understand ({exc!r}): "
                        f"{stdout.strip()[:200]}") from exc


def closure_size(stdout: str) -> int:
    """The bytes of every path `closure_argv`'s answer lists, each once."""
    return sum(closure_sizes(stdout).values())


def closure_bytes(paths: Sequence[str], *, store: str | None = None, env: Mapping[str, str] | None = None,
                  derivation: bool = False, timeout: float | None = None) -> int:
    """What copying the closures of `paths` (held by `store`, default here) moves at most:
    their NAR sizes, each path once."""
    if not paths:
        return 0
    out = _over_ssh(closure_argv(paths, store, derivation=derivation), env=env, timeout=timeout)
    return closure_size(out.stdout)


def closure(path: str, *, timeout: float | None = None) -> dict[str, int]:
    """Every path of `path`'s closure in this machine's store, with its NAR size: one `nix
    path-info --json --recursive` (`closure_argv`, as `closure_bytes` asks), killed after
    `timeout` seconds."""
    return closure_sizes(process.run(closure_argv([path]), timeout=timeout).stdout)


def remote_missing(store: str, paths: Sequence[str], *, env: Mapping[str, str],
                   timeout: float | None = None) -> set[str]:
    """The paths among `paths` that the store `store` does not hold (asked of that store;
    each question killed after `timeout` seconds)."""
    missing: set[str] = set()
    for path in paths:
        out = _over_ssh([*NIX, "path-info", "--store", store, path], env=env, check=False, timeout=timeout)
        if out.exit_code != 0:
            if "is not valid" not in out.stderr:
                raise ProcessError([*NIX, "path-info", "--store", store, path], out.exit_code, out.stderr)
            missing.add(path)
    return missing


def set_profile_argv(path: str, profile: str = SYSTEM_PROFILE) -> list[str]:
    """The command that points the system profile at `path` (run on the host)."""
    return ["nix-env", "--profile", profile, "--set", path]


def switch_argv(path: str, goal: str = "switch") -> list[str]:
    """The command that activates `path` (run on the host)."""
    return [f"{path}/bin/switch-to-configuration", goal]



def import_paths(exported: bytes, *, timeout: float | None = None) -> list[str]:
    """Register the paths of `nix-store --export`'s format (`exported`: hive/pull.py's records)
    in this machine's store; the paths, in order (one already valid stays as it is)."""
    return process.run(["nix-store", "--import"], input=exported, timeout=timeout).stdout.split()

def fetch(source: str, paths: Sequence[str], *, env: Mapping[str, str], timeout: float | None = None) -> None:
    """Copy the closures of `paths` from the store `source` (a build host's) to this machine's."""
    _over_ssh([*NIX, "copy", "--from", source, *paths], env=env, timeout=timeout)
