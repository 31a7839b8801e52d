"""The plan: what a run will do, computed without Nix or ssh."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hive import options, plan
from hive.errors import InputError
from hive.evaluate import build_model, validate
from hive.model import Goal, Hive, Instance, Step, System, frozen_map
from hive.plan import Kind, TaskId, make_plan


def hive(systems: dict[str, dict[str, str]], **instances: Instance) -> Hive:
    return Hive(file=Path("/d/hive.nix"), shown="hive.nix", paths=frozen_map(),
                systems={n: System(n, frozen_map(p)) for n, p in systems.items()}, instances=instances)


def deps(p: plan.Plan, name: str) -> list[str]:
    task = TaskId.parse(name)
    assert task is not None
    return [str(d) for d in p.task(task).deps]


def test_task_ids_round_trip_and_refuse_foreign_names() -> None:
    for name in ("build:web", "nix-build:a+b", "store:ssh://portico", "push:www-1.example.com", "wave:2", "deploy"):
        task = TaskId.parse(name)
        assert task is not None and str(task) == name
    assert TaskId.parse("frobnicate:x") is None
    assert TaskId(Kind.STORE, plan.relay_label("ssh://portico?compress=true")).target == "ssh://portico?compress%3Dtrue"


def test_relays_hold_each_system_once_and_their_own_first() -> None:
    h = hive({"edge": {}, "web": {}, "db": {}},
             portico=Instance("portico", "edge"),
             w1=Instance("w1", "web", store="ssh://portico"), w2=Instance("w2", "web", store="ssh://portico"),
             d1=Instance("d1", "db", store="ssh://portico"), c1=Instance("c1", "db", store="s3://cache"))
    p = make_plan(h, [tuple(h.instances[n] for n in ("w1", "w2", "d1", "c1", "portico"))])
    assert [(r.url, r.systems, r.owner) for r in p.relays] == [
        ("ssh://portico", ("edge", "web", "db"), "portico"), ("s3://cache", ("db",), None)]
    assert plan.store_instance(h, "ssh://root@portico?compress=true") == h.instances["portico"]
    assert plan.store_instance(h, "ssh-ng://portico") == h.instances["portico"]
    assert plan.store_instance(h, "s3://cache") is None
    # a relay instance gets its system with its store's copy; the others wait for their relay
    assert deps(p, "push:portico") == ["build:edge", "store:ssh://portico"]
    assert deps(p, "push:w1") == ["build:web", "store:ssh://portico"]
    assert deps(p, "store:ssh://portico") == ["build:edge", "build:web", "build:db"]


def test_chained_relays_hold_what_the_relays_below_them_hold() -> None:
    h = hive({"edge": {}, "region": {}, "web": {}},
             portico=Instance("portico", "edge"), eu=Instance("eu", "region", store="ssh://portico"),
             w1=Instance("w1", "web", store="ssh://eu"),
             # a loop of relays is cut: neither substitutes from the other
             a=Instance("a", "web", store="ssh://b"), b=Instance("b", "web", store="ssh://a"))
    p = make_plan(h, [tuple(h.instances[n] for n in ("w1", "eu", "portico"))])
    assert [(r.url, r.systems, r.upstream) for r in p.relays] == [
        ("ssh://portico", ("edge", "region", "web"), None), ("ssh://eu", ("region", "web"), "ssh://portico")]
    assert "store:ssh://portico" in deps(p, "store:ssh://eu")
    assert [r.url for r in p.relay_chain(h.instances["w1"])] == ["ssh://eu", "ssh://portico"]
    assert plan.upstream(h, "ssh://a") is None and plan.upstream(h, "ssh://b") is None


def test_jump_hosts_that_are_instances_and_ones_that_are_not() -> None:
    h = hive({"s": {}},
             portico=Instance("portico", "s"),
             w1=Instance("w1", "s", ssh=frozen_map({"ProxyJump": "deploy@portico:2222"})),
             w2=Instance("w2", "s", ssh=frozen_map({"ProxyJump": "bastion.example.com,ssh://[2001:db8::1]:22"})),
             w3=Instance("w3", "s", store="ssh://root@relay?compress=true"), relay=Instance("relay", "s"))
    p = make_plan(h, [tuple(h.instances[n] for n in ("w1", "w2", "w3"))])
    assert p.hubs == {"portico", "bastion.example.com", "2001:db8::1", "relay"}
    # the relay is not selected: it is filled, not deployed
    assert [r.owner for r in p.relays] == ["relay"] and p.relays[0].systems == ("s",)


def test_systems_sharing_paths_and_platform_are_one_build_group() -> None:
    h = hive({"a": {"nixpkgs": "/x"}, "b": {"nixpkgs": "/x"}, "c": {"nixpkgs": "/y"}},
             **{n: Instance(n, s) for n, s in (("i1", "b"), ("i2", "a"), ("i3", "c"), ("i4", "b"))})
    p = make_plan(h, [tuple(h.instances.values())], build_only=True)
    assert [g.systems for g in p.groups] == [("b", "a"), ("c",)]
    assert [str(t.id) for t in p.tasks] == ["nix-build:b+a", "build:b", "build:a", "nix-build:c", "build:c"]
    assert p.task(TaskId(Kind.BUILD, "a")).setup == (TaskId(Kind.NIX_BUILD, "b+a"),)
    assert not any(t.id.kind in (Kind.PUSH, Kind.STORE, Kind.DEPLOY) for t in p.tasks)  # build only


def test_the_host_an_http_cache_is_uploaded_through_keeps_its_connection() -> None:
    h = dataclasses.replace(hive({"web": {}, "cache": {}}, cache=Instance("cache", "cache"),
                                 w1=Instance("w1", "web", store="http://cache:8080")),
                            uploads={"http://cache:8080": "ssh://cache?remote-store=file:///srv/c"})
    p = make_plan(h, [(h.instances["cache"], h.instances["w1"])])
    assert p.hubs == {"cache"}  # its own activation must not close the connection the upload uses


def test_build_hosts_come_from_the_system_the_deployment_or_the_command_line() -> None:
    raw = {"buildHost": "builder", "systems": {"a": {"configuration": "set"},
                                               "b": {"configuration": "set", "buildHost": "portico"},
                                               "c": {"configuration": "set", "buildHost": None}},
           "instances": {n: {"system": n} for n in "abc"}}
    validate(raw, "hive.nix")
    h = build_model(raw, Path("/d/hive.nix"), "hive.nix")
    assert {n: s.build_host for n, s in h.systems.items()} == {"a": "builder", "b": "portico", "c": None}
    assert h.systems["a"].build_store == "ssh-ng://builder" and h.systems["c"].build_store is None
    p = make_plan(h, [tuple(h.instances.values())])
    assert [(g.systems, g.host) for g in p.groups] == [(("a",), "builder"), (("b",), "portico"), (("c",), None)]
    assert {"builder", "portico"} <= p.hubs  # their connections stay open for the copies from them
    builds = plan.as_json(p)["builds"]
    assert isinstance(builds, list) and [b["buildHost"] for b in builds] == ["builder", "portico", None]
    everywhere = build_model(raw, Path("/d/hive.nix"), "hive.nix", build_host="big")
    assert {s.build_host for s in everywhere.systems.values()} == {"big"}
    assert len(make_plan(everywhere, [tuple(everywhere.instances.values())]).groups) == 1
    with pytest.raises(InputError, match="--build-host '-oProxyCommand=x': expected an ssh host name"):
        options.build_host("-oProxyCommand=x")


def test_waves_are_gated_one_after_the_other() -> None:
    h = hive({"s": {}}, **{n: Instance(n, "s") for n in ("p", "a", "b", "c")})
    waves = [(h.instances["p"],), (h.instances["a"], h.instances["b"]), (h.instances["c"],)]
    p = make_plan(h, waves, goal=Goal.BOOT)
    assert deps(p, "push:p") == ["build:s"] and deps(p, "activate:p") == ["push:p"]
    assert deps(p, "wave:2") == [] and deps(p, "wave:3") == ["wave:2"]
    assert deps(p, "push:a") == ["build:s", "wave:2"] and deps(p, "activate:c") == ["push:c", "wave:3"]
    assert deps(p, "deploy") == ["activate:p", "activate:a", "activate:b", "activate:c"]
    assert p.wave_of("b") == 2 and "(boot, at most 600 s)" in p.task(TaskId(Kind.ACTIVATE, "a")).doc
    pushed = make_plan(h, waves, final=Kind.PUSH)
    assert deps(pushed, "deploy") == ["push:p", "push:a", "push:b", "push:c"]
    assert not any(t.id.kind is Kind.ACTIVATE for t in pushed.tasks)


def test_no_marks_the_tasks_it_may_skip() -> None:
    h = hive({"s": {}}, r=Instance("r", "s"), w=Instance("w", "s", store="ssh://r"))
    p = make_plan(h, [tuple(h.instances.values())], skip=frozenset({Step.PUSH}))
    data = plan.as_json(p)
    skippable = {t["task"]: t["skippable"] for t in data["tasks"]}  # type: ignore[attr-defined]
    assert skippable["push:w"] == "push" and skippable["store:ssh://r"] == "push"
    assert skippable["activate:w"] is None and skippable["build:s"] is None
    assert data["waves"] == [["r", "w"]] and data["skip"] == ["push"]
