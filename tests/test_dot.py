"""The map of a plan (issue 23): `nix-hive plan --dot`, checked by Graphviz's own `dot`
(Debian's graphviz, a test dependency: skipped, saying so, without it)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hive import dot
from hive.model import Hive, Instance, System, frozen_map
from hive.plan import make_plan
from tests.conftest import REPO, needs, needs_nix, nix_hive

DOT = shutil.which("dot")
needs_dot = needs("dot", None if DOT else "Graphviz's dot is not installed (apt-get install -y graphviz)")


def rendered(source: str) -> ET.Element:
    """`dot -Tsvg` of `source`: it must accept it, silently, and make SVG."""
    assert DOT is not None
    out = subprocess.run([DOT, "-Tsvg"], input=source, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return ET.fromstring(out.stdout)


def fleet(n: int) -> Hive:
    """A relay host with a build host, a chained regional relay, an HTTP cache, `n` web hosts."""
    systems = {"edge": System("edge", frozen_map()), "region": System("region", frozen_map()),
               "web": System("web", frozen_map(), build_host="builder"),
               "db": System("db", frozen_map())}
    instances = {"portico": Instance("portico", "edge"), "eu": Instance("eu", "region", store="ssh://portico"),
                 "db-1": Instance("db-1", "db", store="http://cache:8080")}
    for k in range(n):
        instances[f"web-{k}"] = Instance(f"web-{k}", "web", store="ssh://eu" if k % 2 else "http://cache:8080")
    return Hive(file=Path("/d/hive.nix"), shown='my "fleet"\\hive.nix', paths=frozen_map(), systems=systems,
                instances=instances, uploads={"http://cache:8080": "ssh://cache?remote-store=file:///srv/c"})


def test_the_graph_names_every_part_of_the_plan() -> None:
    h = fleet(4)
    waves = [(h.instances["portico"],), (h.instances["eu"], h.instances["db-1"]),
             tuple(h.instances[f"web-{k}"] for k in range(4))]
    text = dot.render(make_plan(h, waves), h)
    assert text.startswith("digraph plan {") and text.rstrip().endswith("}")
    for part in ('label="build host\\nbuilder', "relay store\\nssh://portico", "relay store\\nssh://eu",
                 "written through ssh://cache?remote-store=file:///srv/c", "cluster_wave_1", "cluster_wave_3",
                 "web-3\\nsystem web", 'my \\"fleet\\"\\\\hive.nix'):
        assert part in text, part
    assert text.count("subgraph cluster_wave_") == 3


def test_many_instances_alike_are_one_node() -> None:
    h = fleet(300)
    text = dot.render(make_plan(h, [tuple(h.instances.values())]), h)
    assert "150 instances of web" in text and text.count("instances of web") == 2
    assert len(text) < 10_000  # a picture, not a list of 300 names


def test_quote_escapes_what_dot_would_read() -> None:
    assert dot.quote('a"b\\c\nd') == '"a\\"b\\\\c\\\\nd"'


@needs_dot
@pytest.mark.parametrize("n", [4, 300])
def test_dot_accepts_it(n: int) -> None:
    h = fleet(n)
    waves = [(h.instances["portico"],), tuple(i for name, i in h.instances.items() if name != "portico")]
    svg = rendered(dot.render(make_plan(h, waves), h))
    titles = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")}
    assert {"deployer", "build_0", "relay_0", "cluster_wave_1", "cluster_wave_2"} <= titles


@needs_nix
@needs_dot
def test_plan_dot_of_the_example() -> None:
    out = nix_hive("plan", "--dot", "-c", str(REPO / "example"), "portico", "*")
    assert out.returncode == 0, out.stderr
    svg = rendered(out.stdout)
    texts = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "ssh://portico" in texts and "www-3" in texts and "wave 2: 3 instances" in texts
    both = nix_hive("plan", "--dot", "--json", "-c", str(REPO / "example"))
    assert both.returncode == 2 and both.stderr == "error: plan: --dot or --json, not both\n"
