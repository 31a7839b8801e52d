"""Property-based tests (hypothesis) for what takes arbitrary strings: ssh options as the
deployment gives them (rendered into the ssh configuration and checked by ssh itself), and
pattern selection. The state file's codec has its own in test_state.py."""

from __future__ import annotations

import fnmatch
import json
import shutil
import string
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive import checks, ssh, text
from hive import schema as schema_
from hive.errors import DeploymentError, SelectionError
from hive.evaluate import _accepts, _validator, build_model, validate
from hive.model import Hive, Instance, System, frozen_map
from hive.resources import schema_file
from hive.select import flatten, select
from tests.conftest import needs

needs_ssh = needs("ssh", None if shutil.which("ssh") else "ssh is not installed")

OPTION_NAMES = st.one_of(
    st.sampled_from(["User", "Port", "IdentityFile", "SendEnv", "SetEnv", "Ciphers", "ConnectTimeout",
                     "ServerAliveCountMax", "Compression", "HostKeyAlias", "LogLevel", "BindAddress",
                     "ProxyJump", "PKCS11Provider", "LocalForward", "Match", "Host", "Include"]),
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=12),
)
VALUES = st.one_of(
    st.text(alphabet=string.printable + "é\u00a0", max_size=24),
    st.sampled_from(["yes", "no", "22", "three", "a b", "'quoted'", "x # comment", "Host evil", "\nHost evil",
                     "LANG LC_*", "none", "-oProxyCommand=x"]),
    st.integers(min_value=-5, max_value=70000),
    st.booleans(),
)


# Options ssh takes as given: without them few of the examples above get past the checks (3 to 8
# of 80), and a check that refused everything would pass the test.
WORD = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=12).filter(
    lambda w: w[0].isalpha())
VALID = {
    "Hostname": st.builds("10.{}.{}.{}".format, st.integers(0, 255), st.integers(0, 255), st.integers(1, 254)),
    "Port": st.integers(min_value=1, max_value=65535),
    "User": WORD,
    "HostKeyAlias": WORD,
    "ConnectTimeout": st.integers(min_value=1, max_value=600),
    "ServerAliveInterval": st.integers(min_value=0, max_value=600),
    "ServerAliveCountMax": st.integers(min_value=0, max_value=10),
    "Compression": st.sampled_from(["yes", "no"]),
    "IdentitiesOnly": st.sampled_from(["yes", "no"]),
    "AddressFamily": st.sampled_from(["any", "inet", "inet6"]),
    "LogLevel": st.sampled_from(["QUIET", "FATAL", "ERROR", "INFO", "VERBOSE", "DEBUG"]),
    "Ciphers": st.sampled_from(["aes128-ctr", "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com"]),
    "SendEnv": st.sampled_from(["LANG LC_*", "TZ"]),
    "SetEnv": st.builds("{}={}".format, st.sampled_from(["FOO", "APP_MODE"]), WORD),
    "ProxyJump": st.just("b"),
}
VALID_OPTIONS = st.lists(st.sampled_from(sorted(VALID)), min_size=1, max_size=4, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALID[k] for k in keys}))
EXAMPLES = 80


@needs_ssh
def test_ssh_options_are_refused_by_name_or_reach_ssh_intact(tmp_path_factory: pytest.TempPathFactory) -> None:
    outcomes: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(options=st.one_of(st.dictionaries(OPTION_NAMES, VALUES, max_size=4), VALID_OPTIONS))
    def refused_by_name_or_intact(options: dict[str, object]) -> None:
        outcomes.append(refused_or_intact(options, tmp_path_factory))

    refused_by_name_or_intact()
    # both ways are taken, each a good share of the time: neither a check that refused
    # everything nor one that let everything through passes
    reached = outcomes.count("ssh -G")
    assert reached >= len(outcomes) // 3 and outcomes.count("refused") >= len(outcomes) // 10, (
        f"{reached} of {len(outcomes)} examples reached ssh -G")


def refused_or_intact(options: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> str:
    """"refused" (one line naming the attribute at fault) or "ssh -G" (ssh reads the
    generated configuration, and each host's address in it is the one given)."""
    raw = {"systems": {"s": {"configuration": "set"}},
           "instances": {"a": {"system": "s", "ssh": options}, "b": {"system": "s", "ssh": {"Hostname": "10.0.0.2"}}}}
    try:
        validate(raw, "hive.nix")
        hive = build_model(raw, Path("/d/hive.nix"), "hive.nix")
        checks.jump_loops(hive)
        checks.ssh_config(hive)
    except DeploymentError as exc:
        # refused: one line naming the attribute at fault (an ssh option of `a`, or `a` itself)
        assert "\n" not in str(exc)
        assert exc.attribute is not None and exc.attribute.startswith("instances.a"), str(exc)
        return "refused"
    directory = tmp_path_factory.mktemp("ssh")
    config = directory / "ssh_config"
    config.write_text(ssh.render_config(hive, directory / "known_hosts", include_user=False))
    text = config.read_text()
    # no value started a directive or a block of its own
    assert [ln for ln in text.splitlines() if ln.startswith("Host ")] == ["Host a", "Host b"]
    for host, address in (("a", hive.instances["a"].address), ("b", "10.0.0.2")):
        out = subprocess.run(["ssh", "-G", "-F", str(config), "--", host], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"hostname {address.lower()}" in out.stdout.lower()
    return "ssh -G"


NAMES = st.text(alphabet=string.ascii_lowercase + string.digits + "-.", min_size=1, max_size=8).filter(
    lambda n: not n.startswith(("-", ".")))
PATTERNS = st.one_of(NAMES, st.text(alphabet="ab*?[]!-1.", min_size=1, max_size=5))


def fleet(names: list[str], tags: dict[str, list[str]]) -> Hive:
    return Hive(file=Path("/d/hive.nix"), shown="hive.nix", paths=frozen_map(),
                systems={"web": System("web", frozen_map(), tags=("websys",)), "db": System("db", frozen_map())},
                instances={n: Instance(n, "web" if i % 2 else "db", tags=tuple(tags.get(n, [])))
                           for i, n in enumerate(names)})


@settings(max_examples=200, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=8, unique=True),
       tags=st.dictionaries(NAMES, st.lists(NAMES, max_size=2, unique=True)),
       patterns=st.lists(PATTERNS, max_size=4))
def test_selection_takes_each_instance_once_in_pattern_order(names: list[str], tags: dict[str, list[str]],
                                                             patterns: list[str]) -> None:
    hive = fleet(names, tags)

    def matches(instance: Instance, pattern: str) -> bool:
        keys = (instance.name, instance.system, *instance.tags, *hive.systems[instance.system].tags)
        return any(fnmatch.fnmatchcase(k, pattern) for k in keys)

    try:
        waves = select(hive, patterns)
    except SelectionError:
        assert any(not any(matches(i, p) for i in hive.instances.values()) for p in patterns)
        return
    chosen = flatten(waves)
    assert len({i.name for i in chosen}) == len(chosen)  # each instance once
    if not patterns:
        assert sorted(i.name for i in chosen) == sorted(names)
        return
    assert {i.name for i in chosen} == {i.name for i in hive.instances.values() if any(matches(i, p) for p in patterns)}
    for wave in waves:  # each wave is the first pattern that matches its instances
        firsts = {next(p for p in patterns if matches(i, p)) for i in wave}
        assert len(firsts) == 1


# Values an instance may give, valid or not, of every JSON type, few enough to repeat: the
# deployment's validator remembers the values it found valid (issue 29), per subschema.
REPEATED = st.sampled_from(["web", "db", "-web", "ssh://relay", "ssh://-x", "file:///c", "22", "a b", "", "\n",
                            1, 22, 0, 70000, -1, 1.0, 1.5, True, False, None, [], ["a"], ["a", "a"], [1], [True],
                            {}, {"a": 1}])
INSTANCE = st.fixed_dictionaries({}, optional={
    "system": REPEATED, "store": REPEATED, "tags": st.one_of(REPEATED, st.lists(REPEATED, max_size=3)),
    "ssh": st.dictionaries(st.sampled_from(["Hostname", "HostName", "Port", "User", "ProxyJump", "Compression",
                                            "ProxyCommand", "port", "x y"]), REPEATED, max_size=3),
    "elevate": REPEATED, "activationTimeout": REPEATED, "keys": st.one_of(REPEATED, st.lists(REPEATED, max_size=2)),
    "bogus": REPEATED})


@settings(max_examples=300, deadline=None)
@given(instances=st.lists(INSTANCE, min_size=1, max_size=6))
def test_the_validator_reports_what_jsonschema_itself_reports(instances: list[dict[str, object]]) -> None:
    """The deployment's validator (hive/evaluate.py), which validates a value against a
    subschema once and reuses the validators it descends with, finds the errors a plain
    jsonschema validator of the same schema finds, whatever values repeat (in one hive, and
    across the hives before it)."""
    schema = json.loads(schema_file().read_text())
    plain = jsonschema.validators.validator_for(schema)(schema)
    raw: dict[str, Any] = {"systems": {"web": {"configuration": "set"}, "db": {"configuration": "set"}},
           "instances": {f"i{n}": i for n, i in enumerate(instances)}}

    def found(errors: Iterable[jsonschema.ValidationError]) -> list[tuple[str, ...]]:
        return sorted((json.dumps(list(e.absolute_path)), json.dumps(list(e.absolute_schema_path)[-1:]), e.message)
                      for e in errors)

    assert found(_validator().iter_errors(raw)) == found(plain.iter_errors(raw))
    assert _accept(raw) is plain.is_valid(raw)
    try:
        validate(raw, "hive.nix")
    except DeploymentError:
        assert found(plain.iter_errors(raw))
    else:
        assert not found(plain.iter_errors(raw))


def _accept(raw: Any) -> bool:
    accepts = _accepts()
    assert accepts is not None  # the shipped schema is compiled (hive/schema.py)
    return accepts(raw)


# Values of every JSON type, valid somewhere in a deployment or not, and the ones the compiled
# test leaves to jsonschema (a float integer, a bool where an integer is asked)
ANY = st.sampled_from(["sudo", "run0", "lambda", "set", "true", "/run/k", "/nix/store/x", "0640", "999",
                       "pre-activation", "http://127.0.0.1:80/h", "https://c", "a\nb", "-x", "", "x86_64-linux",
                       "ssh-ed25519 AAAA", 0, 1, 10, 86401, 100, 200, 599, 600, 1.0, 10.0, 2.5, True, False, None,
                       [], ["true"], [200, 200], [200, 200.0], [True, 1], {}, {"a": "b"}])
VALUE = st.one_of(ANY, st.lists(ANY, max_size=3))
CHECK = st.fixed_dictionaries({}, optional={k: VALUE for k in ("command", "http", "timeout", "retries", "interval",
                                                               "status", "bogus")})
KEY = st.fixed_dictionaries({}, optional={k: VALUE for k in ("keyFile", "text", "keyCommand", "destination", "user",
                                                             "permissions", "keyCommandTimeout", "uploadAt", "bogus")})
NAMES = st.sampled_from(["a", "b-1", "-c", "d e", "", "Port", "ProxyCommand"])
SYSTEM = st.fixed_dictionaries({"configuration": VALUE}, optional={
    "system": VALUE, "tags": VALUE, "checks": st.dictionaries(NAMES, CHECK | VALUE, max_size=2),
    "keys": VALUE, "elevate": VALUE, "buildHost": VALUE, "activationTimeout": VALUE,
    "paths": st.dictionaries(NAMES, VALUE), "bogus": VALUE})
DEPLOYMENT = st.fixed_dictionaries({"systems": st.dictionaries(NAMES, SYSTEM | VALUE, max_size=2)}, optional={
    "instances": st.dictionaries(NAMES, INSTANCE | st.fixed_dictionaries({"system": VALUE}, optional={
        "checks": st.dictionaries(NAMES, CHECK, max_size=2), "rebootTimeout": VALUE, "hostKey": VALUE}), max_size=3),
    "keys": st.dictionaries(NAMES, KEY | VALUE, max_size=3), "stores": st.dictionaries(NAMES, VALUE, max_size=2),
    "signingKey": VALUE, "elevate": VALUE, "confirmTimeout": VALUE, "paths": st.dictionaries(NAMES, VALUE),
    "buildHost": VALUE, "bogus": VALUE})


@settings(max_examples=500, deadline=None)
@given(raw=DEPLOYMENT)
def test_the_compiled_schema_accepts_what_jsonschema_finds_valid(raw: dict[str, Any]) -> None:
    """The schema compiled into Python tests (hive/schema.py), which decides alone whether a
    deployment is valid (jsonschema then explains the errors of one that is not), gives
    jsonschema's answer for whole deployments: systems, checks (oneOf, not), keys, stores."""
    schema = json.loads(schema_file().read_text())
    assert _accept(raw) is jsonschema.validators.validator_for(schema)(schema).is_valid(raw)


SMALL_SCHEMAS: list[dict[str, Any]] = [{"not": {"type": "string"}}, {"oneOf": [{"type": "integer"}, {"minimum": 0}]},
                 {"type": ["integer", "null"], "minimum": 1, "maximum": 86400}, {"enum": [1, "a", True, None]},
                 {"type": "array", "items": {"type": "string", "pattern": "^a"}, "minItems": 1, "uniqueItems": True},
                 {"uniqueItems": True},
                 {"patternProperties": {"^a": {"type": "integer"}}, "additionalProperties": False},
                 {"type": "object", "required": ["a"], "propertyNames": {"anyOf": [{"enum": ["a"]}, {"pattern": "^b"}]},
                  "properties": {"a": False}, "additionalProperties": {"type": "boolean"}}]


@settings(max_examples=300, deadline=None)
@given(which=st.integers(min_value=0, max_value=len(SMALL_SCHEMAS) - 1),
       value=st.one_of(VALUE, st.dictionaries(st.sampled_from(["a", "b", "ab", "c"]), VALUE, max_size=3)))
def test_each_keyword_compiled_is_jsonschema_s(which: int, value: Any) -> None:
    """Each keyword hive/schema.py compiles (not, oneOf, enums of numbers, uniqueItems of
    any values) and one it leaves to jsonschema (patternProperties) decide as jsonschema."""
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SMALL_SCHEMAS[which]}
    assert schema_.compile_schema(schema)(value) is jsonschema.Draft202012Validator(schema).is_valid(value)


def _fleet(count: int) -> dict[str, Any]:
    return {"systems": {"web": {"configuration": "set", "checks": {"up": {"command": "true"}}}},
            "instances": {f"host-{n}": {"system": "web", "store": f"ssh://relay-{n // 100}", "tags": [f"rack{n // 40}"],
                                        "ssh": {"Hostname": f"10.1.{n // 250}.{n % 250 + 1}", "ProxyJump": "jump"}}
                          for n in range(count)}}


@pytest.mark.parametrize(("change", "attribute", "message"), [
    ({"tags": ["rack124", "rack124"]}, "tags", "a tag is repeated"),
    ({"ssh": {"Hostname": "10.1.19.249", "Port": 70000}}, "ssh.Port", "70000 is not a TCP port"),
    ({"store": "ssh://-relay"}, "store", "is not a Nix store URL"),
    ({"bogus": 1}, "bogus", "unknown attribute"),
    ({"system": 1}, "system", "1 is not a string"),
    ({"ssh": {"Hostname": "10.1.19.249", "ProxyCommand": "nc"}}, "ssh", "\"ProxyCommand\" is not an ssh_config")])
def test_an_error_in_the_4_999th_of_5_000_instances_is_found_and_named(change: dict[str, Any], attribute: str,
                                                                      message: str) -> None:
    """Valid values repeated on 4,998 instances (found valid once, hive/schema.py) do not hide
    a bad one in the 4,999th: the deployment is refused with the message of a deployment of
    that instance alone."""
    raw = _fleet(5000)
    raw["instances"]["host-4998"].update(change)
    alone = {"systems": raw["systems"], "instances": {"host-4998": raw["instances"]["host-4998"]}}
    assert not _accept(raw)
    with pytest.raises(DeploymentError) as error:
        validate(raw, "hive.nix")
    with pytest.raises(DeploymentError) as error_alone:
        validate(alone, "hive.nix")
    assert str(error.value) == str(error_alone.value)
    assert f"instances.host-4998.{attribute}" in str(error.value) and message in str(error.value)
    assert _accept(_fleet(5000))  # and without it, accepted


def test_the_shipped_schema_takes_the_validator_s_shortcuts() -> None:
    """No keyword below the schema's root makes a value's validity depend on where it stands
    (hive/evaluate.py's _CONTEXTUAL): the validator remembers valid values, and is not
    jsonschema's own class."""
    schema = json.loads(schema_file().read_text())
    assert type(_validator()) is not jsonschema.validators.validator_for(schema)


# any character, and those a terminal line must not hold as they are (a lone surrogate too)
CHARACTERS = st.characters(codec="utf-8") | st.sampled_from("\t\n\r\x1b\x9b\u202e\u2028\xa0\ufffe\ud800")


@settings(max_examples=500, deadline=None)
@given(value=st.text(alphabet=CHARACTERS), tabs=st.booleans(), limit=st.integers(min_value=1, max_value=30))
def test_a_printed_line_escapes_the_same_characters_with_its_shortcut(value: str, tabs: bool, limit: int) -> None:
    """text.line returns printable text (str.isprintable) as it is, without its regular
    expression (issue 29): the same line as the expression makes."""
    kept = (text._CONTROL_AND_TABS if tabs else text._CONTROL).sub(text._escaped, value[:limit]).replace("\n", "\\n")
    assert text.line(value, limit, tabs=tabs) == (kept if len(value) <= limit else
                                                  f"{kept}... ({len(value) - limit:,} more characters)")


@settings(max_examples=300, deadline=None)
@given(options=st.dictionaries(st.sampled_from(["Hostname", "Port", "port", "User", "ProxyJump", "Compression",
                                                "compression", "ConnectTimeout", "BatchMode", "ServerAliveInterval",
                                                "IdentityFile", "LogLevel"]),
                               st.sampled_from(["10.0.0.1", "22", "yes", "a b", "root", "jump", "%h", "5"]),
                               max_size=5),
       pinned=st.booleans(), control=st.booleans())
def test_a_host_block_is_the_same_with_its_shortcut(options: dict[str, str], pinned: bool, control: bool) -> None:
    """ssh._block writes a block whose options replace none of nix-hive's (issue 29: 5,000
    blocks) without _Options: the same lines, in the same order, or the same error, as
    _Options makes."""
    instance = Instance("a", "s", ssh=frozen_map(options), host_key="ssh-ed25519 AAAA" if pinned else None)
    hive = Hive(file=Path("/x/hive.nix"), shown="hive.nix", paths=frozen_map({}),
                systems={"s": System("s", frozen_map({}))}, instances={"a": instance})
    fixed = ssh._Fixed.of(Path("/k"), Path("/c") if control else None, ssh._defaults())

    def made(block: Any) -> object:
        try:
            return block(hive, instance, fixed)
        except DeploymentError as exc:  # a value no line can hold: the same error, naming the same option
            return str(exc)
    assert made(ssh._block) == made(ssh._options_block)
