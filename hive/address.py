"""Nix store URLs and ssh ProxyJump chains, parsed once, by the standard library.

Both arrive as text from a deployment file and end in a command line, where a typo surfaces as
a baffling Nix or ssh error on one host in the middle of a run. Parsing them up front turns that
into a `ValueError` that names the text and what is wrong with it (the caller words it as a
deployment error), and gives the rest of nix-hive the parts it needs (which host a store's ssh
connects to, which hosts a jump chain crosses) without string surgery. No I/O here.

Both parsers remember what they parsed (their results are immutable): a fleet names a few
relays and jump hosts, thousands of times over (issue 29).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# Schemes whose store Nix reaches by running ssh.
SSH_SCHEMES = frozenset({"ssh", "ssh-ng"})
# Stores named by a word alone (optionally with ?params).
WORD_STORES = frozenset({"auto", "daemon", "local"})
# Schemes whose URL must name a host (an s3 URL names its bucket there).
_HOST_SCHEMES = SSH_SCHEMES | {"http", "https", "s3"}

# Never part of a host name; several would mean something else to ssh, a URL, or a shell.
_NOT_IN_HOST = frozenset(string.whitespace + "/\\,@[]'\"`$;&<>|(){}#?*!")


@dataclass(frozen=True)
class StoreUrl:
    """A Nix store URL (`nix copy --to`, `--store`), split into its parts.

    `text` is what was parsed, and `str()` gives it back unchanged: Nix is handed the user's
    spelling, not a re-assembly. A plain absolute path (`/mnt/store`) is Nix's shorthand for
    `local?root=/mnt/store`: scheme `local`, that path. `host` has no brackets (`fe80::1`);
    `user` is the URL's user information, verbatim. `params` keeps the query's name=value
    pairs percent-decoded and in their order (Nix uses the first of a repeated name).
    """

    text: str
    scheme: str
    user: str | None
    host: str | None
    port: int | None
    path: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> StoreUrl:
        """Parse `text`, or raise ValueError saying what is wrong with it."""
        return _parse_store_url(text)

    @classmethod
    def _parse(cls, text: str) -> StoreUrl:
        if not text:
            raise ValueError("empty store URL")
        if any(c.isspace() or not c.isprintable() for c in text):
            raise ValueError(f"store URL {text!r} contains white space or a control character")
        if "#" in text:
            raise ValueError(f"store URL {text!r}: a store URL has no #fragment")
        if text.startswith("/"):
            path, _, query = text.partition("?")
            return cls(text, "local", None, None, None, path, _params(text, query))
        if "://" not in text:
            word, _, query = text.partition("?")
            if word in WORD_STORES:
                return cls(text, word, None, None, None, "", _params(text, query))
            hint = f" (a host? write ssh://{text} or ssh-ng://{text})" if _looks_like_host(word) else ""
            raise ValueError(f"{text!r} is not a store URL: expected scheme://..., an absolute path, "
                             f"or one of {', '.join(sorted(WORD_STORES))}{hint}")
        # The host part checked here first: each Python's urlsplit refuses a bad [IPv6] host
        # with words of its own (3.13 checks more than 3.11), and the user gets nix-hive's.
        hostport = re.split(r"[/?]", text.partition("://")[2], maxsplit=1)[0].rpartition("@")[2]
        try:
            if hostport:
                _host_port(hostport, bracket_means_ipv6=True)
            parts = urlsplit(text)
        except ValueError as exc:
            raise ValueError(f"store URL {text!r}: {exc}") from exc
        scheme = parts.scheme
        if not scheme or not text.lower().startswith(scheme + "://"):
            raise ValueError(f"store URL {text!r}: {text.partition('://')[0]!r} is not a URL scheme")
        user: str | None = None
        host: str | None = None
        port: int | None = None
        if parts.netloc:
            userinfo, at, hostport = parts.netloc.rpartition("@")
            if at:
                if not userinfo:
                    raise ValueError(f"store URL {text!r}: empty user name before '@'")
                user = userinfo
            try:
                host, port = _host_port(hostport, bracket_means_ipv6=True)
            except ValueError as exc:
                raise ValueError(f"store URL {text!r}: {exc}") from exc
        if scheme in _HOST_SCHEMES and host is None:
            raise ValueError(f"store URL {text!r}: {scheme}:// needs a host")
        if scheme in SSH_SCHEMES and parts.path:
            raise ValueError(f"store URL {text!r}: {scheme}:// takes no path ({parts.path!r}); "
                             "a remote store is chosen with ?remote-store=...")
        if scheme == "file" and (host is not None or user is not None or not parts.path.startswith("/")):
            raise ValueError(f"store URL {text!r}: a file:// URL names an absolute path, as in file:///path")
        return cls(text, scheme, user, host, port, parts.path, _params(text, parts.query))

    def __str__(self) -> str:
        return self.text

    @property
    def is_ssh(self) -> bool:
        """Whether Nix reaches this store by running ssh (ssh:// and ssh-ng://)."""
        return self.scheme in SSH_SCHEMES

    @property
    def ssh_host(self) -> str | None:
        """The host an ssh-based store connects to (the name ssh_config's `Host` matches), else
        None."""
        return self.host if self.is_ssh else None

    @property
    def ssh_destination(self) -> str | None:
        """What Nix gives ssh as its destination (`user@host` or `host`), else None."""
        if not self.is_ssh:
            return None
        return f"{self.user}@{self.host}" if self.user else self.host

    def param(self, name: str) -> str | None:
        """The value of query parameter `name` (its first occurrence, as Nix takes it)."""
        return next((value for key, value in self.params if key == name), None)


@dataclass(frozen=True)
class JumpHop:
    """One hop of a ProxyJump chain. `str()` writes it back as ssh_config(5) reads it."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"


@functools.lru_cache(maxsize=4096)
def _parse_store_url(text: str) -> StoreUrl:
    return StoreUrl._parse(text)


@functools.lru_cache(maxsize=4096)
def parse_proxy_jump(text: str) -> tuple[JumpHop, ...]:
    """Parse a ProxyJump value as ssh_config(5) defines it: hops separated by commas, each
    `[user@]host[:port]` or `ssh://[user@]host[:port]`, visited in order; `none` (any case)
    means no jump host, an empty tuple. Raise ValueError naming the faulty hop."""
    value = text.strip()
    if not value:
        raise ValueError("empty ProxyJump (write 'none' for no jump host)")
    if value.lower() == "none":
        return ()
    hops: list[JumpHop] = []
    for number, item in enumerate(value.split(","), start=1):
        try:
            hops.append(_parse_hop(item))
        except ValueError as exc:
            raise ValueError(f"ProxyJump {text!r}: hop {number} ({item!r}): {exc}") from exc
    return tuple(hops)


def _parse_hop(item: str) -> JumpHop:
    if not item:
        raise ValueError("empty hop")
    if any(c.isspace() or not c.isprintable() for c in item):
        raise ValueError("white space or a control character")
    rest = item
    if rest.startswith("ssh://"):
        rest = rest.removeprefix("ssh://")
        rest = rest[:-1] if rest.endswith("/") else rest  # ssh accepts an empty path
        if "/" in rest or "?" in rest or "#" in rest:
            raise ValueError("an ssh:// hop takes no path or parameters")
    elif "://" in item:
        raise ValueError("only ssh:// URIs can be jump hosts")
    userinfo, at, hostport = rest.rpartition("@")
    if at and not userinfo:
        raise ValueError("empty user name before '@'")
    host, port = _host_port(hostport, bracket_means_ipv6=False)
    return JumpHop(userinfo if at else None, host, port)


def _host_port(text: str, *, bracket_means_ipv6: bool) -> tuple[str, int | None]:
    """Split `host[:port]` or `[host][:port]`. A host with colons (IPv6) must be in brackets, or
    its last group would read as a port. In a URL brackets hold an IP address; ssh strips them
    from any host."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            raise ValueError(f"unbalanced '[' in {text!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{rest!r} after ']' (expected :port or nothing)")
        if bracket_means_ipv6 or ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError as exc:
                raise ValueError(f"[{host}] is not an IPv6 address") from exc
        elif not host:
            raise ValueError("empty host between brackets")
        port_text: str | None = rest[1:] if rest else None
    else:
        if "]" in text:
            raise ValueError(f"unbalanced ']' in {text!r}")
        if text.count(":") > 1:
            raise ValueError(f"{text!r}: an IPv6 address must be in brackets, as in [{text}]")
        host, colon, port_after = text.partition(":")
        port_text = port_after if colon else None
    if not host:
        raise ValueError("empty host")
    if ":" not in host:
        _check_host(host)
    return host, _port(port_text) if port_text is not None else None


def _check_host(host: str) -> None:
    if host.startswith("-"):
        raise ValueError(f"host {host!r} starts with '-' (ssh would read an option)")
    bad = sorted(set(host) & _NOT_IN_HOST)
    if bad:
        raise ValueError(f"host {host!r} contains {''.join(bad)!r}")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _params(text: str, query: str) -> tuple[tuple[str, str], ...]:
    """`name=value&...`, percent-decoded the way Nix decodes it (no '+' for space)."""
    if not query:
        return ()
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if not name or not equals:
            raise ValueError(f"store URL {text!r}: parameter {item!r} is not name=value")
        pairs.append((unquote(name, errors="strict"), unquote(value, errors="strict")))
    return tuple(pairs)


def _looks_like_host(word: str) -> bool:
    """Whether a scheme-less store URL reads like a host name that lacks its ssh:// ."""
    try:
        _host_port(word.rpartition("@")[2], bracket_means_ipv6=True)
    except ValueError:
        return False
    return bool(word) and "/" not in word
