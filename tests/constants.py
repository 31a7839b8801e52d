"""Constants shared by the tests, the demo and the benchmarks, defined once.

    python -m tests.constants      prints NIX_CONFIG (the Makefile's WITH_NIX takes it from here)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The stand-in nixpkgs: plain derivations shaped like NixOS systems, no network needed.
STANDIN = REPO / "tests" / "nixpkgs"
# Every nix call in the tests: no binary cache (there is no network), single-user as root.
NIX_CONFIG = "experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\n"


def nix_env() -> dict[str, str]:
    """This process's environment, with NIX_CONFIG unless one is set already."""
    return {**os.environ, "NIX_CONFIG": os.environ.get("NIX_CONFIG", NIX_CONFIG)}


if __name__ == "__main__":
    print(NIX_CONFIG, end="")
