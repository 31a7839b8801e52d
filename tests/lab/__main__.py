"""The lab's command line:

    python -m tests.lab up --workdir DIR [--topology example|JSON|FILE] [--init plain|systemd]
    python -m tests.lab down --workdir DIR
    python -m tests.lab reboot|power-off|power-on [--hang] --workdir DIR HOST    (systemd hosts)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.lab import Lab
from tests.lab.topology import LabError, parse_topology


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.lab", description="nix-hive test lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a lab")
    up.add_argument("--workdir", type=Path, required=True)
    up.add_argument("--topology", default="example",
                    help="'example', a JSON object host -> [segments], or a JSON file")
    up.add_argument("--deployer-segment", default="pub")
    up.add_argument("--nix-conf", default="{}",
                    help="JSON object host -> extra nix.conf lines")
    up.add_argument("--init", choices=("plain", "systemd"), default="plain",
                    help="plain: the lab runs sshd and nix-daemon; systemd: hosts boot systemd")
    down = sub.add_parser("down", help="stop the lab recorded in WORKDIR/lab.json")
    down.add_argument("--workdir", type=Path, required=True)
    for cmd, what in (("reboot", "systemctl reboot inside HOST, wait until its sshd answers"),
                      ("power-off", "kill HOST's PID 1 (no clean shutdown)"),
                      ("power-on", "boot HOST, wait until its sshd answers (--hang: stuck at boot)")):
        p = sub.add_parser(cmd, help=what)
        p.add_argument("--workdir", type=Path, required=True)
        p.add_argument("host")
        if cmd == "power-on":
            p.add_argument("--hang", action="store_true")
    return ap


def up(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    lab = Lab.start(parse_topology(args.topology), args.workdir,
                    deployer_segment=args.deployer_segment, nix_conf=json.loads(args.nix_conf),
                    init=args.init)
    print(lab.summary())
    print(f"  up in {time.monotonic() - t0:.2f}s; stop with: python -m tests.lab down "
          f"--workdir {args.workdir}")


def down(args: argparse.Namespace) -> None:
    if not (args.workdir / "lab.json").exists():
        print(f"no lab in {args.workdir}")
        return
    t0 = time.monotonic()
    lab = Lab.load(args.workdir)
    lab.down()
    print(f"lab {lab.prefix} down in {time.monotonic() - t0:.2f}s")


def power(args: argparse.Namespace) -> None:
    lab = Lab.load(args.workdir)
    t0 = time.monotonic()
    if args.cmd == "reboot":
        lab.reboot(args.host)
    elif args.cmd == "power-off":
        lab.power_off(args.host)
    else:
        lab.power_on(args.host, hang=args.hang)
    print(f"{args.host}: {args.cmd} in {time.monotonic() - t0:.2f}s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        {"up": up, "down": down}.get(args.cmd, power)(args)
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
