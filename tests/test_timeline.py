"""The timeline of a run (issue 23): `nix-hive report FILE --svg OUT` and `deploy --timeline`.

Synthetic reports in the shape `deploy --report` writes: the SVG is well-formed, has a bar per
step per instance coloured by outcome, draws 3,000 instances in proportion to 300, refuses what is not a
report, and renders in a real headless Chromium (skipped, saying why, without it)."""

from __future__ import annotations

import html
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive import text as text_
from hive import timeline
from hive.errors import InputError
from hive.outcome import Outcome, Outcomes, Status
from hive.plan import Kind, TaskId
from hive.report import Row
from tests.conftest import needs, needs_lab, nix_hive

if TYPE_CHECKING:
    from tests.fleet import Fleet

SVG = "{http://www.w3.org/2000/svg}"


def synthetic(n: int, *, waves: int = 2, relays: int = 1, seed: int = 23) -> dict[str, Any]:
    """A report of a deploy of `n` instances: one relay per `relays`, some failures."""
    rng = random.Random(seed)
    stores = [f"ssh://relay-{r}" for r in range(relays)]
    builds = [{"systems": ["edge", "web"], "host": None, "outcome": "ok", "started": 0.1, "seconds": 12.0,
               "reason": ""}]
    relay_rows: list[dict[str, Any]] = [
        {"store": s, "owner": None, "upstream": None, "systems": ["web"], "instances": [], "outcome": "ok",
         "started": 12.2 + r, "seconds": 6.0 + r, "reason": ""} for r, s in enumerate(stores)]
    per_wave = -(-n // waves)
    opened = [0.0] + [36.0 + 25.0 * w for w in range(waves - 1)]
    rows: list[dict[str, Any]] = []
    for k in range(n):
        wave = k // per_wave + 1
        name = f"web-{k:03d}"
        relay = k % relays
        relay_rows[relay]["instances"].append(name)
        t0 = opened[wave - 1]
        push_at = max(18.2 + relay, t0) + rng.uniform(0, 2)
        push = rng.uniform(0.5, 3)
        act_at = push_at + push + rng.uniform(0, 1)
        act = rng.uniform(3, 9)
        outcome, reason = "ok", ""
        steps = {"build": "ok", "store": "ok", "push": "ok", "activate": "ok"}
        seconds: dict[str, float] = {"build": 12.0, "store": 6.0 + relay, "push": round(push, 2),
                                     "activate": round(act, 2), "check": round(act * 0.3, 2),
                                     "confirm": round(act * 0.1, 2)}
        if k % 37 == 3:
            outcome, reason = "rolled back", "activate: health check web failed: <HTTP 503> & \x1b[2J"
            steps["activate"] = outcome
            seconds = {**seconds, "rollback": 1.0}
            del seconds["confirm"]
        elif k % 53 == 4:
            outcome, reason = "failed", "push: nix copy exited 1: cannot connect"
            steps["push"] = outcome
            del steps["activate"]
            seconds = {key: v for key, v in seconds.items() if key in ("build", "store", "push")}
        started = {"build": 0.1, "store": 12.2 + relay, "push": round(push_at, 2), "activate": round(act_at, 2)}
        rows.append({"instance": name, "system": "web", "path": "/nix/store/abc-web", "outcome": outcome,
                     "reason": reason, "seconds": seconds, "wave": wave,
                     "started": {k: v for k, v in started.items() if k in steps}, "steps": steps})
    return {"outcome": "failed", "instances": rows, "began": "2026-12-03T01:00:00Z",
            "seconds": max(r["started"]["push"] + 12 for r in rows),
            "waves": [{"wave": w + 1, "started": opened[w]} for w in range(waves)],
            "relays": relay_rows, "builds": builds}


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def bars(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}rect") if e.get("data-step")]


def test_well_formed_with_a_bar_per_step_per_instance() -> None:
    report = synthetic(5, waves=2, relays=1)
    root = parsed(timeline.render(timeline.parse(report, "r.json")))
    drawn = bars(root)
    for row in report["instances"]:
        titles = [b.find(f"{SVG}title") for b in drawn]
        mine = [t.text or "" for t in titles if t is not None and (t.text or "").startswith(row["instance"] + " · ")]
        want = [s for s in timeline.STEPS if s in row["seconds"]]
        phases = [p for p in timeline.PHASES if p in row["seconds"]]
        assert sorted(m.split(" · ")[1] for m in mine) == sorted(want + phases), mine
    # the relay's copy and the build group have rows of their own
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "store ssh://relay-0" in texts and "build edge+web" in texts
    assert "wave 1" in texts and "wave 2" in texts


def test_bars_are_coloured_by_outcome() -> None:
    report = synthetic(60, waves=3, relays=2)
    root = parsed(timeline.render(timeline.parse(report, "r.json")))
    by_outcome: dict[str, set[str]] = {}
    for b in bars(root):
        if b.get("data-step") in timeline.STEPS:
            by_outcome.setdefault(b.get("data-outcome") or "", set()).add(b.get("fill") or "")
    assert by_outcome["ok"] == set(timeline.OUTCOME_COLOURS["ok"])
    assert by_outcome["rolled back"] and by_outcome["rolled back"] <= set(timeline.OUTCOME_COLOURS["rolled back"])
    assert by_outcome["failed"] and by_outcome["failed"] <= set(timeline.OUTCOME_COLOURS["failed"])
    # a wave boundary line for each wave after the first
    dashed = [e for e in root.iter(f"{SVG}line") if e.get("stroke-dasharray")]
    assert len(dashed) == 2


def test_text_from_hosts_is_escaped() -> None:
    report = synthetic(40)
    svg = timeline.render(timeline.parse(report, "r.json"))
    parsed(svg)  # parses: no raw control character, no raw <, &
    assert "\x1b" not in svg and "&lt;HTTP 503&gt; &amp; \\x1b[2J" in svg


def drawing_time(report: dict[str, Any]) -> float:
    """The shortest of three drawings of report, in seconds (the others met a busy machine)."""
    times = []
    for _ in range(3):
        began = time.perf_counter()
        timeline.render(timeline.parse(report, "r.json"))
        times.append(time.perf_counter() - began)
    return min(times)


def test_300_instances_render_with_every_label_and_3000_in_proportion() -> None:
    report = synthetic(300, waves=4, relays=3)
    svg = timeline.render(timeline.parse(report, "r.json"))
    # ten times the rows cost about ten times the time here (0.017 s, then 0.18 s): a drawing
    # that grows as the square of the rows takes a hundred times.  Compared within the test, on
    # the same machine at the same moment, never against a time of its own.
    small, large = drawing_time(report), drawing_time(synthetic(3000, waves=4, relays=3))
    assert large < 30 * small, f"300 rows: {small:.3f} s, 3,000 rows: {large:.3f} s ({large / small:.0f}x)"
    root = parsed(svg)
    labels = {t.text for t in root.iter(f"{SVG}text")}
    assert all(f"web-{k:03d}" in labels for k in range(300))
    assert float(root.get("height") or 0) < 300 * 14 + 400  # thin rows


def test_an_older_report_is_laid_end_to_end() -> None:
    old = {"outcome": "ok", "instances": [
        {"instance": "a", "system": "s", "path": "/p", "outcome": "ok", "reason": "",
         "seconds": {"build": 2.0, "push": 1.0, "activate": 3.0, "check": 1.0}},
        {"instance": "b", "system": "s", "path": "/p", "outcome": "failed", "reason": "push: no route",
         "seconds": {"build": 2.0, "push": 0.5}}]}
    t = timeline.parse(old, "old.json")
    assert t.estimated
    a = {b.step: b for b in t.lanes[0].bars}
    assert (a["build"].start, a["push"].start, a["activate"].start) == (0.0, 2.0, 3.0)
    assert a["check"].end == a["activate"].end
    b = {bar.step: bar.outcome for bar in t.lanes[1].bars}
    assert b == {"build": "ok", "push": "failed"}
    assert "no start times" in timeline.render(t)


@pytest.mark.parametrize("content", ['{"instances": 3}', "[1, 2]", "not json", '{"outcome": "ok"}',
                                     '{"instances": [{"name": "x"}]}'])
def test_what_is_not_a_report_is_refused(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = nix_hive("report", str(bad), "--svg", str(tmp_path / "o.svg"))
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {bad}: not a nix-hive report"), out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "o.svg").exists()


def test_report_command_writes_the_svg(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(synthetic(5)))
    out = nix_hive("report", str(report), "--svg", str(tmp_path / "t.svg"))
    assert out.returncode == 0, out.stderr
    parsed((tmp_path / "t.svg").read_text())
    unwritable = nix_hive("report", str(report), "--svg", str(tmp_path / "no" / "t.svg"))
    assert unwritable.returncode == 2
    assert unwritable.stderr == f"error: --svg {tmp_path / 'no' / 't.svg'}: cannot write there\n"
    missing = nix_hive("report", str(tmp_path / "none.json"), "--svg", str(tmp_path / "t.svg"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_outcomes_record_when_each_step_started() -> None:
    outcomes = Outcomes()
    time.sleep(0.05)
    outcomes.set(TaskId(Kind.PUSH, "a"), Outcome(Status.OK, seconds=0.03))
    found = outcomes.get(TaskId(Kind.PUSH, "a"))
    assert found is not None and found.started is not None
    assert 0.0 <= found.started <= 0.1
    # rows of other commands keep their old JSON; a deploy's gains wave, started, steps
    assert set(Row("a", "s", "", "ok", "").as_json()) == {"instance", "system", "path", "outcome", "reason", "seconds"}
    row = Row("a", "s", "", "ok", "", {"push": 1.0}, {"push": 2.0}, {"push": "ok"}, 1).as_json()
    assert row["started"] == {"push": 2.0} and row["steps"] == {"push": "ok"} and row["wave"] == 1


# --- hostile input (issue 27): any text is well-formed XML, any report is drawn or refused ----

# Every character, lone surrogates too (a file name's undecodable bytes, as Python reads them).
ANY_CHARACTER = st.characters(codec=None, categories=None)
XML_HOSTILE = ["<&>\"'", "".join(map(chr, range(32))), "\ufffe\uffff", "\ud800", "\udfff x \ud83d", "]]><!--",
               "\x7f\x85\u2028\u202e"]


def well_formed(svg: str) -> ET.Element:
    """The SVG as an XML parser reads it (raises on a character XML 1.0 forbids, escaped or not)."""
    return ET.fromstring(svg.encode("utf-8"))


def hostile_report(value: str) -> dict[str, Any]:
    """A report with `value` in every string it may hold."""
    report = synthetic(3)
    report["began"] = value
    report["builds"][0].update(host=value, reason=value, systems=[value])
    report["relays"][0].update(store=value, reason=value, instances=[value])
    row = report["instances"][0]
    row.update(instance=value, outcome=value, reason=value, steps={step: value for step in row["steps"]})
    return report


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.text(ANY_CHARACTER, max_size=40), st.sampled_from(XML_HOSTILE)))
def test_any_text_is_drawn_as_well_formed_xml(value: str) -> None:
    svg = timeline.render(timeline.parse(hostile_report(value), "r.json"))
    root = well_formed(svg)
    assert root.find(f"{SVG}title") is not None
    element = well_formed(f'<a b="{text_.xml(value)}">{text_.xml(value)}</a>')
    assert (element.text or "") == text_.line(value)  # as printed on a terminal: the same escapes
    assert element.get("b") == text_.line(value).replace("\t", " ")  # an XML parser makes a tab in a value a space


def test_a_host_s_noncharacters_leave_the_run_s_own_timeline_well_formed() -> None:
    """What `deploy --timeline` draws of its own run (cli._show): a check's output with U+FFFE
    and U+FFFF, a lone surrogate, controls and markup in a row's reason."""
    report = synthetic(3)
    said = "activate: health check web failed: \ufffe\uffff \ud800 \x00\x1b[2J <svg onload=x> & ]]>"
    report["instances"][1].update(outcome="rolled back", reason=said)
    root = well_formed(timeline.render(timeline.parse(text_.bounded(report), "the run")))
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    shown = [t for t in titles if "health check web failed" in t]
    assert shown and all("\\ufffe\\uffff \\ud800 \\x00\\x1b[2J <svg onload=x> & ]]>" in t for t in shown), shown


MALFORMED = {
    '{"instances": [], "waves": 3}': "waves: 3 is not a list",
    '{"instances": [], "builds": [{"systems": 5}]}': "builds[0].systems: 5 is not a list",
    '{"instances": [], "relays": [{"store": "s", "instances": 7}]}': "relays[0].instances: 7 is not a list",
    '{"instances": [], "relays": [7]}': "relays[0]: 7 is not an object",
    '{"instances": [{"instance": "a", "seconds": {"build": 1e308}, "started": {"build": 1e308}}]}':
        "instances[0].seconds.build: 1e+308 is not a number of seconds from 0 to 1e+09",
    '{"instances": [{"instance": "a", "seconds": {"build": NaN}}]}':
        "instances[0].seconds.build: NaN is not a number of seconds",
    '{"instances": [{"instance": "a", "seconds": {"push": Infinity}}]}':
        "instances[0].seconds.push: Infinity is not a number of seconds",
    '{"instances": [{"instance": "a", "seconds": {"push": -1}}]}': "instances[0].seconds.push: -1 is not a number",
    '{"instances": [{"instance": "a", "seconds": {"push": 1' + "0" * 400 + '}}]}':
        "instances[0].seconds.push: a number of 401 digits is not a number of seconds",
    '{"instances": [{"instance": "a", "seconds": {"push": "1"}}]}':
        'instances[0].seconds.push: "1" is not a number of seconds',
    '{"instances": [{"instance": "a", "seconds": {}, "started": [1]}]}': "instances[0].started: a list is not",
    '{"instances": [{"instance": "a", "seconds": {}, "steps": {"push": 3}}]}':
        "instances[0].steps.push: 3 is not a string",
    '{"instances": [{"instance": "a", "seconds": {}, "wave": true}]}': "instances[0].wave: true is not a wave number",
    '{"instances": [{"instance": "a", "seconds": {}, "wave": 1e9}]}': "instances[0].wave: 1000000000.0 is not",
    '{"instances": [{"instance": "a", "seconds": {}, "reason": ["x"]}]}': "instances[0].reason: a list is not",
    '{"instances": [], "waves": [{"wave": 2, "started": "soon"}]}': 'waves[0].started: "soon" is not a number',
    '{"instances": [], "seconds": 1e999}': "seconds: Infinity is not a number of seconds",
    '{"instances": [], "began": 5}': "began: 5 is not a string",
    '{"instances": {"a": 1}}': "not a nix-hive report (expected",
    "[" * 100_000 + "]" * 100_000: "not a nix-hive report (JSON nested too deeply)",
    '{"instances": [' + "[" * 100_000 + "]" * 100_000 + "]}": "not a nix-hive report",
}


@pytest.mark.parametrize(("content", "said"), MALFORMED.items(), ids=range(len(MALFORMED)))
def test_a_malformed_report_is_one_error_line_naming_the_field(tmp_path: Path, content: str, said: str) -> None:
    bad = tmp_path / "r.json"
    bad.write_text(content)
    with pytest.raises(InputError) as caught:
        timeline.load(bad)
    assert str(caught.value).startswith(f"{bad}: ") and said in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_the_report_command_says_one_line_and_exits_2(tmp_path: Path) -> None:
    """The two tracebacks of issue 27 (a wave list that is a number; steps that end at infinity)."""
    for content in ('{"instances": [], "waves": 3}',
                    '{"instances": [{"instance": "a", "seconds": {"build": 1e308}, "started": {"build": 1e308}}]}'):
        bad = tmp_path / "r.json"
        bad.write_text(content)
        out = nix_hive("report", str(bad), "--svg", str(tmp_path / "o.svg"))
        assert out.returncode == 2 and out.stderr.startswith(f"error: {bad}: not a nix-hive report: "), out.stderr
        assert len(out.stderr.splitlines()) == 1 and not (tmp_path / "o.svg").exists()


# Any JSON value, NaN, infinities and numbers too large for a float among them.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([10 ** 400, -(10 ** 30), 1e308, -0.0])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(ANY_CHARACTER, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly what nix-hive writes, sometimes anything (so that about half the reports are drawn)."""
    return st.sampled_from(range(12)).flatmap(lambda n: JSON if n == 0 else valid)


NUMBERS = maybe(st.one_of(st.floats(0, 5000), st.integers(0, 5000)))
STEP_NAMES = st.sampled_from([*timeline.STEPS, *timeline.PHASES, "connect"]) | st.text(max_size=4)
TEXT = st.text(ANY_CHARACTER, max_size=12)
ROW = st.fixed_dictionaries(
    {"instance": maybe(TEXT), "seconds": maybe(st.dictionaries(STEP_NAMES, NUMBERS, max_size=6))},
    optional={"started": maybe(st.dictionaries(STEP_NAMES, NUMBERS, max_size=6)),
              "steps": maybe(st.dictionaries(STEP_NAMES, maybe(TEXT), max_size=6)),
              "wave": maybe(st.integers(1, 5)), "outcome": maybe(TEXT), "reason": maybe(TEXT | st.none()),
              "system": maybe(TEXT), "path": maybe(TEXT)})
SHARED = st.fixed_dictionaries({}, optional={
    "systems": maybe(st.lists(TEXT, max_size=3)), "host": maybe(TEXT | st.none()), "store": maybe(TEXT),
    "instances": maybe(st.lists(TEXT, max_size=3)), "outcome": maybe(TEXT | st.none()),
    "started": maybe(NUMBERS | st.none()), "seconds": maybe(NUMBERS | st.none()), "reason": maybe(TEXT)})
REPORT = st.fixed_dictionaries(
    {"instances": maybe(st.lists(maybe(ROW), max_size=4))},
    optional={"builds": maybe(st.lists(maybe(SHARED), max_size=2)),
              "relays": maybe(st.lists(maybe(SHARED), max_size=2)),
              "waves": maybe(st.lists(maybe(st.fixed_dictionaries({"wave": maybe(st.integers(1, 4)),
                                                                   "started": maybe(NUMBERS)})), max_size=3)),
              "seconds": NUMBERS, "began": maybe(TEXT), "outcome": maybe(TEXT)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report=st.one_of(REPORT, JSON))
def test_any_report_shape_is_drawn_well_formed_or_refused_in_one_line(report: Any) -> None:
    try:
        drawn = timeline.parse(report, "r.json")
    except InputError as exc:
        assert str(exc).startswith("r.json: not a nix-hive report") and "\n" not in str(exc), str(exc)
        return
    well_formed(timeline.render(drawn))


@settings(max_examples=100, deadline=None)
@given(report=REPORT)
def test_any_report_file_loads_or_is_refused_in_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                           report: Any) -> None:
    path = tmp_path_factory.mktemp("report") / "r.json"
    path.write_bytes(json.dumps(report).encode("utf-8", "surrogatepass"))  # NaN, Infinity, bad UTF-8 and all
    try:
        drawn = timeline.load(path)
    except InputError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc), str(exc)
        return
    well_formed(timeline.render(drawn))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# A page that parses the drawing as the browser parses an .svg file, draws it, and says what it
# drew (or the parser's error) in #result, which Chromium's --dump-dom prints once the page loaded.
PAGE = """<!doctype html>
<html><body><p id="result">the script did not run</p><script>
const result = document.getElementById("result");
const doc = new DOMParser().parseFromString(SVG_TEXT, "image/svg+xml");
const error = doc.querySelector("parsererror");
if (error || doc.documentElement.localName !== "svg") {
  result.textContent = "not drawn: " + (error ? error.textContent : doc.documentElement.localName);
} else {
  const svg = document.body.appendChild(document.importNode(doc.documentElement, true));
  const box = svg.getBBox();
  result.textContent = "drawn: " + svg.querySelectorAll("rect[data-step]").length + " bars, "
    + svg.querySelectorAll("text").length + " texts, " + Math.round(box.width) + "x" + Math.round(box.height);
  svg.remove();
}
</script></body></html>
"""


def in_chromium(page: Path) -> str:
    """What the page says in #result once headless Chromium loaded it (which must exit 0)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = re.search(r'<p id="result">(.*?)</p>', done.stdout, re.DOTALL)
    assert found is not None, done.stdout[:2000]
    return html.unescape(found.group(1))


@needs("chromium", None if CHROMIUM else "chromium is not installed (apt-get install -y chromium): the "
       "browser rendering test needs it")
@pytest.mark.parametrize("n", [5, 300])
def test_renders_in_headless_chromium(tmp_path: Path, n: int) -> None:
    """The browser parses the drawing, finds every bar and text, and lays it out."""
    svg = timeline.render(timeline.parse(synthetic(n, waves=2 if n < 10 else 4, relays=1 if n < 10 else 3),
                                         "r.json"))
    page = tmp_path / f"timeline-{n}.html"
    page.write_text(PAGE.replace("SVG_TEXT", json.dumps(svg)))
    said = in_chromium(page)
    assert said.startswith("drawn: "), said  # not the parser's error
    root = parsed(svg)
    texts = sum(1 for _ in root.iter(f"{SVG}text"))
    drawn = re.fullmatch(rf"drawn: {len(bars(root))} bars, {texts} texts, (\d+)x(\d+)", said)
    assert drawn is not None, said
    assert int(drawn[1]) > 0 and int(drawn[2]) > 0, said
    keep = Path(tempfile.gettempdir()) / "nix-hive-timeline-shots"
    keep.mkdir(exist_ok=True)
    (keep / f"timeline-{n}.svg").write_text(svg)  # to look at


@needs_lab
def test_a_deploy_draws_its_timeline(fleet_factory: Callable[..., Fleet], tmp_path: Path) -> None:
    """The example on the lab (portico first, then the www hosts through it): the report says
    when each step started, and --timeline draws it."""
    fleet = fleet_factory()
    report, svg = tmp_path / "report.json", tmp_path / "run.svg"
    result = fleet.deploy("--report", str(report), "--timeline", str(svg), "portico", "*")
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    rows = {r["instance"]: r for r in data["instances"]}
    assert [rows[h]["wave"] for h in ("portico", "www-1", "www-2", "www-3")] == [1, 2, 2, 2]
    for row in rows.values():
        assert set(row["seconds"]) & set(timeline.STEPS) <= set(row["started"]) and "activate" in row["started"]
        # starts are derived from seconds rounded to 0.01 s: in order up to that rounding
        assert row["started"]["push"] <= row["started"]["activate"] + 0.02 <= data["seconds"] + 0.04
        assert set(row["steps"].values()) == {"ok"}
    [relay] = data["relays"]
    assert relay["store"] == "ssh://portico" and relay["instances"] == ["www-1", "www-2", "www-3"]
    assert relay["outcome"] == "ok" and relay["started"] <= rows["www-1"]["started"]["push"] + 0.02
    wave2 = data["waves"][1]
    assert wave2["wave"] == 2 and wave2["started"] + 0.02 >= rows["portico"]["started"]["activate"]
    root = parsed(svg.read_text())
    steps = [b.get("data-step") for b in bars(root)]
    assert steps.count("activate") == 4 and steps.count("push") == 4 and steps.count("store") == 1 + 3
    if CHROMIUM is not None:  # to look at
        keep = Path(tempfile.gettempdir()) / "nix-hive-timeline-shots"
        keep.mkdir(exist_ok=True)
        shutil.copy(svg, keep / "lab-run.svg")


def test_the_title_names_the_groups_a_confirmed_deploy_changed() -> None:
    """deploy --diff/--confirm put the diff in the report: its changing groups are in the title."""
    report = {"instances": [{"instance": "web-1", "seconds": {}}], "began": "2026-12-07T10:00:00Z", "outcome": "ok",
              "diff": {"groups": [
                  {"instances": ["web-1", "web-2", "web-3"], "systems": ["web"], "state": "changes"},
                  {"instances": ["db-1"], "systems": ["db"], "state": "unchanged"},
                  {"instances": ["new-1"], "systems": ["db"], "state": "new"}]}}
    title = timeline.parse(report, "r").title
    assert title.endswith("; changing: web-1…web-3 (web), new-1 (db)"), title
    del report["diff"]
    assert "changing" not in timeline.parse(report, "r").title
