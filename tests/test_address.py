"""Store URLs and ProxyJump chains: what they split into, that they print back as written, and
that garbage is refused with a message naming it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive.address import JumpHop, StoreUrl, parse_proxy_jump

STORES = [
    # text, scheme, user, host, port, path, params
    ("ssh://portico", "ssh", None, "portico", None, "", ()),
    ("ssh://root@portico", "ssh", "root", "portico", None, "", ()),
    ("ssh://root@portico:2222", "ssh", "root", "portico", 2222, "", ()),
    ("ssh://[fe80::1]", "ssh", None, "fe80::1", None, "", ()),
    ("ssh://root@[2001:db8::1]:2222", "ssh", "root", "2001:db8::1", 2222, "", ()),
    ("ssh-ng://deploy@10.0.0.7?remote-store=local%3Froot%3D/mnt&compress=true", "ssh-ng", "deploy", "10.0.0.7",
     None, "", (("remote-store", "local?root=/mnt"), ("compress", "true"))),
    ("ssh://Portico.Example.org", "ssh", None, "Portico.Example.org", None, "", ()),
    ("file:///var/cache/nix", "file", None, None, None, "/var/cache/nix", ()),
    ("file:///tmp/c?compression=none", "file", None, None, None, "/tmp/c", (("compression", "none"),)),
    ("https://cache.nixos.org", "https", None, "cache.nixos.org", None, "", ()),
    ("http://cache.local:8080/sub?priority=30", "http", None, "cache.local", 8080, "/sub", (("priority", "30"),)),
    ("s3://bucket?region=eu-west-1&endpoint=minio.local", "s3", None, "bucket", None, "",
     (("region", "eu-west-1"), ("endpoint", "minio.local"))),
    ("daemon", "daemon", None, None, None, "", ()),
    ("local", "local", None, None, None, "", ()),
    ("auto", "auto", None, None, None, "", ()),
    ("local?root=/mnt", "local", None, None, None, "", (("root", "/mnt"),)),
    ("/mnt/store", "local", None, None, None, "/mnt/store", ()),
    ("/mnt/store?read-only=true", "local", None, None, None, "/mnt/store", (("read-only", "true"),)),
    ("unix:///run/nix/socket", "unix", None, None, None, "/run/nix/socket", ()),
]


@pytest.mark.parametrize(("text", "scheme", "user", "host", "port", "path", "params"), STORES)
def test_store_url_parts(text: str, scheme: str, user: str | None, host: str | None, port: int | None,
                         path: str, params: tuple[tuple[str, str], ...]) -> None:
    url = StoreUrl.parse(text)
    assert (url.scheme, url.user, url.host, url.port, url.path, url.params) == (scheme, user, host, port, path, params)
    assert str(url) == text  # Nix gets the user's spelling back
    assert StoreUrl.parse(str(url)) == url
    assert url.is_ssh == (scheme in ("ssh", "ssh-ng"))
    assert url.ssh_host == (host if url.is_ssh else None)


def test_ssh_destination_and_param() -> None:
    url = StoreUrl.parse("ssh-ng://root@[2001:db8::1]:2222?a=1&a=2&b=%20x+y")
    assert url.ssh_host == "2001:db8::1"
    assert url.ssh_destination == "root@2001:db8::1"
    assert url.param("a") == "1"  # the first, as Nix takes it
    assert url.param("b") == " x+y"  # percent-decoded; '+' is not a space for Nix
    assert url.param("c") is None
    assert StoreUrl.parse("ssh://portico").ssh_destination == "portico"
    assert StoreUrl.parse("https://portico").ssh_destination is None
    assert StoreUrl.parse("s3://portico").ssh_host is None


def test_store_url_is_a_frozen_value() -> None:
    url = StoreUrl.parse("ssh://portico")
    with pytest.raises(AttributeError):
        url.host = "other"  # type: ignore[misc]
    assert {url, StoreUrl.parse("ssh://portico")} == {url}


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty store URL"),
    ("portico", "write ssh://portico"),
    ("root@portico", "write ssh://root@portico"),
    ("relative/path", "absolute path"),
    ("ssh://", "needs a host"),
    ("ssh://?remote-store=local", "needs a host"),
    ("https://", "needs a host"),
    ("s3://?region=x", "needs a host"),
    ("ssh://portico/nix/store", "takes no path"),
    ("ssh://portico:", "port ''"),
    ("ssh://portico:ssh", "port 'ssh'"),
    ("ssh://portico:0", "port '0'"),
    ("ssh://portico:65536", "port '65536'"),
    ("ssh://portico:-1", "port '-1'"),
    ("ssh://@portico", "empty user name"),
    ("ssh://fe80::1", "must be in brackets"),
    ("ssh://[fe80::1", "unbalanced '['"),
    ("ssh://fe80::1]", "unbalanced ']'"),
    ("ssh://[portico]", "IPv6 address"),
    ("ssh://[fe80::1]x", "after ']'"),
    ("ssh://por tico", "white space"),
    (" ssh://portico", "white space"),
    ("ssh://portico\n", "white space"),
    ("ssh://portico#x", "fragment"),
    ("ssh://portico?compress", "not name=value"),
    ("ssh://portico?=x", "not name=value"),
    ("ssh://-oProxyCommand=x", "starts with '-'"),
    ("ssh://a;b", "contains"),
    ("file://host/path", "file:///path"),
    ("file://relative", "file:///path"),
    ("1ssh://portico", "not a URL scheme"),
    ("daemon?x", "not name=value"),
])
def test_store_url_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        StoreUrl.parse(text)
    assert message in str(caught.value)


JUMPS = [
    ("bastion", (JumpHop(None, "bastion", None),)),
    ("ops@bastion", (JumpHop("ops", "bastion", None),)),
    ("ops@bastion:2222", (JumpHop("ops", "bastion", 2222),)),
    ("a,b@c,d:23", (JumpHop(None, "a", None), JumpHop("b", "c", None), JumpHop(None, "d", 23))),
    ("ssh://ops@bastion:2222", (JumpHop("ops", "bastion", 2222),)),
    ("ssh://bastion/", (JumpHop(None, "bastion", None),)),
    ("[2001:db8::1]:22", (JumpHop(None, "2001:db8::1", 22),)),
    ("root@[2001:db8::1]", (JumpHop("root", "2001:db8::1", None),)),
    ("ssh://root@[fe80::1%eth0]:2200", (JumpHop("root", "fe80::1%eth0", 2200),)),
    ("[bastion]:2222", (JumpHop(None, "bastion", 2222),)),  # ssh strips brackets from any host
    ("user@corp@bastion", (JumpHop("user@corp", "bastion", None),)),  # the last '@' splits, as in ssh
    ("  a,b  ", (JumpHop(None, "a", None), JumpHop(None, "b", None))),
    ("none", ()),
    ("None", ()),
    ("10.0.0.1:22,ssh://[::1]", (JumpHop(None, "10.0.0.1", 22), JumpHop(None, "::1", None))),
]


@pytest.mark.parametrize(("text", "hops"), JUMPS)
def test_proxy_jump(text: str, hops: tuple[JumpHop, ...]) -> None:
    assert parse_proxy_jump(text) == hops
    if hops:
        assert parse_proxy_jump(",".join(str(h) for h in hops)) == hops


def test_jump_hop_str() -> None:
    assert str(JumpHop(None, "a", None)) == "a"
    assert str(JumpHop("u", "a", 22)) == "u@a:22"
    assert str(JumpHop("u", "2001:db8::1", 22)) == "u@[2001:db8::1]:22"
    assert str(JumpHop(None, "::1", None)) == "[::1]"


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty ProxyJump"),
    ("   ", "empty ProxyJump"),
    ("a,,b", "hop 2 (''): empty hop"),
    ("a,", "hop 2"),
    (",a", "hop 1"),
    ("a:", "port ''"),
    ("a:ssh", "port 'ssh'"),
    ("a:0", "port '0'"),
    ("a:70000", "port '70000'"),
    ("a:22:23", "must be in brackets"),
    ("2001:db8::1", "must be in brackets"),
    ("[2001:db8::1", "unbalanced '['"),
    ("2001:db8::1]:22", "unbalanced ']'"),
    ("[2001:db8::1]22", "after ']'"),
    ("[not:v6]", "not an IPv6 address"),
    ("[]", "empty host"),
    ("@a", "empty user name"),
    ("u@", "empty host"),
    ("u@:22", "empty host"),
    ("a b", "white space"),
    ("a, b", "white space"),
    ("http://a", "only ssh://"),
    ("ssh://a/b", "no path"),
    ("ssh://a?x=1", "no path or parameters"),
    ("-oProxyCommand=x", "starts with '-'"),
    ("a/b", "contains"),
])
def test_proxy_jump_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_proxy_jump(text)
    assert message in str(caught.value)
    if text.strip():
        assert repr(text) in str(caught.value)  # the whole value, for the user to find


_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).filter(lambda s: s[0] != "-")
_hostname = st.lists(_label, min_size=1, max_size=3).map(".".join)
_ipv6 = st.ip_addresses(v=6).map(str)
_ipv4 = st.ip_addresses(v=4).map(str)
_user = st.none() | st.text("abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=1, max_size=8)
_port = st.none() | st.integers(1, 65535)
_hop = st.builds(JumpHop, _user, _hostname | _ipv4 | _ipv6, _port)


@given(st.lists(_hop, min_size=1, max_size=4))
def test_proxy_jump_round_trip(hops: list[JumpHop]) -> None:
    assert parse_proxy_jump(",".join(str(h) for h in hops)) == tuple(hops)
    assert parse_proxy_jump(",".join(f"ssh://{h}" for h in hops)) == tuple(hops)


@given(st.sampled_from(["ssh", "ssh-ng"]), _user, _hostname | _ipv4 | _ipv6, _port)
def test_ssh_store_url_round_trip(scheme: str, user: str | None, host: str, port: int | None) -> None:
    hop = JumpHop(user, host, port)  # the same [user@]host[:port] spelling
    url = StoreUrl.parse(f"{scheme}://{hop}")
    assert (url.scheme, url.user, url.ssh_host, url.port) == (scheme, user, host, port)
    assert StoreUrl.parse(str(url)) == url
