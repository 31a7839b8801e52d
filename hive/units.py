"""What a switch would do to a host's units: `switch-to-configuration dry-activate`'s output,
read, and the changes that can cut a host off called out.

NixOS's switch-to-configuration (the Perl script, and switch-to-configuration-ng since 24.11)
prints on stderr, for `dry-activate`, one line per kind of change, each only when it has
units, in an order that changed between releases (so nothing here depends on it):

    would stop the following units: a.service, b.service
    would NOT stop the following changed units: c.service
    would activate the configuration...
    would restart systemd
    would restart the following units: d.service
    would start the following units: a.service, e.service
    would reload the following units: f.service

A unit stopped and started again (a changed unit, `stopIfChanged` by default) restarts; one
"NOT stopped" is changed but left running (`restartIfChanged = false`). Other lines (the
activation script's own, warnings) are kept as they are, unread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Change(Enum):
    """What happens to a unit, as a user asks it: the worst first."""

    STOP = "stop"
    RESTART = "restart"
    RELOAD = "reload"
    START = "start"
    SKIP = "changed, not restarted"


_LISTS = {"would stop the following units: ": "stop", "would NOT stop the following changed units: ": "skip",
          "would restart the following units: ": "restart", "would start the following units: ": "start",
          "would reload the following units: ": "reload"}
RESTARTS_SYSTEMD = "would restart systemd"

# Units whose stop or restart can cut a host off from nix-hive: ssh, the network, the daemon
# that receives closures. Names as NixOS's modules call them.
DANGEROUS = {
    "sshd.service": "ssh", "sshd.socket": "ssh",
    "systemd-networkd.service": "network", "systemd-networkd.socket": "network",
    "NetworkManager.service": "network", "dhcpcd.service": "network", "network-setup.service": "network",
    "systemd-resolved.service": "network", "firewall.service": "network", "nftables.service": "network",
    "nix-daemon.service": "nix-daemon", "nix-daemon.socket": "nix-daemon",
}
_DANGEROUS_PREFIXES = {"wpa_supplicant": "network", "network-addresses-": "network", "network-link-": "network",
                       "sshd@": "ssh"}


_VERBS = {Change.STOP: "stop", Change.RESTART: "restart", Change.RELOAD: "reload", Change.START: "start",
          Change.SKIP: "leave running, changed:"}


def danger(unit: str) -> str | None:
    """What a unit's stop or restart endangers ("ssh", "network", "nix-daemon"), or None."""
    if unit in DANGEROUS:
        return DANGEROUS[unit]
    return next((what for prefix, what in _DANGEROUS_PREFIXES.items() if unit.startswith(prefix)), None)


@dataclass(frozen=True)
class DryRun:
    """One dry activation's answer: each unit's change, and whether systemd itself restarts."""

    units: Mapping[str, Change] = field(default_factory=dict)
    systemd_restarts: bool = False

    def of(self, change: Change) -> list[str]:
        return sorted(u for u, c in self.units.items() if c is change)

    def as_json(self) -> dict[str, Any]:
        """Each change's units (every change named, empty lists included), and whether systemd
        itself restarts (`diff --json`'s dryRun, a dry-activate deploy's rows)."""
        return {"units": {c.value: self.of(c) for c in Change}, "systemdRestarts": self.systemd_restarts}

    def describe(self) -> str:
        """One line, the worst first: `would restart systemd; stop a.service; restart
        sshd.service (ssh), b.service; reload c.service`, or `would change no unit`."""
        parts = ["restart systemd"] if self.systemd_restarts else []
        for change in Change:
            names = [u + (f" ({what})" if change in (Change.STOP, Change.RESTART) and (what := danger(u)) else "")
                     for u in self.of(change)]
            if names:
                parts.append(f"{_VERBS[change]} {', '.join(names)}")
        return "would " + "; ".join(parts) if parts else "would change no unit"

    @property
    def dangers(self) -> list[str]:
        """The changes that can cut the host off, worst first: "systemd restarts",
        "sshd.service restarts (ssh)", …"""
        out = ["systemd restarts"] if self.systemd_restarts else []
        for change in (Change.STOP, Change.RESTART):
            out += [f"{u} {'stops' if change is Change.STOP else 'restarts'} ({what})"
                    for u in self.of(change) if (what := danger(u)) is not None]
        return out


def parse(output: str) -> DryRun:
    """`switch-to-configuration dry-activate`'s output (stderr, maybe mixed with stdout)."""
    lists: dict[str, set[str]] = {kind: set() for kind in _LISTS.values()}
    restarts_systemd = False
    for line in output.splitlines():
        line = line.strip()
        if line == RESTARTS_SYSTEMD:
            restarts_systemd = True
            continue
        for prefix, kind in _LISTS.items():
            if line.startswith(prefix):
                lists[kind] |= {u.strip() for u in line[len(prefix):].split(",") if u.strip()}
    units: dict[str, Change] = {}
    for unit in lists["start"]:
        units[unit] = Change.START
    for unit in lists["reload"]:
        units[unit] = Change.RELOAD
    for unit in lists["skip"]:
        units[unit] = Change.SKIP
    for unit in lists["stop"]:
        units[unit] = Change.RESTART if unit in lists["start"] else Change.STOP
    for unit in lists["restart"]:
        units[unit] = Change.RESTART
    return DryRun(units, restarts_systemd)


@dataclass(frozen=True)
class UnitCount:
    """A unit's change over the fleet: on how many hosts (the hosts of the groups whose dry
    run says so)."""

    unit: str
    change: Change
    hosts: int
    danger: str | None


def fleet_wide(groups: Iterable[tuple[DryRun, int]]) -> list[UnitCount]:
    """Each (unit, change) once, with the number of hosts it happens on, from each group's dry
    run and its number of hosts; the dangerous ones first, then by change and name."""
    counts: dict[tuple[str, Change], int] = {}
    for dry, hosts in groups:
        for unit, change in dry.units.items():
            counts[unit, change] = counts.get((unit, change), 0) + hosts
    order = list(Change)
    rows = [UnitCount(u, c, n, danger(u) if c in (Change.STOP, Change.RESTART) else None)
            for (u, c), n in counts.items()]
    return sorted(rows, key=lambda r: (r.danger is None, order.index(r.change), r.unit))
