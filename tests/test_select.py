"""Selection: order of patterns, each instance once, tags and systems, no-match errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive.errors import SelectionError
from hive.model import Hive, Instance, System, frozen_map
from hive.select import select, split_patterns, systems_of


def make_hive() -> Hive:
    systems = {
        "portico": System("portico", frozen_map(), tags=("edge",)),
        "www": System("www", frozen_map(), tags=("web",)),
        "db": System("db", frozen_map()),
    }
    instances = {
        "portico": Instance("portico", "portico"),
        "www-1": Instance("www-1", "www", store="ssh://portico"),
        "www-2": Instance("www-2", "www", store="ssh://portico", tags=("canary",)),
        "www-10": Instance("www-10", "www"),
        "db-a": Instance("db-a", "db", tags=("canary", "storage")),
    }
    return Hive(file=Path("/x/hive.nix"), shown="hive.nix", paths=frozen_map(), systems=systems,
                instances=instances)


def names(waves: list[tuple[Instance, ...]]) -> list[list[str]]:
    return [[i.name for i in wave] for wave in waves]


def test_portico_first_then_everything_once() -> None:
    waves = select(make_hive(), ["portico", "*"])
    assert names(waves) == [["portico"], ["db-a", "www-1", "www-10", "www-2"]]


def test_no_pattern_selects_every_instance_sorted() -> None:
    assert names(select(make_hive(), [])) == [["db-a", "portico", "www-1", "www-10", "www-2"]]


def test_patterns_match_systems_and_tags() -> None:
    hive = make_hive()
    assert names(select(hive, ["www"])) == [["www-1", "www-10", "www-2"]]  # system name
    assert names(select(hive, ["canary"])) == [["db-a", "www-2"]]  # instance tag
    assert names(select(hive, ["edge"])) == [["portico"]]  # system tag
    assert names(select(hive, ["www-?"])) == [["www-1", "www-2"]]  # glob on names


def test_each_instance_once_and_empty_waves_dropped() -> None:
    waves = select(make_hive(), ["canary", "www-2", "db-*", "www*"])
    assert names(waves) == [["db-a", "www-2"], ["www-1", "www-10"]]


def test_comma_separated_targets_as_doit_passes_them() -> None:
    assert split_patterns(["portico,*", " www-1 "]) == ["portico", "*", "www-1"]
    assert names(select(make_hive(), ["portico,www-1"])) == [["portico"], ["www-1"]]


def test_pattern_matching_nothing_is_an_error_naming_it() -> None:
    with pytest.raises(SelectionError, match=r"'nope\*' matches no instance, system or tag of hive\.nix"):
        select(make_hive(), ["portico", "nope*"])


def test_an_empty_pattern_is_an_error_not_everything() -> None:
    for patterns in ([""], ["portico,"], [","], ["portico", " "]):
        with pytest.raises(SelectionError, match="empty pattern"):
            select(make_hive(), patterns)


def test_glob_is_case_sensitive_and_whole_name() -> None:
    with pytest.raises(SelectionError):
        select(make_hive(), ["WWW"])
    with pytest.raises(SelectionError):
        select(make_hive(), ["ww"])


def test_systems_in_selection_order() -> None:
    hive = make_hive()
    assert systems_of(hive, select(hive, ["portico", "*"])) == ["portico", "db", "www"]
    assert systems_of(hive, select(hive, ["www-2", "db-a"])) == ["www", "db"]


def test_at_tag_matches_tags_alone_as_colmena_users_type_it() -> None:
    h = make_hive()
    assert [[i.name for i in w] for w in select(h, ["@canary"])] == [["db-a", "www-2"]]
    assert [[i.name for i in w] for w in select(h, ["@web"])] == [["www-1", "www-10", "www-2"]]  # a system's tag
    with pytest.raises(SelectionError, match=r"pattern '@www' matches no tag of hive.nix"):
        select(h, ["@www"])  # a system's name, not a tag
