"""The checks of a deployment that a JSON schema cannot express, run before anything is built:
store URLs and ProxyJump chains as Nix and ssh read them, ssh options from the allowlist,
jump-host loops, the signing key's content, and the whole generated ssh configuration as ssh
itself parses it (`ssh -G`). Every failure is a `DeploymentError` naming the attribute."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hive import process, ssh, tempdirs
from hive.address import StoreUrl, parse_proxy_jump
from hive.errors import DeploymentError, ProcessError, attr_path
from hive.model import Hive, Instance, Key

# Nix store URL parameters that make Nix run a program (on either side): never from a
# deployment file, for the reason ssh options are allowlisted.
PROGRAM_PARAMETERS = frozenset({"remote-program"})


def addresses(shown: str, name: str, store: str | None, options: Mapping[str, str]) -> None:
    """A store URL and a ProxyJump that nix-hive (and Nix, and ssh) can read."""
    if store is not None:
        where = ["instances", name, "store"]  # made into an attribute path for an error only (issue 29)
        try:
            url = StoreUrl.parse(store)
        except ValueError as exc:
            raise DeploymentError(shown, str(exc), attr_path(where)) from None
        for key, _ in url.params:
            if key in PROGRAM_PARAMETERS:
                raise DeploymentError(shown, f"the store URL parameter {key} runs a program: not taken from a "
                                      "deployment file (set it in nix.conf or ~/.ssh/config)", attr_path(where))
    jump = next((k for k in options if k.lower() == "proxyjump"), None)
    if jump is not None:
        try:
            parse_proxy_jump(options[jump])
        except ValueError as exc:
            raise DeploymentError(shown, str(exc), attr_path(["instances", name, "ssh", jump])) from None


def uploads(shown: str, stores: Mapping[str, str], instances: Mapping[str, Instance]) -> None:
    """An http(s) binary cache used as a relay says how nix-hive writes to it; upload URLs
    are store URLs that run no program."""
    for url, upload in stores.items():
        where = attr_path(["stores", url, "upload"])
        try:
            parsed = StoreUrl.parse(upload)
        except ValueError as exc:
            raise DeploymentError(shown, str(exc), where) from None
        if any(k in PROGRAM_PARAMETERS for k, _ in parsed.params):
            raise DeploymentError(shown, "a store URL parameter that runs a program is not taken from a "
                                  "deployment file", where)
    for name, i in sorted(instances.items()):
        if i.store and i.store.startswith(("http://", "https://")) and i.store not in stores:
            raise DeploymentError(shown, f"{i.store} is an HTTP binary cache: say how nix-hive writes to it, "
                                  f'stores."{i.store}".upload = "<store URL>" (s3://…, file:///…, '
                                  "ssh://cache?remote-store=file:///srv/nix-cache)",
                                  attr_path(["instances", name, "store"]))


def allowed_options(shown: str, name: str, options: Mapping[str, str]) -> None:
    """Only ssh options that cannot run code or open ports on this machine (ssh.ALLOWED)."""
    for key in options:
        if key.lower() not in ssh.ALLOWED:
            raise DeploymentError(
                shown, f"{key} is not an ssh option nix-hive takes from a deployment file (it could run code, "
                "load a library or open a port on this machine, or ssh has no such option); put it in "
                "~/.ssh/config, which the generated configuration includes (allowed: see docs/deployment.md, "
                "'ssh options')", attr_path(["instances", name, "ssh", key]))


def jump_loops(hive: Hive) -> None:
    """ProxyJump chains through instances end: an instance reached through itself, or any
    loop of instances, makes ssh start ssh until the machine runs out of processes."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name):], name])
            raise DeploymentError(hive.shown, f"jump hosts loop: {cycle} (ssh would start ssh without end)",
                                  attr_path(["instances", path[-1], "ssh", "ProxyJump"]))
        if name in done or name not in hive.instances:
            return
        value = hive.instances[name].ssh.get("ProxyJump")
        for hop in parse_proxy_jump(value) if value else ():
            visit(hop.host, [*path, name])
        done.add(name)

    for name in sorted(hive.instances):
        visit(name, [])


def signing_key(shown: str, key: Path) -> None:
    """A Nix secret key (`nix-store --generate-binary-cache-key`): `NAME:BASE64` of 64 bytes.
    Its content is never shown."""
    if str(key).startswith("/nix/store/"):
        raise DeploymentError(shown, "the secret key is in the Nix store, readable by every user: "
                              "write it as a path literal (./key.sec), never as \"${./key.sec}\"; in a flake, "
                              "as a string naming a file outside the flake (Nix copies a flake's files into the store)",
                              "signingKey")
    if key.is_dir():
        raise DeploymentError(shown, f"{key} is a directory, not a secret key file", "signingKey")
    if not key.is_file():
        raise DeploymentError(shown, f"{key}: no such file", "signingKey")
    try:
        text = key.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = "?"
    if not text:
        raise DeploymentError(shown, f"{key} is empty, not a secret key", "signingKey")
    name, _, data = text.partition(":")
    try:
        size = len(base64.b64decode(data, validate=True)) if name and data else 0
    except (binascii.Error, ValueError):
        size = 0
    if size == 32:
        raise DeploymentError(shown, f"{key} is a public key: give the secret one (the .sec file)", "signingKey")
    if size != 64 or "\n" in text:
        raise DeploymentError(shown, f"{key} is not a Nix secret key (NAME:BASE64, as written by "
                              "nix-store --generate-binary-cache-key)", "signingKey")
    if key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {shown}: signingKey: {key} is readable by other users (chmod 600 {key})", file=sys.stderr)


_SSH_ERROR = re.compile(r"line (\d+): ?(.*)$")


def ssh_config(hive: Hive) -> None:
    """The generated ssh configuration, as ssh itself parses it: one `ssh -G` reads every
    block, and an error at line N is the instance option that line came from. Without the
    user's own configuration: its mistakes are not the deployment's. A value no ssh_config or
    known_hosts line can hold is refused first (hive/ssh.py's `encode`)."""
    if not hive.instances:
        return
    ssh.render_known_hosts(hive)
    with tempdirs.private("check") as directory:
        config = directory / "ssh_config"
        lines = _distinct(ssh.render_lines(hive, directory / "known_hosts", include_user=False))
        config.write_text("\n".join(text for text, _ in lines) + "\n")
        try:
            out = process.run(["ssh", "-G", "-F", str(config), "--", sorted(hive.instances)[0]], check=False)
        except ProcessError:
            return  # no ssh here: nothing nix-hive runs would work, and it will say so then
    for line in out.stderr.splitlines():
        found = _SSH_ERROR.search(line)
        if found is None:
            continue
        number = int(found.group(1))
        origin = lines[number - 1][1] if 0 < number <= len(lines) else None
        where = attr_path(["instances", origin[0], "ssh", origin[1]]) if origin is not None else None
        raise DeploymentError(hive.shown, f"ssh refuses it: {found.group(2).strip()}", where)
    if out.exit_code != 0:
        raise DeploymentError(hive.shown, f"ssh refuses the generated configuration: "
                              f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.exit_code}")


def _distinct(lines: list[tuple[str, ssh.Origin | None]]) -> list[tuple[str, ssh.Origin | None]]:
    """The lines ssh must read to find every error of `lines` (an ssh_config), each with its
    origin: the first Host block whole (the one `ssh -G` applies), then every Host line and
    each other line the first time it stands. ssh parses an option's value wherever it stands,
    in a block that applies or not, so a line it has read tells it nothing the second time;
    the error it reports first is the same line's first place. Every block repeats nix-hive's
    own options, and most a deployment's (issue 29: 5,000 blocks of them)."""
    seen: set[str] = set()
    blocks = 0
    out: list[tuple[str, ssh.Origin | None]] = []
    for text, origin in lines:
        if text.startswith("Host "):
            blocks += 1
        elif blocks > 1 and text in seen:
            continue
        seen.add(text)
        out.append((text, origin))
    return out


def key_sources(shown: str, keys: Mapping[str, Key], raw: Mapping[str, Any]) -> None:
    """Every key name used exists; every key's source can be read (a file that exists and is
    readable, outside the Nix store; a command that can be found); destinations are distinct
    and normal. Nothing is read or run here: contents are read at upload time only."""
    for where, names in _key_users(raw):
        for n, name in enumerate(names):
            if name not in keys:
                known = ", ".join(sorted(keys)) or "none"
                raise DeploymentError(shown, f"{json.dumps(name)} is not a key of {shown} (keys: {known})",
                                      attr_path([*where, "keys", n]))
    seen: dict[str, str] = {}
    for name, key in keys.items():
        at = ["keys", name]
        if key.key_file is not None:
            _readable_key_file(shown, key.key_file, attr_path([*at, "keyFile"]))
        if key.command and shutil.which(key.command[0]) is None:
            raise DeploymentError(shown, f"{key.command[0]}: command not found", attr_path([*at, "keyCommand"]))
        if "/../" in key.destination + "/" or "/./" in key.destination + "/" or "//" in key.destination:
            raise DeploymentError(shown, f"{key.destination} is not a normal absolute file name",
                                  attr_path([*at, "destination"]))
        if key.destination in seen:
            raise DeploymentError(shown, f"{key.destination} is also the destination of key {seen[key.destination]}",
                                  attr_path([*at, "destination"]))
        seen[key.destination] = name


def _key_users(raw: Mapping[str, Any]) -> list[tuple[list[str], list[str]]]:
    """Where key names are given (["systems", NAME] and ["instances", NAME], in this order,
    those that give any), and the names given there."""
    return [([level, n], list(given["keys"])) for level in ("systems", "instances")
            for n, given in sorted(raw.get(level, {}).items()) if given.get("keys")]


def _readable_key_file(shown: str, path: Path, where: str) -> None:
    if str(path).startswith("/nix/store/"):
        raise DeploymentError(shown, "the key is in the Nix store, readable by every user: write it as a path "
                              "literal (./secrets/x), never as \"${./secrets/x}\"", where)
    if not path.is_file():
        raise DeploymentError(shown, f"{path}: no such file", where)
    if not os.access(path, os.R_OK):
        raise DeploymentError(shown, f"{path}: cannot be read", where)
