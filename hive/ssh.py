"""The ssh configuration derived from the deployment, and the argv of every ssh call.

The generated ssh_config serves every ssh process nix-hive starts, its own and Nix's
(`nix copy` reads NIX_SSHOPTS): a `Host` block per instance with its options, layered on the
user's own ~/.ssh/config and /etc/ssh/ssh_config (`Include`d after the generated blocks, so
the deployment's values win and the user's fill the rest). An instance with a pinned
`hostKey` is checked against a known_hosts file of nix-hive's own and nothing else.

Every ssh process reads its whole configuration and known_hosts: at a few milliseconds per
thousand lines, a fleet of N hosts, each reached by a few ssh processes, would cost N² in
reading alone. So each instance also gets files of its own (`SshSetup.config_for`): its
block and those of the instances it jumps through, with their known hosts, the same options.
They are written when an ssh to the instance is first about to start, never up front: a
command that connects to nothing (`list`, `plan`, `build`, `ssh-config`) writes none of
them, one that connects to 3 hosts of 5,000 writes 3 pairs (issue 29).

Every value is written as ssh will read it back (`encode`), whatever the schema let through:
quoted where ssh would split or end it, `%` doubled where ssh expands tokens, and refused (a
`DeploymentError` naming the attribute) where no spelling would survive: a line break, or a
`${` where ssh expands environment variables. The argv of ssh calls is remote.py's.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hive import text as text_
from hive.errors import DeploymentError, InputError, attr_path
from hive.model import Hive, Instance

# Options nix-hive sets itself for every instance; the deployment may override them. A run's
# configuration gives the three BOUNDS to every other host too (jump hosts, build hosts, relays
# of the user's own configuration): a new connection gets ConnectTimeout seconds for TCP,
# ssh's banner and key exchange, an open one is given up after ServerAliveInterval times
# ServerAliveCountMax seconds without an answer.
DEFAULTS: Mapping[str, str] = {"BatchMode": "yes", "ConnectTimeout": "10", "ServerAliveInterval": "15",
                               "ServerAliveCountMax": "3"}
BOUNDS = ("ConnectTimeout", "ServerAliveInterval", "ServerAliveCountMax")
_connect_timeout: int | None = None  # --connect-timeout, instead of DEFAULTS' ConnectTimeout


def set_connect_timeout(seconds: int | None) -> None:
    """The ConnectTimeout of the configurations generated from now on (None: DEFAULTS'). A
    module setting, as process.set_verbose: the run's options reach it without every caller
    between passing it along."""
    global _connect_timeout
    _connect_timeout = seconds


def connect_timeout() -> int:
    """The ConnectTimeout of the configurations generated now (seconds, per hop)."""
    return int(_defaults()["ConnectTimeout"])


def _defaults() -> dict[str, str]:
    out = dict(DEFAULTS)
    if _connect_timeout is not None:
        out["ConnectTimeout"] = str(_connect_timeout)
    return out


@dataclass(eq=False)
class SshSetup:
    """The generated files of one run: the whole configuration and known_hosts, written by
    `prepare`, and each instance's own, written on first use (`config_for`)."""

    directory: Path
    config: Path
    known_hosts: Path
    control_dir: Path | None = None  # sockets of shared connections, when the run shares them
    hive: Hive | None = None  # whose instances get files of their own
    defaults: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULTS))  # nix-hive's options, as written
    _own: dict[str, Path] = field(default_factory=dict, init=False, repr=False)  # instance -> its config
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _closing: bool = field(default=False, init=False, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """What `nix copy` needs to use the same configuration."""
        return {"NIX_SSHOPTS": f"-F {self.config}"}

    def config_for(self, host: str) -> Path:
        """The configuration an ssh to `host` reads: the instance's own file (written now if it
        is not yet: many threads ask at once, each file is written once), else the whole one."""
        if self.hive is None or host not in self.hive.instances:
            return self.config
        with self._lock:
            own = self._own.get(host)
            if own is None:
                own = self._own[host] = _write_own(self, self.hive, host, CLOSING if self._closing else "")
            return own

    def env_for(self, host: str | None) -> dict[str, str]:
        """`env` for a Nix that talks to `host` (and to the hosts it jumps through) alone."""
        return {"NIX_SSHOPTS": f"-F {self.config_for(host)}"} if host else self.env

    def stop_sharing(self) -> None:
        """No ssh process started from now on opens a shared connection of its own (one would
        outlive the run by ControlPersist): every file written says so first, and so do those
        written later."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            for config in [self.config, *self._own.values()]:
                _write(config, CLOSING + config.read_text())


# What a configuration says first once its run is closing (`SshSetup.stop_sharing`)
CLOSING = "# The run is closing: no new shared connection.\nHost *\n  ControlMaster no\n\n"


# Options whose one value is a file name, which may hold spaces: one word, quoted when it must
# be. Other options keep ssh's own word splitting (at spaces).
QUOTED = frozenset(o.lower() for o in ("IdentityFile", "CertificateFile", "IdentityAgent", "ControlPath",
                                       "PKCS11Provider", "SecurityKeyProvider", "RevokedHostKeys", "XAuthLocation"))

# How ssh reads a value (readconf.c, OpenSSH 8.7 and later): as words split at spaces, where
# double or single quotes group, a backslash escapes a quote or a backslash, and a word that
# starts with '#' ends the line; ProxyJump alone as the rest of the line, raw, later made into
# a command that expands '%'. Options of TOKENS expand %-tokens (`%%` is a literal '%'), those
# of VARIABLES `${NAME}` too (which has no literal spelling); OpenSSH 10 expands both in User,
# 9 neither (ssh_config(5), TOKENS and ENVIRONMENT VARIABLES).
TOKENS = frozenset(o.lower() for o in ("Hostname", "IdentityFile", "CertificateFile", "IdentityAgent",
                                       "ControlPath", "RevokedHostKeys", "UserKnownHostsFile"))
VARIABLES = frozenset(o.lower() for o in ("IdentityFile", "CertificateFile", "IdentityAgent", "ControlPath",
                                          "UserKnownHostsFile"))
_PLAIN = re.compile(r"[A-Za-z0-9_@%+,./:~\[\]*?!^-][A-Za-z0-9_@%+=,./:~\[\]*?!^-]*\Z")  # a word needing no quotes
_RAW = re.compile(r"[A-Za-z0-9_@.:\[\],/-]+\Z")  # a ProxyJump: [user@]host[:port] or ssh:// hops, by commas
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")  # no line of a file can hold these (nor UTF-8)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # a Host pattern or known_hosts name matching itself alone
_HOST_KEY = re.compile(r"(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+={0,3}(?= |\Z)")


def _word(word: str) -> str:
    return word if _PLAIN.match(word) else '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(key: str, value: str, *, one_word: bool | None = None, tokens: str = "") -> str:
    """`value` of option `key` spelled so that ssh reads it back as it is: one word whatever
    spaces it holds with `one_word` (by default, for the QUOTED options), else words split at
    spaces as ssh splits them; `tokens` (ssh's own %-tokens) are added after it as they are.
    A ValueError says why no spelling would do."""
    low = key.lower()
    if not tokens and low != "proxyjump" and "%" not in value and "$" not in value and _PLAIN.match(value):
        return value  # one plain word, as most are (an address, a user, a number): ssh reads it as it is
    if _CONTROL.search(value):
        raise ValueError("a line break or another control character: no ssh_config line can hold it")
    if low == "proxyjump":
        if not _RAW.match(value):
            raise ValueError("ssh takes ProxyJump as the rest of the line and expands '%' in it: only letters, "
                             "digits and _@.:[],/- can be written there")
        return value
    if low == "user" and ("%" in value or "${" in value):
        raise ValueError("OpenSSH 10 expands %-tokens and ${VARIABLES} in User, earlier versions do not: "
                         "'%' and '${' cannot be written there")
    if low in VARIABLES and "${" in value:
        raise ValueError(f"ssh expands ${{VARIABLE}} in {key}, and has no way to write '${{' as it is")
    if low in TOKENS:
        value = value.replace("%", "%%")
    value += tokens
    if not value:
        return value
    whole = low in QUOTED if one_word is None else one_word
    return " ".join(_word(w) for w in ([value] if whole else value.split(" ")) if w)


def host_pattern(hive: Hive, name: str) -> str:
    """An instance's name as a Host pattern or a known_hosts name that matches it alone."""
    if not _NAME.match(name):
        raise DeploymentError(hive.shown, "not a name ssh can match as it is (letters, digits, '_', '.' and '-', "
                              "not starting with '.' or '-')", attr_path(["instances", name]))
    return name


# The ssh options a deployment file may set for an instance: instance data often comes from a
# file another tool wrote (terraform output), so nothing here may run code, load a library or
# open a port on this machine (ProxyCommand, PKCS11Provider, LocalForward, ForwardAgent, ...).
# Those belong in the user's ~/.ssh/config, which the generated configuration includes.
ALLOWED: frozenset[str] = frozenset(o.lower() for o in (
    "Hostname", "Port", "User", "ProxyJump", "IdentityFile", "IdentitiesOnly", "CertificateFile",
    "HostKeyAlias", "ConnectTimeout", "ConnectionAttempts", "ServerAliveInterval", "ServerAliveCountMax",
    "TCPKeepAlive", "Ciphers", "KexAlgorithms", "MACs", "HostKeyAlgorithms", "PubkeyAcceptedAlgorithms",
    "PubkeyAcceptedKeyTypes", "CASignatureAlgorithms", "Compression", "SendEnv", "SetEnv", "AddressFamily",
    "BindAddress", "BindInterface", "StrictHostKeyChecking", "UserKnownHostsFile", "GlobalKnownHostsFile",
    "CheckHostIP", "UpdateHostKeys", "VerifyHostKeyDNS", "HashKnownHosts", "RevokedHostKeys",
    "PreferredAuthentications", "PubkeyAuthentication", "PasswordAuthentication", "KbdInteractiveAuthentication",
    "GSSAPIAuthentication", "BatchMode", "LogLevel", "IPQoS", "RekeyLimit", "NumberOfPasswordPrompts",
    "RequiredRSASize", "FingerprintHash",
))

Origin = tuple[str, str]  # (instance, option) a generated line comes from


class _Options:
    """ssh_config options of one Host block: keywords are case-insensitive, as in ssh. The
    deployment's values (`given`) are encoded when written, nix-hive's own come encoded (`_own`)."""

    def __init__(self, base: Mapping[str, tuple[str, str, bool]] | None = None) -> None:
        self._by_key: dict[str, tuple[str, str, bool]] = dict(base or {})  # lower-case key: (key, value, given)

    def set(self, key: str, value: str, *, override: bool = True, given: bool = False) -> None:
        if override or key.lower() not in self._by_key:
            self._by_key[key.lower()] = (key, value, given)

    def settings(self) -> Mapping[str, tuple[str, str, bool]]:
        return dict(self._by_key)

    def lines(self, hive: Hive, instance: str) -> list[tuple[str, Origin | None]]:
        return [_given_line(hive, instance, key, value) if given else (f"  {key} {value}", None)
                for key, value, given in self._by_key.values()]


def _given_line(hive: Hive, instance: str, key: str, value: str) -> tuple[str, Origin]:
    """The line of an option the deployment gives `instance`, encoded (`encode`)."""
    try:
        return f"  {key} {encode(key, value)}", (instance, key)
    except ValueError as exc:
        raise DeploymentError(hive.shown, str(exc), attr_path(["instances", instance, "ssh", key])) from None


def _own(key: str, value: str, tokens: str = "") -> str:
    """One of nix-hive's own values (a file name: one word), encoded; an InputError (nothing
    was started) when it cannot be, as a temporary directory whose name holds a line break."""
    try:
        return encode(key, value, one_word=True, tokens=tokens)
    except ValueError as exc:
        raise InputError(f"the generated ssh configuration cannot hold {key} {text_.line(value)}: {exc}") from None


@dataclass(frozen=True)
class _Fixed:
    """nix-hive's own options of every block of one configuration, encoded once for them all."""

    defaults: Mapping[str, str]
    pinned: Mapping[str, str]  # a pinned instance's, after its HostKeyAlias
    control: Mapping[str, str]  # a run's shared connections' (none without a control directory)

    # what every block's options start from: the defaults, in _Options' own form, and their lines
    first: Mapping[str, tuple[str, str, bool]] = field(default_factory=dict)
    first_lines: tuple[tuple[str, Origin | None], ...] = ()

    @classmethod
    def of(cls, known_hosts: Path, control_dir: Path | None, defaults: Mapping[str, str]) -> _Fixed:
        pinned = (("UserKnownHostsFile", str(known_hosts)), ("GlobalKnownHostsFile", "/dev/null"),
                  ("StrictHostKeyChecking", "yes"), ("CheckHostIP", "no"))
        encoded = {k: _own(k, v) for k, v in defaults.items()}
        first = _Options()
        for key, value in encoded.items():
            first.set(key, value)
        return cls(defaults=encoded, pinned={k: _own(k, v) for k, v in pinned},
                   control=_control(control_dir) if control_dir is not None else {}, first=first.settings(),
                   first_lines=tuple((f"  {key} {value}", None) for key, value, _ in first.settings().values()))


def _block(hive: Hive, instance: Instance, fixed: _Fixed) -> list[tuple[str, Origin | None]]:
    """An instance's Host block: nix-hive's defaults, then the deployment's options, each
    once (an option named again in another case is one option, in ssh and here)."""
    given = instance.ssh
    named = {key.lower() for key in given}
    if not instance.host_key and not fixed.control and len(named) == len(given) and named.isdisjoint(fixed.first):
        # what _Options would make of them (none replaces another): the defaults' lines as
        # they are, then the deployment's (issue 29: 5,000 blocks)
        return [(f"Host {host_pattern(hive, instance.name)}", None), *fixed.first_lines,
                *[_given_line(hive, instance.name, key, value) for key, value in given.items()]]
    return _options_block(hive, instance, fixed)


def _options_block(hive: Hive, instance: Instance, fixed: _Fixed) -> list[tuple[str, Origin | None]]:
    options = _Options(fixed.first)
    for key, value in instance.ssh.items():
        options.set(key, value, given=True)
    if instance.host_key:
        options.set("HostKeyAlias", _own("HostKeyAlias", instance.name))
        for key, value in fixed.pinned.items():
            options.set(key, value)
    for key, value in fixed.control.items():
        options.set(key, value, override=False)
    return [(f"Host {host_pattern(hive, instance.name)}", None), *options.lines(hive, instance.name)]


# What a shared connection's socket adds to the path of the directory holding the control
# directory: "/c/", ssh's %C (a SHA-1 in hex: 40 characters, whatever the host's name) and the
# ".<16 random characters>" of the name ssh binds before renaming it to its own. A unix
# socket's path has at most 107 bytes: tempdirs.for_sockets leaves this much room.
CONTROL_ROOM = len("/c/") + 40 + 17


def _control(control_dir: Path) -> dict[str, str]:
    """The options of shared connections, encoded: the directory's name as it is, then ssh's %C."""
    return {"ControlMaster": "auto", "ControlPath": _own("ControlPath", f"{control_dir}/", tokens="%C"),
            "ControlPersist": "60"}


def option(instance: Instance | None, key: str) -> str | None:
    """The value `instance` gives the ssh option `key` (ssh's keywords are case-insensitive:
    `ProxyJump`, `proxyjump`), or None."""
    if instance is None:
        return None
    low = key.lower()
    return next((v for k, v in instance.ssh.items() if k.lower() == low), None)


def jump_chain(hive: Hive, name: str) -> list[str]:
    """The instances an ssh to instance `name` goes through (its ProxyJump hosts that are
    instances, theirs, and so on), nearest first."""
    chain: list[str] = []
    todo = [name]
    while todo:
        instance = hive.instances.get(todo.pop(0))
        jumps = option(instance, "ProxyJump") or ""
        for hop in jumps.split(",") if jumps.lower() != "none" else ():
            host = hop.strip().removeprefix("ssh://").rpartition("@")[2]
            host = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
            if host in hive.instances and host != name and host not in chain:
                chain.append(host)
                todo.append(host)
    return chain


def render_lines(hive: Hive, known_hosts: Path, *, control_dir: Path | None = None, include_user: bool = True,
                 only: list[str] | None = None,
                 defaults: Mapping[str, str] | None = None) -> list[tuple[str, Origin | None]]:
    """The ssh_config lines for every instance (or those named in `only`), each with the
    instance option it comes from (None for nix-hive's own lines): an error ssh reports at
    line N names that option. `defaults`: nix-hive's own options (by default, DEFAULTS with
    the run's --connect-timeout)."""
    bounds = _defaults() if defaults is None else defaults
    lines: list[tuple[str, Origin | None]] = [
        (f"# Generated by nix-hive from {text_.line(hive.shown)}: a Host block per instance.", None), ("", None)]
    fixed = _Fixed.of(known_hosts, control_dir, bounds)
    for name in sorted(hive.instances) if only is None else only:
        lines += _block(hive, hive.instances[name], fixed)
        lines.append(("", None))
    if control_dir is not None:
        # Jump hosts that are not instances share their connection too, and a run's every
        # connection is bounded (build hosts and relays of the user's configuration too).
        lines += [("Host *", None), *((f"  {k} {v}", None) for k, v in fixed.control.items()),
                  *((f"  {k} {fixed.defaults[k]}", None) for k in BOUNDS), ("", None)]
    if include_user:
        lines += [(text, None) for text in (
            "# The user's own configuration fills in what the deployment does not say.",
            "Match all", "  Include ~/.ssh/config", "  Include /etc/ssh/ssh_config")]
    return lines


def render_config(hive: Hive, known_hosts: Path, *, control_dir: Path | None = None, include_user: bool = True,
                  only: list[str] | None = None, defaults: Mapping[str, str] | None = None) -> str:
    """The ssh_config text for every instance of the deployment (or those of `only`; see
    `render_lines`)."""
    lines = render_lines(hive, known_hosts, control_dir=control_dir, include_user=include_user, only=only,
                         defaults=defaults)
    return "\n".join(text for text, _ in lines) + "\n"


def render_known_hosts(hive: Hive, only: list[str] | None = None) -> str:
    """known_hosts lines for the pinned instances (or those of `only`), keyed by instance name
    (HostKeyAlias)."""
    lines = []
    for name in sorted(hive.instances) if only is None else only:
        key = hive.instances[name].host_key
        if key:
            found = _HOST_KEY.match(key)
            if found is None:
                raise DeploymentError(hive.shown, "not a public host key on one line (TYPE BASE64, then a comment if "
                                      "any)", attr_path(["instances", name, "hostKey"]))
            lines.append(f"{host_pattern(hive, name)} {found.group()}")
    return "\n".join(lines) + ("\n" if lines else "")


def prepare(hive: Hive, directory: Path, *, control: bool = False) -> SshSetup:
    """Write the generated ssh_config and known_hosts into `directory` (private to the user);
    each instance's own files come when first asked for (`SshSetup.config_for`)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    known = directory / "known_hosts"
    config = directory / "ssh_config"
    control_dir = directory / "c" if control else None
    if control_dir is not None:
        control_dir.mkdir(exist_ok=True, mode=0o700)
    _write(known, render_known_hosts(hive))
    defaults = _defaults()  # the own files, written later, say what this one says
    _write(config, render_config(hive, known, control_dir=control_dir, defaults=defaults))
    # Own files left there by an earlier release, which wrote them for every command: stale.
    shutil.rmtree(directory / "h", ignore_errors=True)
    return SshSetup(directory=directory, config=config, known_hosts=known, control_dir=control_dir, hive=hive,
                    defaults=defaults)


def _write_own(setup: SshSetup, hive: Hive, name: str, header: str) -> Path:
    """Instance `name`'s own files in the setup's h/ (see the module's docstring); its config."""
    own = setup.directory / "h"
    own.mkdir(exist_ok=True, mode=0o700)
    hosts = [name, *jump_chain(hive, name)]
    known = own / f"{name}.known"
    _write(known, render_known_hosts(hive, hosts))
    config = own / f"{name}.config"
    _write(config, header + render_config(hive, known, control_dir=setup.control_dir, only=hosts,
                                          defaults=setup.defaults))
    return config


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
