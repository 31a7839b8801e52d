"""The deployment as nix-hive understands it: frozen dataclasses, no behaviour but parsing."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hive.errors import InputError

if TYPE_CHECKING:
    from hive.elevate import Password


def frozen_map(d: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only mapping for frozen dataclasses."""
    return MappingProxyType(dict(d or {}))


class Step(enum.Enum):
    """The steps of a deployment, in order. `--no` names the ones that may be skipped."""

    BUILD = "build"
    PUSH = "push"
    ACTIVATE = "activate"

    @classmethod
    def parse_list(cls, text: str | None) -> frozenset[Step]:
        """Parse `--no build,push`; an unknown step is bad input."""
        steps: set[Step] = set()
        for word in (text or "").replace(" ", ",").split(","):
            if not word:
                continue
            try:
                steps.add(cls(word))
            except ValueError:
                names = ", ".join(s.value for s in cls)
                raise InputError(f"--no: unknown step {word!r} (steps: {names})") from None
        return frozenset(steps)


class Goal(enum.Enum):
    """What activation does (switch-to-configuration's action)."""

    SWITCH = "switch"  # make it the boot default and run it now
    BOOT = "boot"  # make it the boot default only
    TEST = "test"  # run it now, leave the boot default alone
    DRY_ACTIVATE = "dry-activate"  # show what switching would do

    @property
    def sets_profile(self) -> bool:
        """Whether the system profile (the next boot's system) is pointed at the path."""
        return self in (Goal.SWITCH, Goal.BOOT)

    def reached(self, path: str, current: str | None, profile: str | None) -> bool:
        """Whether a host with this running system and profile already is where the goal
        would take it (`--no activate`). A dry activation is never done."""
        if self is Goal.SWITCH:
            return current == path and profile == path
        if self is Goal.BOOT:
            return profile == path
        if self is Goal.TEST:
            return current == path
        return False


@dataclass(frozen=True)
class System:
    """A NixOS configuration, built once whatever the number of its instances."""

    name: str
    paths: Mapping[str, str]  # effective NIX_PATH entries: the hive's, overridden by the system's
    platform: str | None = None
    tags: tuple[str, ...] = ()
    build_host: str | None = None  # the ssh host that builds it (buildHost, --build-host); None: this machine
    nixpkgs: str | None = None  # the nixpkgs it is built with (a flake input's path), instead of `paths`
    # NIX_PATH entries a command that builds nothing left unevaluated (a `fetchTarball` needs
    # the network): name -> the attribute that defines it (`paths.nixpkgs`); not in `paths`
    unevaluated: Mapping[str, str] = field(default_factory=frozen_map)

    @property
    def build_store(self) -> str | None:
        """The Nix store its closure is built in and copied from, when not the local one."""
        return f"ssh-ng://{self.build_host}" if self.build_host else None

    def build_key(self) -> tuple[tuple[str, str], ...]:
        """Systems with equal keys are built by one `nix build` call."""
        # unevaluated entries: equal when defined by the same attribute (the deployment's `paths`)
        return (*tuple(sorted(self.paths.items())),
                *tuple(sorted(("\x00unevaluated " + k, v) for k, v in self.unevaluated.items())),
                ("\x00platform", self.platform or ""),
                ("\x00host", self.build_host or ""), ("\x00nixpkgs", self.nixpkgs or ""))


@dataclass(frozen=True)
class Check:
    """A health check, run after activation (goals switch and test): a command on the host
    (exit 0 is healthy) or an http:// URL fetched through the host's ssh connection."""

    name: str
    command: str | None = None
    http: str | None = None
    timeout: int = 10  # seconds per try
    retries: int = 5  # tries after the first that failed
    interval: int = 2  # seconds between tries
    status: tuple[int, ...] = ()  # healthy HTTP statuses (default: any 2xx)

    def healthy_status(self, code: int) -> bool:
        return code in self.status if self.status else 200 <= code < 300


# A password manager waiting for a touch, or a vault server that never answers, must not hold
# the deployment (or `upload-keys`) for ever: past this, a keyCommand is killed and its key fails.
DEFAULT_KEY_COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class Key:
    """A secret to upload to hosts, never through the Nix store. Exactly one source: a file
    read at upload time, text, or a command run on the deployer. Its content is never kept in
    the model, shown, logged or written anywhere but on the host."""

    name: str
    destination: str
    key_file: Path | None = None
    text: str | None = field(default=None, repr=False)
    command: tuple[str, ...] = ()
    user: str = "root"
    group: str = "root"
    permissions: str = "0600"
    upload_at: str = "pre-activation"  # or "post-activation"
    command_timeout: int = DEFAULT_KEY_COMMAND_TIMEOUT  # seconds its keyCommand may run (keyCommandTimeout)

    @property
    def source(self) -> str:
        return "keyFile" if self.key_file is not None else "keyCommand" if self.command else "text"

    @property
    def post_activation(self) -> bool:
        return self.upload_at == "post-activation"

    def describe(self) -> dict[str, object]:
        """What `plan` and `build` show of a key: never its content."""
        return {"destination": self.destination, "user": self.user, "group": self.group,
                "permissions": self.permissions, "uploadAt": self.upload_at, "source": self.source}


DEFAULT_ACTIVATION_TIMEOUT = 600
DEFAULT_CONFIRM_TIMEOUT = 30
# A host that reboots (`deploy --reboot`, `nix-hive reboot`) has that long to answer ssh again
# and finish booting: firmware and a server's controllers take minutes.
DEFAULT_REBOOT_TIMEOUT = 600


@dataclass(frozen=True)
class Instance:
    """A host that runs one system."""

    name: str
    system: str
    store: str | None = None  # relay store the instance substitutes from (a Nix store URL)
    tags: tuple[str, ...] = ()
    ssh: Mapping[str, str] = field(default_factory=frozen_map)
    host_key: str | None = None  # pinned public host key ("ssh-ed25519 AAAA...")
    checks: tuple[Check, ...] = ()  # its system's, with its own added or replacing them by name
    activation_timeout: int = DEFAULT_ACTIVATION_TIMEOUT  # seconds (instance, system, deployment)
    confirm_timeout: int = DEFAULT_CONFIRM_TIMEOUT  # seconds the host waits for confirmation
    reboot_timeout: int = DEFAULT_REBOOT_TIMEOUT  # seconds a reboot may take, to ssh and a finished boot
    keys: tuple[str, ...] = ()  # names of the hive's keys it gets: its system's, then its own
    elevate: str = "sudo"  # how a non-root ssh user becomes root: sudo, run0, none (hive/elevate.py)

    @property
    def address(self) -> str:
        """Where ssh connects: the Hostname option, or the instance name itself."""
        return self.ssh.get("Hostname", self.name)

    @property
    def url(self) -> str:
        """The instance's own store, reached over ssh with the generated configuration."""
        return f"ssh://{self.name}"


@dataclass(frozen=True)
class Hive:
    """An evaluated and validated deployment file."""

    file: Path  # absolute path of the deployment file
    shown: str  # the file as the user named it, for messages
    paths: Mapping[str, str]
    systems: Mapping[str, System]
    instances: Mapping[str, Instance]
    signing_key: Path | None = None
    keys: Mapping[str, Key] = field(default_factory=dict)
    uploads: Mapping[str, str] = field(default_factory=dict)  # relay store URL -> where nix-hive writes to it
    flake: str | None = None  # the flake reference, when the deployment is a flake's output
    attr: str = ""  # that output's attribute path (nixHive)
    flake_inputs: Mapping[str, Any] | None = None  # its source and locked inputs (nix flake metadata)
    # --ask-sudo-password: the run's sudo password (hive/elevate.py), for every host; never shown
    sudo_password: Password | None = field(default=None, repr=False, compare=False)
    unevaluated: Mapping[str, str] = field(default_factory=frozen_map)  # `paths` entries left unevaluated, as System's

    @property
    def directory(self) -> Path:
        return self.file.parent
