"""Where nix-hive's own Nix expressions, JSON schemas and host scripts are, in a checkout or
installed."""

from __future__ import annotations

import re
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`nix` or `schemas`: the repository's top-level folder, or its installed copy.

    A checkout (and an editable install) reads the top-level folders; an installed wheel or
    the Nix package carries them as `hive/_data/<name>`.
    """
    for candidate in (_HERE / "_data" / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"nix-hive is installed without its {name}/ folder")


def nix_file(name: str) -> Path:
    return data_dir("nix") / name


def schema_file(name: str = "inventory.schema.json") -> Path:
    return data_dir("schemas") / name


def host_file(name: str) -> Path:
    """A shell script nix-hive runs on hosts (hive/host/), shipped inside the package."""
    return _HERE / "host" / name


# A host script's line that reads a file beside it (`. "$(dirname "$0")/runnable.sh"`): where the
# script runs as a file of the package (tests), the shell reads it; where nix-hive sends the
# script's text, that file's text takes the line's place.
_SOURCED = re.compile(r'^\. "\$\(dirname "\$0"\)/([a-z][a-z0-9-]*\.sh)"$')


def host_script(name: str) -> str:
    """The text of `host_file(name)` as it is sent, once or twice for every host of a run:
    without its comment lines and blank lines (half its bytes), with the files it sources put
    in. The scripts hold no here-document whose lines could start with `#` (tests/test_units.py
    checks)."""
    lines = host_file(name).read_text().splitlines()
    kept: list[str] = []
    for ln in lines[1:]:
        if (sourced := _SOURCED.match(ln)) is not None:
            kept += host_script(sourced.group(1)).splitlines()[1:]
        elif ln.strip() and not ln.lstrip().startswith("#"):
            kept.append(ln)
    return "\n".join([lines[0], *kept]) + "\n"
