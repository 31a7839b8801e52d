"""hive/units.py: dry-activate's output read as NixOS prints it (switch-to-configuration's
Perl script and switch-to-configuration-ng), and the changes called out."""

from __future__ import annotations

from hive.changes import FleetDiff, GroupDiff
from hive.diff import Group, diff_closures
from hive.preview import BOLD, RED, DryResult, Preview, tables
from hive.units import Change, DryRun, fleet_wide, parse

PERL = """\
would stop the following units: nginx.service, old.service, sshd.service
would NOT stop the following changed units: postgresql.service
would activate the configuration...
setting up /etc...
would restart systemd
would restart the following units: nix-daemon.service
would start the following units: nginx.service, sshd.service, new.service
would reload the following units: dbus.service
"""

NG = """\
would stop the following units: old.service
would activate the configuration...
would reload the following units: dbus.service
would restart the following units: nginx.service
would start the following units: new.service
"""


def test_every_kind_of_line_is_read_whatever_the_order() -> None:
    dry = parse(PERL)
    assert dry.systemd_restarts
    assert dry.of(Change.RESTART) == ["nginx.service", "nix-daemon.service", "sshd.service"]  # stop + start: restart
    assert dry.of(Change.STOP) == ["old.service"]
    assert dry.of(Change.START) == ["new.service"]
    assert dry.of(Change.RELOAD) == ["dbus.service"]
    assert dry.of(Change.SKIP) == ["postgresql.service"]
    ng = parse(NG)
    assert not ng.systemd_restarts
    assert (ng.of(Change.STOP), ng.of(Change.RESTART), ng.of(Change.START), ng.of(Change.RELOAD)) == (
        ["old.service"], ["nginx.service"], ["new.service"], ["dbus.service"])


def test_nothing_to_do_is_an_empty_answer() -> None:
    assert parse("would activate the configuration...\n") == DryRun()
    assert parse("") == DryRun()


def test_a_dry_run_in_one_line_and_as_json() -> None:
    """What `deploy --goal dry-activate`'s summary says of a host (and its --json)."""
    assert parse(PERL).describe() == (
        "would restart systemd; stop old.service; restart nginx.service, nix-daemon.service (nix-daemon), "
        "sshd.service (ssh); reload dbus.service; start new.service; leave running, changed: postgresql.service")
    assert parse(NG).describe() == ("would stop old.service; restart nginx.service; reload dbus.service; "
                                    "start new.service")
    assert parse("would activate the configuration...\n").describe() == "would change no unit"
    assert parse(NG).as_json() == {"units": {"stop": ["old.service"], "restart": ["nginx.service"],
                                             "reload": ["dbus.service"], "start": ["new.service"],
                                             "changed, not restarted": []}, "systemdRestarts": False}


def test_changes_that_can_cut_a_host_off_come_first() -> None:
    dry = parse(PERL)
    assert dry.dangers == ["systemd restarts", "nix-daemon.service restarts (nix-daemon)",
                           "sshd.service restarts (ssh)"]
    assert parse("would stop the following units: systemd-networkd.service\n").dangers == [
        "systemd-networkd.service stops (network)"]
    # started or reloaded, sshd endangers nothing
    assert parse("would start the following units: sshd.service\n").dangers == []
    assert parse("would reload the following units: wpa_supplicant-wlan0.service\n").dangers == []
    assert parse("would restart the following units: wpa_supplicant-wlan0.service\n").dangers == [
        "wpa_supplicant-wlan0.service restarts (network)"]


def test_fleet_wide_counts_each_unit_once_with_its_hosts() -> None:
    web, db = parse(PERL), parse(NG)
    rows = fleet_wide([(web, 120), (db, 3)])
    by = {(r.unit, r.change): r for r in rows}
    assert by["nginx.service", Change.RESTART].hosts == 123
    assert by["sshd.service", Change.RESTART].hosts == 120
    assert by["dbus.service", Change.RELOAD].hosts == 123
    assert [r.unit for r in rows[:2]] == ["nix-daemon.service", "sshd.service"]  # dangerous first
    assert all(r.danger is None for r in rows[2:])


def fleet_preview(colourful_dry: DryRun, needs: tuple[str, ...] = ()) -> Preview:
    old, new = "/nix/store/" + "a" * 32 + "-nixos-system-web", "/nix/store/" + "b" * 32 + "-nixos-system-web"
    hosts = tuple(f"web-{n}" for n in range(1, 121))
    group = GroupDiff(Group(old, new, hosts, ("web",)), diff_closures({old: 10}, {new: 12}))
    found = FleetDiff((group,), (), ())
    return Preview(found, (DryResult("web-1", colourful_dry, needs),), {0: 30})


def test_the_dangerous_changes_are_marked_first_and_red_only_on_a_terminal() -> None:
    result = fleet_preview(parse(PERL), ("kernel",))
    plain = tables(result, 80, colour=False)
    assert "\x1b[" not in plain
    lines = plain.splitlines()
    units = lines.index("unit                  change                  hosts")
    assert lines[units + 2].startswith("! nix-daemon.service") and lines[units + 3].startswith("! sshd.service")
    # wrapped at 80 columns, indented
    sshd = "  ! sshd.service restarts (ssh) on web-1…web-120 (120 hosts): a host that loses"
    assert lines[lines.index(sshd) + 1] == "    ssh rolls back by itself after 30 s (magic rollback)"
    assert "  ! kernel changes on web-1…web-120 (120 hosts): the new one runs only after a" in lines
    assert all(len(ln) < 80 for ln in lines if not ln.startswith("  /nix/store"))
    assert lines[-1] == "120 host(s) change"
    red = tables(result, 80, colour=True)
    assert f"{BOLD}{RED}! sshd.service" in red and f"{BOLD}{RED}  ! sshd.service restarts" in red
    # with magic rollback off, the line says so
    off = Preview(result.found, result.dry, {})
    assert any(d.endswith(": magic rollback is off") for d in off.dangers())
