"""What nix-hive reads of Nix's output, on every Nix it supports (2.8, 2.26, 2.34).

tests/nixout holds each version's real answers, recorded in Debian trees of bookworm, trixie and
sid (paths replaced by @REPO@, @OK@, @BAD@, @HASH@), so that every run checks all three shapes;
the live tests run the same calls on this machine's Nix, which `make test-matrix` makes each
of the three in turn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hive import nix, process
from hive.errors import HiveError, headline, nix_error
from tests.conftest import needs_nix
from tests.constants import REPO

OUT = Path(__file__).resolve().parent / "nixout"
VERSIONS = ("2.8.0", "2.26.3", "2.34.8")
OWN = f"{REPO}/nix/"



def recorded(name: str) -> str:
    return (OUT / name).read_text().replace("@REPO@", str(REPO))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_recorded_version_parses(version: str) -> None:
    found = nix.NixVersion.parse(recorded(f"version-{version}.txt"))
    assert str(found) == f"Nix {version}"
    assert found.at_least(2, 8)
    assert found.at_least(2, 13) == (version != "2.8.0")


def test_lix_and_old_versions() -> None:
    lix = nix.NixVersion.parse("nix (Lix, like Nix) 2.91.1\n")
    assert lix.name == "Lix" and lix.at_least(2, 13)
    with pytest.raises(HiveError, match=r"build host h runs Nix 2\.3\.16; nix-hive needs Nix 2\.8 or later"):
        nix.checked_version("nix (Nix) 2.3.16", "build host h")
    with pytest.raises(HiveError, match="cannot tell the Nix version"):
        nix.NixVersion.parse("bash: nix: command not found")


# case -> (message, where the location points, or None), the same on every version but where
# the versions differ in what they say (2.8 names a missing file by its stat call)
EVAL_CASES = {
    "throw-in-instance": ("no address known for web-1", r"tests/broken/throw-in-instance\.nix:4:\d+"),
    "undefined-variable": ("undefined variable 'webConfig'", r"tests/broken/undefined-variable\.nix:3:35"),
    "syntax-error": ("syntax error, unexpected '}', expecting ';'", r"tests/broken/syntax-error\.nix:5:1"),
    "broken-json": ("[json.exception.parse_error.101] parse error at line 4, column 1",
                    r"tests/broken/broken-json\.nix:3:16"),
    "import-missing-file": ("instances-missing.nix", r"tests/broken/import-missing-file\.nix:5:15|"),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_an_evaluation_error_is_reduced_to_its_message_and_place(version: str, case: str) -> None:
    message, where = nix_error(recorded(f"eval-{version}-{case}.txt"), skip=OWN)
    want, place = EVAL_CASES[case]
    assert want in message and "|" not in message and not message.startswith("…")
    if version == "2.8.0" and case == "import-missing-file":
        assert where is None  # 2.8 gives no place in the user's files for it
    else:
        assert where is not None and re.fullmatch(rf".*/(?:{place})", where), where
        assert not where.startswith(OWN)


@pytest.mark.parametrize("version", VERSIONS)
def test_build_json_of_a_derivation_installable(version: str) -> None:
    out = recorded(f"build-json-{version}.txt")
    assert nix.built_outputs(out, ["@OK@"]) == ["/nix/store/@HASH@-nixout-ok"]


@pytest.mark.parametrize("version", VERSIONS)
def test_build_json_of_a_bare_drv_is_an_error_not_a_crash(version: str) -> None:
    out = recorded(f"build-json-bare-{version}.txt")
    if version == "2.8.0":  # a bare .drv still builds its outputs there
        assert nix.built_outputs(out, ["@OK@"]) == ["/nix/store/@HASH@-nixout-ok"]
    else:  # since 2.15 it names the .drv file itself: a list of strings comes back
        with pytest.raises(HiveError, match="does not understand"):
            nix.built_outputs(out, ["@OK@"])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_failed_build_says_why(version: str) -> None:
    line = headline(recorded(f"build-fail-{version}.txt"))
    assert "@BAD@" in line and "exit code 3" in line, line


def test_installable_syntax_per_version() -> None:
    drv = "/nix/store/x-a.drv"
    assert nix.installable(drv, nix.NixVersion(2, 8)) == drv
    assert nix.installable(drv, nix.NixVersion(2, 13)) == f"{drv}^out"
    assert nix.build_in_argv("ssh-ng://b", [drv], nix.NixVersion(2, 34))[-1] == f"{drv}^out"


# -- live: this machine's Nix ----------------------------------------------------------------

DERIVATION = """derivation { name = "nix-versions-test"; system = builtins.currentSystem;
  builder = "/usr/bin/sh"; PATH = "/usr/bin"; args = [ "-c" "echo ${toString builtins.currentTime} > $out" ]; }"""


@needs_nix
def test_this_machines_nix_builds_a_derivation_by_the_syntax_it_understands(tmp_path: Path) -> None:
    """The call a build host's build makes, against the local store: the installable and the
    JSON of this machine's Nix (each release of the matrix in turn)."""
    version = nix.local_version()
    assert version.at_least(2, 8)
    (tmp_path / "d.nix").write_text(DERIVATION)
    drv = process.run(["nix-instantiate", str(tmp_path / "d.nix")]).stdout.strip()
    [out] = nix.build_in("auto", [drv], env={})
    assert out.startswith("/nix/store/") and Path(out).read_text().strip().isdigit()
    # what went wrong on Nix 2.15 and later: the bare .drv builds nothing there
    bare = process.run([*nix.NIX, "build", "--no-link", "--json", drv]).stdout
    if version.at_least(2, 15):
        assert json.loads(bare) == [drv]
