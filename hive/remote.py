"""One `Remote` per host: the argv of every ssh call nix-hive makes, the host's shared
connection (open on first use, released when the run is done with the host, closed at the
end), the probe (what the host has and runs, asked in one ssh call), and running as root.

`Remotes` is a run's set of them, with the generated ssh files in a private temporary
directory; it is a context manager that closes every shared connection and removes the files.
Nothing else in nix-hive builds an `ssh -F …` argv.
"""

from __future__ import annotations

import shlex
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, overload

from hive import elevate, process, ssh, tempdirs
from hive.errors import NO_ANSWER, HiveError, ProcessError, headline, ssh_reason
from hive.model import Hive
from hive.resources import host_script

SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
T = TypeVar("T")


class Answer(Protocol):
    """What asking a host said: whether it answered, and if not, why."""

    @property
    def reachable(self) -> bool: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class Probe:
    """A host as one ssh call found it."""

    reachable: bool
    current: str | None = None  # /run/current-system
    profile: str | None = None  # what the system profile points at (the boot default)
    valid: frozenset[str] = frozenset()  # the asked paths its store holds
    asked: frozenset[str] = frozenset()  # the paths it was asked about
    pending: bool = False  # an activation still waits for its confirmation (it may roll back)
    reason: str = ""  # why the host could not be reached (ssh's own word, one line)


# What ssh says when the host's sshd answered too slowly or dropped the connection before
# its banner: maybe a host (or its sshd's MaxStartups) overwhelmed for a moment by many
# logins at once, not a host down (ssh_reason words a banner that never came as NO_ANSWER)
OVERLOADED = (NO_ANSWER, "kex_exchange_identification", "Connection reset by peer",
              "Connection closed by remote host")
RETRY_WIDTH = 4  # the hosts asked once more, so many at a time; only after more were asked at once


def hop_unreachable(hop: str, reason: str) -> str:
    """Why a host behind the jump host `hop` cannot be reached, `reason` being the hop's own."""
    return f"its jump host {hop} is unreachable: {reason}"


def overloaded(reason: str) -> bool:
    """ssh's `reason` for not reaching a host says it was busy rather than down."""
    return any(marker in reason for marker in OVERLOADED)


def probe_script(paths: Iterable[str]) -> str:
    """A POSIX shell script printing `current=`, `profile=` and a `valid=` line per path of
    `paths` the host's store holds. A path the host runs, or its system profile names, is
    valid without asking Nix (both are GC roots): a redeploy of what is there starts no Nix
    process on the host."""
    script = ('cur=$(readlink /run/current-system 2>/dev/null); printf "current=%s\\n" "$cur"; '
              f'p={SYSTEM_PROFILE}; prof=$(test -L $p && readlink -f $p); printf "profile=%s\\n" "$prof"')
    script += ('; for f in /run/nix-hive/*/state; do [ "$(cat "$f" 2>/dev/null)" = waiting ] && echo pending=1; '
               'done')
    for path in sorted(paths):
        quoted = shlex.quote(path)
        script += (f'; {{ [ "$cur" = {quoted} ] || [ "$prof" = {quoted} ] || '
                   f"nix-store --check-validity {quoted} 2>/dev/null; }} && echo valid={quoted}")
    return script + "; true"


def parse_probe(stdout: str, asked: Iterable[str]) -> Probe:
    """The `Probe` of a host whose answer to `probe_script(asked)` is `stdout`."""
    lines = stdout.splitlines()
    current = next((ln.removeprefix("current=") for ln in lines if ln.startswith("current=")), "")
    profile = next((ln.removeprefix("profile=") for ln in lines if ln.startswith("profile=")), "")
    wanted = frozenset(asked)
    valid = frozenset(ln.removeprefix("valid=") for ln in lines if ln.startswith("valid=")) & wanted
    return Probe(reachable=True, current=current or None, profile=profile or None, valid=valid, asked=wanted,
                 pending="pending=1" in lines)


@dataclass(frozen=True)
class Facts:
    """What `nix-hive diff` learns of a host in one ssh call (hive/host/diff.sh facts)."""

    reachable: bool
    current: str | None = None  # /run/current-system (None: never activated)
    missing: frozenset[str] = frozenset()  # the asked paths its store lacks
    reason: str = ""  # why it could not be asked (one line)


SSH_FAILED = 255  # ssh's own exit status: it could not connect (the remote command's is passed through)


def parse_facts(stdout: str, asked: Iterable[str]) -> Facts:
    """The `Facts` of a host whose answer to `diff.sh facts` (asked about `asked`) is
    `stdout`; a `HiveError` for an answer cut before its `end`."""
    lines = stdout.splitlines()
    if "end" not in lines:
        raise HiveError(f"its answer was cut short: {stdout.strip()[-200:]!r}")
    current = next((ln[len("current "):] for ln in lines if ln.startswith("current ")), "")
    missing = frozenset(ln[len("missing "):] for ln in lines if ln.startswith("missing ")) & frozenset(asked)
    return Facts(reachable=True, current=current or None, missing=missing)


def parse_closure(stdout: str) -> dict[str, int]:
    """Path -> NAR size from `diff.sh closure`'s answer (or `nix-store --query --requisites`
    and `--size` beside each other); a `HiveError` for one cut short or that does not add up."""
    lines = stdout.splitlines()
    paths = [ln[len("path "):] for ln in lines if ln.startswith("path ")]
    sizes = [ln[len("size "):] for ln in lines if ln.startswith("size ")]
    if "end" not in lines or len(paths) != len(sizes) or not paths or not all(s.isdigit() for s in sizes):
        raise HiveError(f"its answer about a closure does not add up ({len(paths)} paths, {len(sizes)} sizes): "
                        f"{stdout.strip()[-200:]!r}")
    return dict(zip(paths, map(int, sizes), strict=True))


def _answer_error(out: process.Result, pinned: str | None, connect_timeout: int) -> str:
    """Why a call of a host script failed: what ssh said when it could not connect, else the
    script's own `error WHY` line, else the last word of its stderr."""
    if out.exit_code == SSH_FAILED:
        return ssh_reason(out.stderr, pinned, connect_timeout)
    said = next((ln.removeprefix("error ") for ln in out.stdout.splitlines() if ln.startswith("error ")), None)
    return said or headline(out.stderr) or f"exited {out.exit_code}"


def as_root(commands: Sequence[Sequence[str]], method: elevate.Method = elevate.Method.SUDO,
            password: elevate.Password | None = None) -> str:
    """A remote script running `commands` in turn as root: directly when the ssh user is
    root, else as `method` says (hive/elevate.py); `sudo -n` by default, never prompting: a
    missing sudo rule fails fast. With a `password`, its call's input starts with it
    (`Remote.root_input`)."""
    return elevate.script(method, password, " && ".join("as_root " + shlex.join(cmd) for cmd in commands))


def _shell_words(script: str, args: Sequence[str]) -> str:
    """The remote command running `script` with `args` as its $1, $2, …, each quoted for the
    remote user's shell."""
    return shlex.join(["sh", "-c", script, *(["sh", *args] if args else [])])


class Remote:
    """A host as ssh knows it (an instance, or a jump host of the user's configuration)."""

    def __init__(self, setup: ssh.SshSetup, name: str, *, hub: bool = False, hive: Hive | None = None) -> None:
        self.setup = setup
        self.name = name
        self.hub = hub  # a jump host or relay: its connection stays open for the hosts behind it
        self._lock = threading.Lock()
        self._probe: Probe | None = None
        # how root comes on this host (an instance's `elevate`; sudo on other hosts, which
        # nix-hive never asks for root), and the run's sudo password
        known = hive.instances.get(name) if hive is not None else None
        self.elevate = elevate.Method(known.elevate) if known is not None else elevate.Method.SUDO
        # the attribute that pins its host key, for a reason that names it
        self.pinned = f"instances.{name}.hostKey" if known is not None and known.host_key else None
        self.password = hive.sudo_password if hive is not None and self.elevate is elevate.Method.SUDO else None
        # its own ConnectTimeout, when the deployment gives it one (else --connect-timeout's, or 10)
        own = ssh.option(known, "ConnectTimeout")
        self._connect_timeout = int(own) if own is not None and own.strip().isdigit() else None

    @property
    def connect_timeout(self) -> int:
        """The seconds ssh gives a new connection to this host (its banner included)."""
        return self._connect_timeout if self._connect_timeout is not None else ssh.connect_timeout()

    @property
    def config(self) -> Path:
        """The ssh configuration this host's ssh calls read (hive/ssh.py: its own, when it is an instance)."""
        return self.setup.config_for(self.name)

    def shell_argv(self, script: str, *, share: bool = True, args: Sequence[str] = ()) -> list[str]:
        """Run a POSIX shell script on the host (passed as one quoted argument, `args` as its
        $1, $2, … each quoted too: the remote shell gives them back as they are). Without
        `share`, the call uses a shared connection if one is open but leaves none behind (a
        one-off question to many hosts)."""
        options = [] if share else ["-o", "ControlMaster=no"]
        return ["ssh", "-F", str(self.config), *options, "--", self.name, _shell_words(script, args)]

    def fresh_argv(self, script: str, *, args: Sequence[str] = ()) -> list[str]:
        """Run a script (`args` as in `shell_argv`) over a new connection of its own (a fresh
        authentication to the host, through the same jump hosts): proof that the host still
        lets nix-hive in."""
        return ["ssh", "-F", str(self.config), "-o", "ControlMaster=no", "-o", "ControlPath=none", "--",
                self.name, _shell_words(script, args)]

    def forward_argv(self, host: str, port: int) -> list[str]:
        """Connect standard input and output to host:port as the remote host sees it (`ssh -W`)."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return ["ssh", "-F", str(self.config), "-W", target, "--", self.name]

    def command_argv(self, words: Sequence[str]) -> list[str]:
        """`ssh host WORDS...` as ssh itself does it: the words joined by spaces and run by
        the remote user's shell (so `run '*' -- 'uptime; df -h'` means what it says)."""
        return ["ssh", "-F", str(self.config), "--", self.name, " ".join(words)]

    def run_script(self, script: str, *, on_line: Callable[[str], None] | None = None) -> process.Result:
        """Run a POSIX shell script as the ssh user (a build host's copies and GC roots)."""
        return process.run(self.shell_argv(script), on_stderr=on_line)

    def root_script(self, body: str) -> str:
        """`body`, a script calling `as_root CMD ARGS…` for its commands that need root, made to
        run on this host (hive/host/elevate.sh first); its call's input is `root_input`'s."""
        return elevate.script(self.elevate, self.password, body)

    def as_root(self, commands: Sequence[Sequence[str]]) -> str:
        """A script running `commands` in turn as root on this host (see `as_root`)."""
        return as_root(commands, self.elevate, self.password)

    @overload
    def root_input(self, data: bytes) -> bytes: ...
    @overload
    def root_input(self, data: str) -> str: ...
    @overload
    def root_input(self, data: None = None) -> str | None: ...

    def root_input(self, data: bytes | str | None = None) -> bytes | str | None:
        """The standard input of a call running `root_script`/`as_root`: the sudo password's
        line first (when one was asked), then `data`."""
        if self.password is None:
            return data
        if isinstance(data, bytes):
            return self.password.line().encode() + data
        return self.password.line() + (data or "")

    def run_as_root(self, commands: Sequence[Sequence[str]]) -> process.Result:
        self.forget()
        return process.run(self.shell_argv(self.as_root(commands)), input=self.root_input())

    @property
    def known(self) -> Probe | None:
        """What the last probe found, if one was made since the host last changed."""
        with self._lock:
            return self._probe

    def probe(self, paths: Iterable[str], *, keep: bool = False, timeout: float | None = None) -> Probe:
        """What the host has and runs, asked once (one ssh call) and remembered until a step
        changes the host (`forget`) or a path it was not asked about is needed. Jump hosts and
        relays keep their connection, and so does a host the run works on next (`keep`); the
        others need none yet. A host that cannot be reached says why (`Probe.reason`)."""
        wanted = frozenset(paths)
        with self._lock:
            known = self._probe
        if known is not None and (wanted <= known.asked or not known.reachable):
            return known
        try:
            out = process.run(self.shell_argv(probe_script(wanted), share=self.hub or keep), timeout=timeout)
            found = parse_probe(out.stdout, wanted)
        except HiveError as exc:
            if isinstance(exc, process.ProcessTimeoutError):
                why = f"no answer within {exc.timeout:g} s"
            else:
                why = (ssh_reason(exc.stderr, self.pinned, self.connect_timeout) if isinstance(exc, ProcessError)
                       else str(exc))
            found = Probe(reachable=False, asked=wanted, reason=why)
        with self._lock:
            self._probe = found
        return found

    def facts(self, paths: Sequence[str], *, timeout: float) -> Facts:
        """What `nix-hive diff` needs of the host, in one ssh call within `timeout`: what it
        runs, and which of `paths` (the new system's closure, sent on stdin) its store lacks.
        A host that cannot be asked says why (`Facts.reason`)."""
        try:
            out = process.run(self.shell_argv(host_script("diff.sh"), share=self.hub, args=["facts"]),
                              input="".join(f"{p}\n" for p in paths), check=False, timeout=timeout)
        except process.ProcessTimeoutError as exc:
            return Facts(reachable=False, reason=f"no answer within {exc.timeout:g} s")
        except HiveError as exc:
            return Facts(reachable=False, reason=str(exc))
        if out.exit_code != 0:
            return Facts(reachable=False, reason=_answer_error(out, self.pinned, self.connect_timeout))
        try:
            return parse_facts(out.stdout, paths)
        except HiveError as exc:
            return Facts(reachable=False, reason=str(exc))

    def closure(self, path: str, *, timeout: float) -> dict[str, int]:
        """Every path of `path`'s closure in the host's store, with its NAR size, read there
        in one ssh call within `timeout`; a `HiveError` naming the host otherwise."""
        try:
            out = process.run(self.shell_argv(host_script("diff.sh"), share=self.hub, args=["closure", path]),
                              check=False, timeout=timeout)
        except process.ProcessTimeoutError as exc:
            raise HiveError(f"{self.name}: no answer within {exc.timeout:g} s") from exc
        except HiveError as exc:
            raise HiveError(f"{self.name}: {exc}") from exc
        if out.exit_code != 0:
            raise HiveError(f"{self.name}: {_answer_error(out, self.pinned, self.connect_timeout)}")
        try:
            return parse_closure(out.stdout)
        except HiveError as exc:
            raise HiveError(f"{self.name}: {exc}") from exc

    def forget(self) -> None:
        with self._lock:
            self._probe = None

    def release(self) -> None:
        """Close the shared connection once the run is done with the host. Behind a jump host
        each open connection holds a session of the jump host's, and sshd allows MaxSessions
        (10 by default) per connection: past that, ssh opens (and authenticates) new
        connections to the jump host. Jump hosts and relays stay open until `close`."""
        if not self.hub:
            self.close()

    def close(self) -> None:
        if self.setup.control_dir is not None:
            process.run(["ssh", "-F", str(self.config), "-O", "exit", "--", self.name], check=False, timeout=10)


class Remotes:
    """A run's remotes, one per host, over one generated ssh configuration with shared
    connections (written on first use into a private temporary directory)."""

    def __init__(self, hive: Hive, hubs: Iterable[str] = (), *, jobs: int = 10) -> None:
        self.hive = hive
        self.hubs = frozenset(hubs)
        self.jobs = max(1, jobs)
        self._lock = threading.Lock()
        self._setup: ssh.SshSetup | None = None
        self._remotes: dict[str, Remote] = {}

    @property
    def setup(self) -> ssh.SshSetup:
        with self._lock:
            if self._setup is None:
                # short enough for the sockets whatever TMPDIR is (else /tmp or $XDG_RUNTIME_DIR)
                directory = tempdirs.for_sockets("run", ssh.CONTROL_ROOM)
                self._setup = ssh.prepare(self.hive, directory, control=True)
            return self._setup

    def __getitem__(self, name: str) -> Remote:
        setup = self.setup
        with self._lock:
            if name not in self._remotes:
                self._remotes[name] = Remote(setup, name, hub=name in self.hubs, hive=self.hive)
            return self._remotes[name]

    def probe_all(self, wanted: dict[str, frozenset[str]], *, keep: Iterable[str] = (), width: int | None = None,
                  timeout: float | None = None) -> dict[str, Probe]:
        """Probe many hosts at once (host -> the paths to ask about), `width` at a time (-j
        by default), each within `timeout`; the hosts of `keep` keep their connection (see
        `Remote.probe`)."""
        kept = frozenset(keep)

        def ask(name: str) -> Probe:
            down = self.hop_down(name)
            if down is not None:  # asked through it, it would only wait out the connect timeout
                return Probe(reachable=False, asked=wanted[name], reason=down)
            return self[name].probe(wanted[name], keep=name in kept, timeout=timeout)

        found = self.each(list(wanted), ask, width=width)
        # a host whose sshd took too long to answer, or dropped the connection before its
        # banner, while many logins were under way (1,000 hosts asked 32 at once on a loaded
        # machine: 23 of them, behind one relay) is asked once more, a few at a time, before it
        # counts as unreachable; a host that refused, or whose address or key is wrong, is not,
        # nor any host when no more than that few were asked at once (a host behind a jump host
        # that does not answer is down or cut off: asking again would double the wait)
        wide = min(width or self.jobs, len(wanted)) > RETRY_WIDTH
        again = [n for n, p in found.items() if wide and not p.reachable and overloaded(p.reason)]
        for name in again:
            self[name].forget()
        if again:
            found |= self.each(again, ask, width=RETRY_WIDTH)
        return found

    def hop_down(self, name: str) -> str | None:
        """Why `name` cannot be reached, when a jump host it goes through was asked and could
        not be reached (the one nearest to this machine, which the others are reached through)."""
        for hop in reversed(ssh.jump_chain(self.hive, name)):
            with self._lock:
                remote = self._remotes.get(hop)
            known = remote.known if remote is not None else None
            if known is not None and not known.reachable:
                return hop_unreachable(hop, known.reason)
        return None

    def facts_all(self, wanted: Mapping[str, Sequence[str]], *, timeout: float,
                  width: int | None = None) -> dict[str, Facts]:
        """`Remote.facts` of many hosts at once (host -> the paths to ask about)."""
        return self.each(list(wanted), lambda n: self[n].facts(wanted[n], timeout=timeout), width=width)

    def each(self, names: Sequence[str], ask: Callable[[str], T], *, width: int | None = None) -> dict[str, T]:
        """`ask` each host of `names`, `width` at a time (-j by default). Jump hosts and relays
        first: their shared connection is then up before the hosts behind them are asked
        through it (instead of each racing to open its own)."""
        first = [n for n in names if n in self.hubs]
        then = [n for n in names if n not in self.hubs]
        # the jump hosts and relays the others go through that are not asked themselves (`run
        # 'h*'` behind relays): their shared connection opened first all the same, the nearest
        # to this machine first, else each host behind them logs in to them on its own
        hops = {h for n in then for h in ssh.jump_chain(self.hive, n) if h in self.hubs} - set(first)
        depth = {h: len(ssh.jump_chain(self.hive, h)) for h in hops}
        found: dict[str, T] = {}
        with ThreadPoolExecutor(max_workers=max(1, min(width or self.jobs, len(names)))) as pool:
            bound = 2 * ssh.connect_timeout() + 5
            for level in sorted(set(depth.values())):
                list(pool.map(lambda h: self[h].probe((), keep=True, timeout=bound),
                              sorted(h for h in hops if depth[h] == level)))
            for stage in (first, then):
                for name, answer in zip(stage, pool.map(ask, stage), strict=True):
                    found[name] = answer
        return found

    def close(self) -> None:
        """Close every shared connection still open (in parallel: each is local and quick),
        one `ssh -O exit` per socket left in the control directory (hosts released before have
        none), and remove the generated files."""
        with self._lock:
            setup, self._setup = self._setup, None
            self._remotes = {}
        if setup is None:
            return
        sockets = sorted(setup.control_dir.iterdir()) if setup.control_dir is not None and \
            setup.control_dir.is_dir() else []
        if sockets:
            with ThreadPoolExecutor(max_workers=max(16, self.jobs)) as pool:
                list(pool.map(lambda s: process.run(close_argv(s), check=False, timeout=10), sockets))
        shutil.rmtree(setup.directory, ignore_errors=True)

    def __enter__(self) -> Remotes:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def close_argv(socket: Path) -> list[str]:
    """Close the shared connection whose control socket is `socket` (whichever host it is)."""
    return ["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket}", "-O", "exit", "--", "shared"]


def interactive_argv(setup: ssh.SshSetup, tool: str, args: Sequence[str]) -> list[str]:
    """`ssh` or `scp` at the user's terminal with the generated configuration."""
    return [tool, "-F", str(setup.config), *args]
