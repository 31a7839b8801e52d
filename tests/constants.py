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
# Nix's sandbox stays on, as users have it (Nix's default, and every NixOS machine's): the
# stand-in's builders run the machine's /bin/sh and coreutils, so the sandbox is given the
# machine's /bin, /usr and /lib, and STANDIN_LOGS (bind mounts; `?`: only where they exist).
SANDBOX_CONFIG = f"sandbox = true\nextra-sandbox-paths = /bin /usr /lib /lib64? {STANDIN_LOGS}?\n"
# Every nix call in the tests: no binary cache (there is no network), single-user as root.
NIX_CONFIG = ("experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\n"
              + SANDBOX_CONFIG)


def nix_env() -> dict[str, str]:
    """This process's environment, with NIX_CONFIG unless one is set already."""
    return {**os.environ, "NIX_CONFIG": os.environ.get("NIX_CONFIG", NIX_CONFIG)}


if __name__ == "__main__":
    print(NIX_CONFIG, end="")
