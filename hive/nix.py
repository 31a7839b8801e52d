"""One function per Nix verb nix-hive uses. Each builds an argv and hands it to `process`.

Every `nix` call carries `--extra-experimental-features "nix-command flakes"`, so nix-hive works
on a machine whose nix.conf does not enable them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hive import process
from hive.errors import ProcessError
from hive.resources import nix_file

NIX = ("nix", "--extra-experimental-features", "nix-command flakes")
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


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
    out = process.run(argv, env=source)
    return json.loads(out.stdout)


def instantiate(source: Mapping[str, str], directory: Path, system: str, paths: Mapping[str, str]) -> str:
    """Evaluate one system of the deployment into its derivation (written to the store, as
    `nix-instantiate` does). Each system is evaluated by a process of its own, so several can
    be evaluated at once (one core and its memory each)."""
    include = {"deployment": str(directory), **paths}
    argv = [*NIX, "eval", "--impure", "--raw", *_include_flags(include), "--file", str(nix_file("build.nix")),
            f"{system}.drvPath"]
    return process.run(argv, env=source).stdout.strip()


def flake_metadata(flake: str) -> Any:
    """`nix flake metadata --json`: the flake's source in the store and its locked inputs."""
    return json.loads(process.run([*NIX, "flake", "metadata", "--json", flake]).stdout)


def realise(derivations: Sequence[str], *, on_line: Callable[[str], None] | None = None) -> list[str]:
    """Build `derivations` in one call, so Nix builds them in parallel; their outputs, in order."""
    out = process.run(["nix-store", "--realise", *derivations], on_stderr=on_line)
    return out.stdout.split()


def copy_derivations(store: str, derivations: Sequence[str], *, env: Mapping[str, str]) -> None:
    """Copy `derivations` and their closures (derivations and sources, no outputs) to `store`:
    what a build host needs to build them."""
    process.run([*NIX, "copy", "--derivation", "--to", store, *derivations], env=env)


def build_in(store: str, derivations: Sequence[str], *, env: Mapping[str, str],
             on_line: Callable[[str], None] | None = None) -> list[str]:
    """Build `derivations` (already in `store`) in that store, by its own Nix (a build host
    reached as ssh-ng://host builds them there); their `out` paths, in order."""
    out = process.run([*NIX, "build", "--no-link", "--json", "--store", store, *derivations], env=env,
                      on_stderr=on_line)
    built = {entry["drvPath"]: entry["outputs"]["out"] for entry in json.loads(out.stdout)}
    return [built[d] for d in derivations]


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
         env: Mapping[str, str] | None = None) -> None:
    """Sign the closures of `paths` with the secret key in `key_file` (the key stays there).
    With `store` (a build host's), the paths are signed in that store: Nix computes the
    signatures here and sends them, never the key."""
    where = ["--store", store] if store else []
    process.run([*NIX, "store", "sign", *where, "--key-file", str(key_file), "--recursive", *paths], env=env)


def copy_argv(to: str, paths: Sequence[str], *, substitute: bool, source: str | None = None) -> list[str]:
    """`nix copy` of the closures of `paths` to the store `to` (from `source`, default the
    local store); with `substitute`, the destination first tries its own substituters (a relay
    store) and receives only what they lack."""
    argv = [*NIX, "copy", *(["--from", source] if source else []), "--to", to]
    if substitute:
        argv.append("--substitute-on-destination")
    return [*argv, *paths]


def copy(
    to: str,
    paths: Sequence[str],
    *,
    substitute: bool,
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None = None,
    source: str | None = None,
) -> None:
    """Run `copy_argv` here."""
    process.run(copy_argv(to, paths, substitute=substitute, source=source), env=env, on_stderr=on_line)


def remote_missing(store: str, paths: Sequence[str], *, env: Mapping[str, str]) -> set[str]:
    """The paths among `paths` that the store `store` does not hold (asked of that store)."""
    missing: set[str] = set()
    for path in paths:
        out = process.run([*NIX, "path-info", "--store", store, path], env=env, check=False)
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
