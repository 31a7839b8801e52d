"""Constants shared by the tests, the demo and the benchmarks, defined once.

    python -m tests.constants      prints NIX_CONFIG (the Makefile's WITH_NIX takes it from here)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The stand-in nixpkgs: plain derivations shaped like NixOS systems, no network needed.
STANDIN = REPO / "tests" / "nixpkgs"
# Where the stand-in's builders append to STANDIN_BUILD_LOG (tests count real builds there):
# the one directory of the machine a sandboxed build may write to.
STANDIN_LOGS = Path("/tmp/nix-hive-standin-logs")


def _sandbox_paths() -> str:
    """The machine's /usr, and its /lib and /lib64 (the dynamic loader), for Nix's sandbox.

    Never /bin: on a merged /usr (/bin -> usr/bin) Nix 2.26 and later make the sandbox's /bin
    that link into the bound /usr, then create their own /bin/sh (`sandbox-paths`) through it,
    which opened the machine's /usr/bin/dash for writing (it was found truncated). The stand-in
    runs /usr/bin/sh instead. A link such as /lib -> usr/lib is given by its target
    (`/lib=/usr/lib`), so that Nix binds a directory, never a link."""
    out = ["/usr"]
    for name in ("/lib", "/lib64"):
        out.append(f"{name}={os.path.realpath(name)}?")
    return " ".join(out)


# Nix's sandbox stays on, as users have it (Nix's default, and every NixOS machine's): the
# stand-in's builders run the machine's /usr/bin/sh and coreutils, so the sandbox is given the
# machine's /usr and /lib, and STANDIN_LOGS (bind mounts; `?`: only where they exist).
SANDBOX_CONFIG = f"sandbox = true\nextra-sandbox-paths = {_sandbox_paths()} {STANDIN_LOGS}?\n"
# Every nix call in the tests: no binary cache (there is no network), single-user as root.
NIX_CONFIG = ("experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\n"
              + SANDBOX_CONFIG)


def nix_env() -> dict[str, str]:
    """This process's environment, with NIX_CONFIG unless one is set already."""
    return {**os.environ, "NIX_CONFIG": os.environ.get("NIX_CONFIG", NIX_CONFIG)}


if __name__ == "__main__":
    print(NIX_CONFIG, end="")
