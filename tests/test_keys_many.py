"""Keys at scale (issue 29): all the keys of one upload to a host travel together, in one ssh
call (`keys.sh upload COUNT`, a line per key then the contents), each still installed on its
own (owner and mode before content, SHA-256 checked, renamed into place); a key that fails is
named, its instance fails, and the host's other keys are installed all the same."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hive import process, ssh
from hive.elevate import Password
from hive.errors import StepError
from hive.keys import KEYS_SH, Keys, upload_stream
from hive.model import Hive, Instance, Key, System, frozen_map
from hive.remote import Remote
from tests.conftest import needs, needs_lab
from tests.constants import REPO, STANDIN
from tests.fleet import Fleet

SOURCE = REPO / "tests" / "hives" / "keys"
MANY = "many.nix"
lab_group = pytest.mark.xdist_group("keys_many")  # one worker starts the lab once


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- unit: the stream, the one call, the failures named -----------------------------------------

def test_the_stream_is_a_line_per_key_then_the_contents_as_they_are() -> None:
    odd = Key("odd", "/run/keys/a b\\c é ", user="deploy", group="wheel", permissions="0640")
    plain = Key("plain", "/k", permissions="400")
    binary = b"\x00\xff\n"
    stream = upload_stream([(odd, binary), (plain, b"")])
    assert stream == (f"{sha256(binary)} 3 0640 deploy wheel /run/keys/a b\\c é \n".encode()
                      + f"{sha256(b'')} 0 400 root root /k\n".encode() + b"\x00\xff\n")


class Host:
    """process.run as a host answering `keys.sh upload` (and `hashes`): what it was asked."""

    def __init__(self, stdout: str = "", exit_code: int = 0, stderr: str = "") -> None:
        self.calls: list[tuple[list[str], Any]] = []
        self.answer = process.Result(stdout=stdout, stderr=stderr, exit_code=exit_code)

    def __call__(self, argv: Sequence[str], *, input: Any = None, **_: Any) -> process.Result:
        self.calls.append((list(argv), input))
        return self.answer


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    model = Hive(file=Path("/d/hive.nix"), shown="hive.nix", paths=frozen_map(),
                 systems={"s": System("s", frozen_map())}, instances={"w": Instance("w", "s")})
    return Remote(ssh.prepare(model, tmp_path), "w", hive=model)


def keyring(*keys: Key) -> Keys:
    return Keys(Hive(file=Path("/d/hive.nix"), shown="hive.nix", paths=frozen_map(), systems={}, instances={},
                     keys={k.name: k for k in keys}))


def test_all_the_keys_of_a_host_go_in_one_call_after_the_password(remote: Remote,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [Key(f"k{i}", f"/run/keys/k{i}", text=f"secret {i}") for i in range(200)]
    host = Host()
    monkeypatch.setattr(process, "run", host)
    done = keyring(*keys).upload(remote, keys, only_changed=False)
    assert done.sent == tuple(k.name for k in keys) and len(host.calls) == 1
    argv, sent = host.calls[0]
    assert argv[-1].endswith(" upload 200")  # the count alone in the command line
    assert sent == upload_stream([(k, f"secret {i}".encode()) for i, k in enumerate(keys)])
    assert not any("secret" in word for word in argv)

    remote.password = Password("hunter2")  # --ask-sudo-password: its line first, then the stream
    keyring(*keys).upload(remote, keys[:3], only_changed=False)
    assert host.calls[1][1] == b"hunter2\n" + upload_stream([(k, f"secret {i}".encode())
                                                             for i, k in enumerate(keys[:3])])


def test_each_key_that_failed_is_named_and_fails_the_step(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [Key("a", "/run/keys/a", text="1"), Key("ghost", "/run/keys/g", text="2", user="nobody-here"),
            Key("late", "/run/keys/l", text="3", user="late", upload_at="post-activation"),
            Key("linked", "/srv/k", text="4"), Key("cut", "/run/keys/c", text="5"), Key("b", "/run/keys/b", text="6")]
    host = Host(exit_code=68, stdout="2 64 no user nobody-here\n3 64 no user late\n4 67 /srv is a symbolic link: "
                                     "refused\n5 66 the content arrived altered (0 of 1 bytes, another SHA-256): "
                                     "not installed\n")
    monkeypatch.setattr(process, "run", host)
    with pytest.raises(StepError) as failed:
        keyring(*keys).upload(remote, keys, only_changed=False)
    assert str(failed.value) == (
        'key ghost on w: no user nobody-here; if the new system creates it, upload the key after the switch: '
        'keys.ghost.uploadAt = "post-activation"; key late on w: no user late; '
        "key linked on w: /srv is a symbolic link: refused; "
        "key cut on w: the content arrived altered (0 of 1 bytes, another SHA-256): not installed")
    assert len(host.calls) == 1


def test_a_call_that_fails_whole_fails_every_key_it_carried(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [Key(f"k{i}", f"/run/keys/k{i}", text="x") for i in range(8)]
    monkeypatch.setattr(process, "run", Host(exit_code=92, stderr="Sorry, try again.\n"))
    with pytest.raises(StepError) as failed:
        keyring(*keys).upload(remote, keys[:1], only_changed=False)
    assert str(failed.value) == "key k0 on w: sudo refused the password (tried once, not again)"
    with pytest.raises(StepError) as failed:
        keyring(*keys).upload(remote, keys, only_changed=False)
    assert str(failed.value) == ("keys k0, k1, k2, k3, k4 and 3 more on w: sudo refused the password "
                                 "(tried once, not again)")


def test_an_unreadable_key_is_named_and_the_others_still_go(remote: Remote, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    keys = [Key("gone", "/run/keys/gone", key_file=tmp_path / "gone"), Key("ok", "/run/keys/ok", text="y")]
    host = Host()
    monkeypatch.setattr(process, "run", host)
    with pytest.raises(StepError) as failed:
        keyring(*keys).upload(remote, keys, only_changed=False)
    assert str(failed.value) == f"key gone: cannot read {tmp_path / 'gone'}: No such file or directory"
    assert [input for _, input in host.calls] == [upload_stream([(keys[1], b"y")])]


def test_more_failures_than_shown_name_the_others(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [Key(f"k{i}", f"/run/keys/k{i}", text="x", user="nobody") for i in range(9)]
    host = Host(exit_code=68, stdout="".join(f"{i} 64 no user nobody\n" for i in range(1, 10)))
    monkeypatch.setattr(process, "run", host)
    with pytest.raises(StepError) as failed:
        keyring(*keys).upload(remote, keys, only_changed=False)
    reason = str(failed.value)
    assert reason.count("no user nobody") == 5 and reason.endswith("; and 4 more failed: k5, k6, k7, k8")


# --- keys.sh itself, run here as root would run it on a host ------------------------------------

def install(keys: Sequence[tuple[Key, bytes]], stream: bytes | None = None, shell: str = "sh",
            tmpdir: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = os.environ | ({"TMPDIR": str(tmpdir)} if tmpdir else {})
    return subprocess.run([shell, "-c", KEYS_SH, "keys.sh", "upload", str(len(keys))], env=env,
                          input=upload_stream(keys) if stream is None else stream, capture_output=True, timeout=120)


as_root = needs("root", None if os.geteuid() == 0 else "keys.sh runs as root (it checks that root owns each directory)")
# around od's 16-byte lines, the 4 KiB of content keys.sh writes at a time, and the 16 KiB
# from which a key is read on its own
SIZES = (0, 1, 15, 16, 17, 1023, 1024, 1025, 4095, 4096, 4097, 16383, 16384)


def thousands(root: Path, count: int) -> list[tuple[Key, bytes]]:
    """`count` binary keys under `root`, in 10 directories (a name with spaces, quotes, a
    backslash, a `$(...)` and a leading dash now and then), of SIZES bytes (the last two
    rarely) and one of 1 MiB, 2 owners and 3 modes."""
    rng = random.Random(count)
    keys = []
    for i in range(count):
        where = root / (f"dir {i % 10}" if i % 10 else "plain")
        name = f"-k{i} \\ é '\"$(touch {root}/x)" if i % 97 == 0 else f"k{i}"
        owner = ("root", "nobody")[i % 2]
        size = 1024 * 1024 if i == count // 2 else SIZES[rng.randrange(len(SIZES) - 2 * (i % 20 > 0))]
        keys.append((Key(f"k{i}", str(where / name), user=owner, group=("root", "nogroup")[i % 2],
                         permissions=("0400", "640", "0600")[i % 3]), rng.randbytes(size)))
    return keys


def installed(root: Path, keys: Sequence[tuple[Key, bytes]], *, but: int | None = None) -> None:
    """Every key (but the one at index `but`) at its destination with its bytes, owner and
    mode; no private directory left behind."""
    for i, (key, data) in enumerate(keys):
        if i == but:
            continue
        dest = Path(key.destination)
        st = dest.lstat()
        assert dest.read_bytes() == data, dest
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)) == (
            0 if key.user == "root" else 65534, 0 if key.group == "root" else 65534, oct(int(key.permissions, 8))), dest
    assert [p for d in root.iterdir() for p in d.iterdir() if p.name.startswith(".")] == []
    assert not (root / "x").exists()  # no name ran as a command


@as_root
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_thousands_of_keys_arrive_byte_for_byte_with_their_owners_and_modes(tmp_path: Path, shell: str) -> None:
    """3,000 keys of one call (keys.sh no longer starts a process per key, issue 29), under
    Debian's sh (dash) and under bash (NixOS's sh): each installed whole, owned and moded."""
    tmp_path.chmod(0o755)
    keys = thousands(tmp_path, 3000)
    out = install(keys, shell=shell)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    installed(tmp_path, keys)
    # `hashes` of them all (one sha256sum): a line each, in order (a name with a backslash
    # escaped, as sha256sum does), none for a destination that is not there
    dests = [key.destination for key, _ in keys]
    hashes = subprocess.run([shell, "-c", KEYS_SH, "keys.sh", "hashes", *dests, str(tmp_path / "none" / "k")],
                            capture_output=True, check=True, timeout=120)
    assert hashes.stdout.decode().splitlines() == [
        ("\\" if "\\" in dest else "") + f"{sha256(data)}  {dest.replace(chr(92), chr(92) * 2)}"
        for dest, (_, data) in zip(dests, keys, strict=True)]


@as_root
def test_a_content_altered_in_transit_among_thousands_fails_that_key_alone(tmp_path: Path) -> None:
    """One byte of one key's content flipped on the way, among 2,000: that key fails (66, its
    line), the file already at its destination stays as it was, and every other key is
    installed. keys.sh's own lists stay out of a TMPDIR another user owns."""
    tmp_path.chmod(0o755)
    keys = thousands(tmp_path / "keys", 2000)
    theirs = tmp_path / "their-tmp"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    bad = next(i for i in range(1234, 2000) if len(keys[i][1]) > 16)
    dest = Path(keys[bad][0].destination)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"the old key")
    stream = bytearray(upload_stream(keys))
    stream[len(stream) - sum(len(data) for _, data in keys[bad:]) + 16] ^= 0x80
    out = install(keys, bytes(stream), tmpdir=theirs)
    size = len(keys[bad][1])
    assert (out.returncode, out.stdout.decode(), out.stderr) == (
        68, f"{bad + 1} 66 the content arrived altered ({size} of {size} bytes, another SHA-256): not installed\n", b"")
    assert dest.read_bytes() == b"the old key"
    installed(tmp_path / "keys", keys, but=bad)
    assert list(theirs.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="keys.sh runs as root (it checks that root owns each directory)")
def test_each_key_of_a_call_is_installed_or_refused_on_its_own(tmp_path: Path) -> None:
    """300 binary keys in two directories (names with spaces, a backslash, a leading dash),
    owners and modes of their own; among them a user the host lacks, a directory another user
    owns, a link for a destination, and one whose bytes were altered on the way: those four
    are each told on stdout (exit 68) and not installed, every other key is, byte for byte."""
    tmp_path.chmod(0o755)
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, 65534, 65534)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "link").symlink_to(tmp_path / "elsewhere")
    rng = random.Random(29)
    keys: list[tuple[Key, bytes]] = []
    for i in range(300):
        where = tmp_path / ("keys" if i % 2 else "keys/sub dir")
        name = f"-k{i} \\ é " if i % 7 == 0 else f"k{i}"
        keys.append((Key(f"k{i}", str(where / name), user="nobody" if i % 3 == 0 else "root",
                         group="nogroup" if i % 3 == 0 else "root", permissions=("0400", "640", "0600")[i % 3]),
                     rng.randbytes(rng.randrange(0, 3000))))
    keys[10] = (Key("ghost", str(tmp_path / "keys" / "ghost"), user="nobody-here"), b"boo")
    keys[20] = (Key("owned", str(owned / "k")), b"no")
    keys[30] = (Key("link", str(tmp_path / "keys" / "link")), b"no")
    stream = bytearray(upload_stream(keys))
    altered = len(stream) - sum(len(data) for _, data in keys[40:])
    stream[altered] ^= 1  # the first byte of key 41 (index 40), same length: the others stay in step
    out = install(keys, bytes(stream))
    assert out.returncode == 68, out.stderr
    told = {int(line.split()[0]) - 1: line.split(" ", 2)[1:] for line in out.stdout.decode().splitlines()}
    size = len(keys[40][1])
    assert told == {10: ["64", "no user nobody-here"], 20: ["67", f"{owned} is owned by nobody, not root: refused"],
                    30: ["67", f"{tmp_path / 'keys' / 'link'} is a symbolic link: refused"],
                    40: ["66", f"the content arrived altered ({size} of {size} bytes, another SHA-256): not installed"]}
    for i, (key, data) in enumerate(keys):
        dest = Path(key.destination)
        if i in told:
            assert not dest.exists() or dest.is_symlink(), dest
            continue
        st = dest.lstat()
        assert dest.read_bytes() == data, dest
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (65534 if i % 3 == 0 else 0, oct(int(key.permissions, 8)))
    left = [p.name for d in (tmp_path / "keys", tmp_path / "keys" / "sub dir") for p in d.iterdir()
            if p.name.startswith(".")]
    assert left == [] and not (tmp_path / "elsewhere").exists()  # no private directory left behind

    # a stream cut inside the contents: the keys before the cut are installed, the rest not
    again = [(key, b"new " + data) for key, data in keys[:5]]
    whole = upload_stream(again)
    cut = install(again, whole[:len(whole) - len(again[-1][1]) - 2])
    assert cut.returncode == 68 and sorted(line.split()[:2] for line in cut.stdout.decode().splitlines()) == [
        ["4", "66"], ["5", "66"]]
    assert [Path(k.destination).read_bytes() for k, _ in again] == [d for _, d in again[:3]] + [d for _, d in keys[3:5]]


# --- the lab: real hosts over real ssh ----------------------------------------------------------

COUNT = 60
LARGE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet.start(tmp_path_factory.mktemp("many"), topology={"portico": ["pub"], "www-1": ["pub"]},
                        source=SOURCE, payload_bytes=4096)
    try:
        fleet.env.update(KEYTEST_MANY=str(COUNT), KEYTEST_MANY_BAD="")
        yield fleet
    finally:
        fleet.down()


def write_keys(fleet: Fleet, seed: int) -> dict[str, bytes]:
    """Each key's content (random bytes), written where the hive reads them; the large one too."""
    rng = random.Random(seed)
    contents = {f"k{i}": rng.randbytes(1024) for i in range(COUNT)} | {"large": rng.randbytes(LARGE)}
    (fleet.hive / "secrets" / "many").mkdir(exist_ok=True)
    for name, data in contents.items():
        (fleet.hive / "secrets" / ("many-large" if name == "large" else f"many/{name}")).write_bytes(data)
    return contents


def destination(name: str) -> str:
    return "/run/keys/many/large" if name == "large" else f"/run/keys/many/{name} odd \\ é "


def on_host(fleet: Fleet, host: str) -> dict[str, str]:
    """Destination -> SHA-256 of every file under /run/keys/many, computed on the host."""
    out = fleet.lab.run(host, ["sh", "-c", "cd /run/keys/many && for f in * .*; do "
                                           "[ -f \"$f\" ] && printf '%s\\t%s\\n' \"$(sha256sum < \"$f\")\" \"$f\"; "
                                           "done; true"]).stdout
    return {f"/run/keys/many/{line.split(chr(9))[1]}": line.split()[0] for line in out.splitlines()}


def upload_calls(stderr: str) -> dict[str, int]:
    """Host -> the `keys.sh upload` calls of a `-v` run (each process it started is shown, its
    remote script spanning lines)."""
    calls: dict[str, int] = {}
    for shown in re.split(r"^\$ ", stderr, flags=re.M):
        host = re.match(r"ssh -F \S+ -- (\S+) ", shown)
        if host and "keys.sh" in shown and re.search(r" [0-9]{8}-[0-9]{6}-[0-9a-f]{8} upload [0-9]+", shown):
            calls[host.group(1)] = calls.get(host.group(1), 0) + 1
    return calls


@needs_lab
@lab_group
def test_many_keys_go_in_one_call_per_host_byte_for_byte_and_rotate_atomically(fleet: Fleet) -> None:
    contents = write_keys(fleet, 1)
    hive = str(fleet.hive / MANY)
    first = fleet.run("upload-keys", "-v", "-c", hive, "*")
    assert first.returncode == 0, first.stderr
    assert upload_calls(first.stderr) == {"portico": 1, "www-1": 1}  # 61 keys each, one round trip
    want = {destination(n): sha256(data) for n, data in contents.items()}
    for host in ("portico", "www-1"):
        assert on_host(fleet, host) == want, host  # every key, byte for byte; nothing left beside them
    modes = fleet.lab.run("www-1", ["stat", "-c", "%U %a %i", destination("k1"), destination("k2"),
                                    destination("large")]).stdout.split("\n")
    assert [m.rsplit(" ", 1)[0] for m in modes[:3]] == ["deploy 640", "root 400", "root 640"]

    # rotate them all while the host reads the large key in a loop: it only ever sees the old
    # content or the new one, whole, with the same owner and mode (a rename, a new inode)
    rotated = write_keys(fleet, 2)
    stop = "/run/keys-test-reader-stop"  # the reader's own end (nsenter's child outlives a signal to nsenter)
    fleet.lab.run("www-1", ["rm", "-f", stop])
    reader = subprocess.Popen(fleet.lab.host_argv("www-1", ["sh", "-c", f"while [ ! -e {stop} ]; do sha256sum < "
                                                                  "/run/keys/many/large; done"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        again = fleet.run("upload-keys", "-v", "-c", hive, "www-1")
    finally:
        fleet.lab.run("www-1", ["touch", stop])
        seen = set(reader.communicate(timeout=60)[0].split())
    assert again.returncode == 0 and upload_calls(again.stderr) == {"www-1": 1}, again.stderr
    assert on_host(fleet, "www-1") == {destination(n): sha256(data) for n, data in rotated.items()}
    assert seen <= {sha256(contents["large"]), sha256(rotated["large"]), "-"} and sha256(rotated["large"]) in seen
    after = fleet.lab.run("www-1", ["stat", "-c", "%U %a %i", destination("k1"), destination("k2"),
                                    destination("large")]).stdout.split("\n")
    assert [m.rsplit(" ", 1)[0] for m in after[:3]] == ["deploy 640", "root 400", "root 640"]
    assert all(a.split()[-1] != b.split()[-1] for a, b in zip(after[:3], modes[:3], strict=True))


@needs_lab
@lab_group
def test_a_failed_key_fails_its_instance_by_name_and_the_others_are_installed(fleet: Fleet) -> None:
    contents = write_keys(fleet, 3)
    fleet.lab.run("www-1", ["sh", "-c", "mkdir -p /run/keys/app && chown deploy /run/keys/app"])
    fleet.env["KEYTEST_MANY_BAD"] = "1"
    try:
        result = fleet.run("deploy", "--json", "-v", "-c", str(fleet.hive / MANY), "-I", f"nixpkgs={STANDIN}", "*")
    finally:
        fleet.env["KEYTEST_MANY_BAD"] = ""
        fleet.lab.run("www-1", ["rm", "-rf", "/run/keys/app"])
    rows = {r["instance"]: r for r in json.loads(result.stdout)["instances"]}
    assert result.returncode == 1 and rows["portico"]["outcome"] == "ok", result.stderr
    assert rows["www-1"]["outcome"] == "failed"
    assert rows["www-1"]["reason"] == (
        "keys: key ghost on www-1: no user nobody-here; if the new system creates it, upload the key after the "
        'switch: keys.ghost.uploadAt = "post-activation"; '
        "key refused on www-1: /run/keys/app is owned by deploy, not root: refused")
    assert upload_calls(result.stderr) == {"portico": 1, "www-1": 1}
    assert fleet.lab.activations("www-1") == []  # a pre-activation key failed: no switch
    want = {destination(n): sha256(data) for n, data in contents.items()}
    assert on_host(fleet, "www-1") == want  # the 61 others: installed all the same
    assert fleet.lab.read("www-1", "/run/keys/ghost") is None
