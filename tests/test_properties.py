"""Property-based tests (hypothesis) for what takes arbitrary strings: ssh options as the
deployment gives them (rendered into the ssh configuration and checked by ssh itself), and
pattern selection. The state file's codec has its own in test_state.py."""

from __future__ import annotations

import fnmatch
import shutil
import string
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hive import checks, ssh
from hive.errors import DeploymentError, SelectionError
from hive.evaluate import build_model, validate
from hive.model import Hive, Instance, System, frozen_map
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
