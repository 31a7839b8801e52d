"""The `nix-hive` command: argparse, one function per subcommand, and `main()`.

Exit status: 0 all done; 1 some host or step failed (the rest was done); 2 bad input
(deployment file, pattern, option), nothing was started; 141 (128 + SIGPIPE, what the shell
shows for a tool killed by SIGPIPE) when the reader of its output went away
(`nix-hive list | head`), quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hive import (
    __version__,
    dot,
    fleet,
    live,
    nix,
    options,
    orchestrate,
    plan,
    preview,
    process,
    reboot,
    remote,
    ssh,
    state,
    tempdirs,
    text,
    timeline,
)
from hive import elevate as elevation
from hive.errors import BusyError, HiveError, InputError
from hive.evaluate import evaluate, locate
from hive.model import Goal, Hive, Step
from hive.options import Options
from hive.plan import Kind
from hive.report import (
    Fit,
    Progress,
    Row,
    dump_json,
    emit,
    fitting,
    instance_rows,
    inventory_json,
    plan_rows,
    summary_table,
    system_rows,
    table,
    with_whole,
)
from hive.resources import nix_file
from hive.select import Wave, flatten, select
from hive.session import Session


class Parser(argparse.ArgumentParser):
    """argparse, but bad options exit 2 with one `error:` line, like every other bad input."""

    def error(self, message: str) -> Any:
        raise InputError(f"{self.prog}: {message}")


def _load(args: argparse.Namespace, *, paths: bool = True) -> Hive:
    """The deployment; `paths=False` for commands that build nothing (issue 23: a
    `paths.nixpkgs = builtins.fetchTarball …` is then never fetched)."""
    with _kept():
        return evaluate(args.config, options.overrides(args.include),
                        options.build_host(getattr(args, "build_host", None)), paths=paths)


@contextlib.contextmanager
def _kept() -> Iterator[None]:
    """The deployment's model made with Python's cycle collector paused, then kept out of its
    passes (gc.freeze): the model lives as long as the command, and the collector's passes
    over a 5,000-instance model were a fifth of `plan`'s time (issue 29). Reference counting
    still frees what the evaluation drops (its JSON)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _session(args: argparse.Namespace, hive: Hive, waves: list[Wave], *, final: Kind = Kind.ACTIVATE,
             build_only: bool = False, progress: Progress | None = None, also_skip: Step | None = None,
             elevated: bool = False) -> Session:
    """The run's session; `progress`: the live view (`_evaluated`) or the line log, then
    entered by the caller around the run (`with session.progress:`), which ends it before the
    summary; without it, the line log. `also_skip`: a step skipped beyond `--no`'s (when done
    for the same inputs). `elevated`: `hive` is another session's, its elevation applied (the
    sudo password is asked once a command)."""
    given = _options(args, hive, len(flatten(waves)))
    if also_skip is not None:
        given = dataclasses.replace(given, skip=given.skip | {also_skip})
    if not elevated:
        hive = _elevated(args, hive)
    _sockets_fit()
    the_plan = plan.make_plan(hive, waves, goal=given.goal, skip=given.skip, final=final, build_only=build_only,
                              keys=getattr(args, "keys", True))
    return Session(hive, the_plan, given, progress or Progress(quiet=args.quiet))


def _evaluated(args: argparse.Namespace) -> tuple[Hive, Progress]:
    """The deployment of a run shown live (deploy, push, reboot), and the run's progress: on a
    terminal, the live view says what it waits for while the deployment is evaluated (seconds,
    for NixOS systems), then gives its line back to what follows (a password prompt, the run's
    frame, an error)."""
    progress = _progress(args)
    try:
        name = locate(args.config).shown
    except HiveError:
        name = args.config or "the deployment"  # _load says what is wrong with it
    with progress.waiting(f"evaluating {name}{text.MORE}"):
        return _load(args), progress


def _progress(args: argparse.Namespace) -> Progress:
    """The live view on a terminal (hive/live.py), else the line log: pipes, `-q`, `-v`,
    `--no-live`, CI."""
    if live.wanted(sys.stderr, quiet=args.quiet, verbose=getattr(args, "verbose", False),
                   off=getattr(args, "no_live", False)):
        return live.Live(sys.stderr)
    return Progress(quiet=args.quiet)


def _elevated(args: argparse.Namespace, hive: Hive) -> Hive:
    """`--elevate`, and the sudo password of `--ask-sudo-password` (asked now: every input was
    checked, nothing has run yet)."""
    return elevation.apply(hive, getattr(args, "elevate", None), getattr(args, "ask_sudo_password", False),
                         getattr(args, "sudo_password_file", None))


def _elevation_arguments(parser: argparse.ArgumentParser) -> None:
    """How commands that need root get it on hosts whose ssh user is not root (hive/elevate.py)."""
    parser.add_argument("--elevate", metavar="sudo|run0|none",
                        help="how a non-root ssh user runs nix-hive's commands as root, on every selected instance "
                             "(default: the deployment's elevate, else sudo: sudo -n, never prompting)")
    parser.add_argument("-S", "--ask-sudo-password", action="store_true",
                        help="ask the sudo password once, on the terminal without echo, and give it to sudo -S on "
                             "every host (never in an argv, a file or the output)")
    parser.add_argument("--sudo-password-file", metavar="FILE",
                        help="without a terminal: the sudo password is FILE's first line (FILE readable by you "
                             "alone); implies --ask-sudo-password")


def _sockets_fit() -> None:
    """Refuse now, before anything starts, when no temporary directory leaves room for the
    shared connections' sockets (tempdirs.socket_base; a long TMPDIR alone is not a reason)."""
    tempdirs.socket_base("run", ssh.CONTROL_ROOM)


def _persistent_ssh(args: argparse.Namespace, hive: Hive) -> ssh.SshSetup:
    """The generated ssh files beside the state file, where `ssh -F` can find them later; in
    a private temporary directory when that place is read-only (ssh and scp still work)."""
    try:
        path = options.state_file(args.state, hive)
    except InputError:
        if args.state:
            raise
        return ssh.prepare(hive, tempdirs.make("ssh"))
    return ssh.prepare(hive, state.ensure_private_dir(path) / "ssh")


def _options(args: argparse.Namespace, hive: Hive, selected: int) -> Options:
    return Options(skip=Step.parse_list(getattr(args, "no", None)), state_file=options.state_file(args.state, hive),
                   jobs=options.positive(str(getattr(args, "jobs", 1)), "-j/--jobs"),
                   push_jobs=_seconds(args, "push_jobs", "--push-jobs"),
                   goal=options.goal(getattr(args, "goal", "switch")),
                   keep_going=getattr(args, "keep_going", False),
                   max_failures=options.max_failures(getattr(args, "max_failures", None), selected),
                   rollback=getattr(args, "rollback", True),
                   activation_timeout=_seconds(args, "activation_timeout", "--activation-timeout"),
                   confirm_timeout=_seconds(args, "confirm_timeout", "--confirm-timeout"),
                   eval_jobs=_seconds(args, "eval_jobs", "--eval-jobs") or Options().eval_jobs,
                   reboot=options.reboot_mode(getattr(args, "reboot", None)),
                   reboot_timeout=_seconds(args, "reboot_timeout", "--reboot-timeout"),
                   skip_unreachable=getattr(args, "skip_unreachable", False),
                   rollback_on_failure=getattr(args, "rollback_on_failure", False),
                   ignore_inhibitors=getattr(args, "ignore_inhibitors", False),
                   **options.deadlines(vars(args)))


def _seconds(args: argparse.Namespace, name: str, option: str) -> int | None:
    """A whole number of at least 1 (seconds, jobs), when the option was given."""
    value = getattr(args, name, None)
    return options.positive(value, option) if value is not None else None


# Commands ------------------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    hive = _load(args)
    session = _session(args, hive, select(hive, args.patterns), build_only=True)
    with state.locked(session.state_file):
        code = orchestrate.build(session)
    setup = _persistent_ssh(args, hive)
    dump_json(inventory_json(hive, {i.name for i in session.plan.instances}, session.path_of,
                             setup.config.read_text()))
    return code


def cmd_plan(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    waves = select(hive, args.patterns)
    given = _options(args, hive, len(flatten(waves)))
    final = Kind.PUSH if args.push_only else Kind.ACTIVATE
    the_plan = plan.make_plan(hive, waves, goal=given.goal, skip=given.skip, final=final)
    if args.dot:
        if args.json:
            raise InputError("plan: --dot or --json, not both")
        emit(dot.render(the_plan, hive))
        return 0
    if args.json:
        dump_json(plan.as_json(the_plan, hive))
        return 0
    emit(table(plan_rows(the_plan), ["task", "waits for", "--no", "what"], width=_width(args),
               fit=(Fit.KEEP, Fit.CUT, Fit.KEEP, Fit.CUT)) + "\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    chosen = {i.name for i in flatten(select(hive, args.patterns))}
    if args.json:
        dump_json(inventory_json(hive, chosen))
        return 0
    width = _width(args)
    emit(table(instance_rows(hive, chosen), ["instance", "system", "store", "tags", "address"], width=width,
               fit=(Fit.KEEP, Fit.KEEP, Fit.KEEP, Fit.CUT, Fit.KEEP)) + "\n\n"
         + table(system_rows(hive, chosen), ["system", "instances", "tags", "paths"], width=width,
                 fit=(Fit.KEEP, Fit.KEEP, Fit.CUT, Fit.CUT)) + "\n")
    return 0


def cmd_deploy(args: argparse.Namespace, *, push_only: bool = False) -> int:
    hive, progress = _evaluated(args)
    waves = select(hive, args.patterns)
    report = Path(args.report) if args.report else None
    if report is not None and not options.writable(report):
        raise InputError(f"--report {args.report}: cannot write there")  # say so before starting
    svg = Path(args.timeline) if args.timeline else None
    if svg is not None and not options.writable(svg):
        raise InputError(f"--timeline {args.timeline}: cannot write there")
    ahead_wanted = getattr(args, "diff", False) or getattr(args, "confirm", False)
    if getattr(args, "confirm", False) and not args.yes and not sys.stdin.isatty():
        raise InputError("deploy --confirm asks on a terminal, and standard input is none: say --yes to deploy "
                         "without asking, or leave --confirm out")
    session = _session(args, hive, waves, final=Kind.PUSH if push_only else Kind.ACTIVATE, progress=progress)
    if session.options.reboot and session.options.goal is not Goal.SWITCH:
        raise InputError(f"--reboot boots each new system: it takes no --goal {session.options.goal.value}")
    with state.locked(session.state_file):
        ahead = None
        if ahead_wanted:
            # the diff's own lines and tables come first, the live view (not begun yet) after
            ask_first = getattr(args, "confirm", False) and not args.yes
            ahead = preview.ahead(_session(args, session.hive, waves, build_only=True, elevated=True),
                                  ask_first=ask_first, width=_width(args), show=not args.json)
            if ahead is None:
                return 1
            # what the diff built is recorded: the deploy takes it from there (`--no build`)
            session = _session(args, session.hive, waves, final=Kind.PUSH if push_only else Kind.ACTIVATE,
                               progress=progress, also_skip=Step.BUILD, elevated=True)
        with session.progress:
            code, rows = orchestrate.deploy(session)
    run = orchestrate.run_json(session)
    if ahead is not None:
        run["diff"] = ahead.as_json()
    return _show(args, rows, code, report, run, svg)


def _show(args: argparse.Namespace, rows: list[Row], code: int | None = None, report: Path | None = None,
          run: Mapping[str, Any] | None = None, svg: Path | None = None) -> int:
    """The summary of a command over instances: a table, or JSON (`--json`), and the same JSON
    in `--report FILE`; a deploy's also says when the run began, its waves, builds and relay
    stores (`run`), and is drawn as a timeline in `svg` (`--timeline`). Its exit status:
    `code`, else 1 unless every row is ok."""
    if code is None:
        code = 0 if all(r.result == "ok" for r in rows) else 1
    outcome = {"outcome": "ok" if code == 0 else "failed", "instances": [r.as_json() for r in rows], **(run or {})}
    if report is not None:
        _write_report(report, outcome)
    if svg is not None:
        timeline.write(timeline.parse(text.bounded(outcome), "the run"), svg)
    if args.json:
        dump_json(outcome, hosts=True)
    else:
        emit(summary_table(rows, _width(args)) + "\n")
    return code


def _width(args: argparse.Namespace) -> int | None:
    """The width a table fits: the terminal's, when stdout is one, unless `-v` (report.fitting)."""
    return fitting(sys.stdout, verbose=getattr(args, "verbose", False))


def _write_report(report: Path, outcome: dict[str, Any]) -> None:
    """`--report FILE`, whole or not at all: written beside it, then renamed over it (an
    interrupted write leaves the old report, or none, never half of one)."""
    tmp = report.with_name(f".{report.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            dump_json(outcome, fh, hosts=True)
        os.replace(tmp, report)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_push(args: argparse.Namespace) -> int:
    return cmd_deploy(args, push_only=True)


def cmd_report(args: argparse.Namespace) -> int:
    """Draw a run that `deploy --report FILE` recorded: its timeline as SVG."""
    svg = Path(args.svg)
    if not options.writable(svg):
        raise InputError(f"--svg {args.svg}: cannot write there")
    timeline.write(timeline.load(Path(args.file)), svg)
    return 0


# The dodo file `init` writes beside the deployment: doit's door into it (hive/dodo.py).
INIT_DODO = '''"""The doit tasks of the nix-hive deployment beside this file.

Run `doit list`, `doit deploy targets='portico,*'` or `doit deploy no=build`.
"""

from hive.dodo import *  # noqa: F403
'''


def cmd_init(args: argparse.Namespace) -> int:
    """Write a starting deployment (hive.nix, or flake.nix with --flake) and a dodo.py beside
    it (its doit tasks); never overwrite: an existing dodo.py is left as it is."""
    directory = Path(args.config or ".")
    if not directory.is_dir():
        raise InputError(f"nix-hive init: {directory} is not a directory")
    name = "flake.nix" if args.flake else "hive.nix"
    target = directory / name
    text = nix_file("init-flake.nix" if args.flake else "init-hive.nix").read_text()
    try:
        _write_new(target, text)
    except FileExistsError:
        raise InputError(f"nix-hive init: {target} already exists (init overwrites nothing)") from None
    dodo = directory / "dodo.py"
    try:
        _write_new(dodo, INIT_DODO)
        wrote = f"wrote {target} and {dodo} (for doit)"
    except FileExistsError:
        wrote = f"wrote {target} ({dodo} exists: left as it is)"
    print(f"{wrote}: edit {name}, then `nix-hive list{' -c ' + str(directory) if args.config else ''}`")
    if args.flake and _in_git_tree(directory):  # Nix reads a flake in a git tree as the files git tracks
        print(f"this is a git work tree: `git add {target}` (and every file it imports), or Nix will not see it")
    return 0


def _write_new(target: Path, text: str) -> None:
    """Write a file that does not exist yet (FileExistsError if it does)."""
    try:
        with target.open("x") as out:  # exclusive: an existing file is never replaced
            out.write(text)
    except FileExistsError:
        raise
    except OSError as exc:
        raise InputError(f"nix-hive init: cannot write {target}: {exc.strerror}") from None


def _in_git_tree(directory: Path) -> bool:
    return any((d / ".git").exists() for d in (directory.resolve(), *directory.resolve().parents))


def cmd_ssh_config(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    setup = _persistent_ssh(args, hive)
    emit(setup.config.read_text())
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    if args.instance not in hive.instances:
        raise InputError(f"{args.instance!r} is not an instance of {hive.shown}")
    setup = _persistent_ssh(args, hive)
    return process.interactive(remote.interactive_argv(setup, "ssh", [*args.ssh_args, "--", args.instance,
                                                                      *args.command]))


def cmd_scp(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    setup = _persistent_ssh(args, hive)
    return process.interactive(remote.interactive_argv(setup, "scp", args.scp_args))


def cmd_run(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    if not args.command:
        raise InputError("run: no command given (nix-hive run PATTERN... -- COMMAND...)")
    jobs = options.positive(str(args.jobs), "-j/--jobs")
    waves = select(hive, args.patterns)
    options.state_file(args.state, hive)
    _sockets_fit()
    failed = fleet.run_everywhere(hive, plan.make_plan(hive, waves), args.command, jobs=jobs)
    for name, why in failed:
        _say(f"failed: {name}: {text.line(why)}")
    return 1 if failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    jobs = options.positive(str(args.jobs), "-j/--jobs")
    _sockets_fit()
    rows = fleet.check(hive, plan.make_plan(hive, select(hive, args.patterns)), jobs=jobs)
    if args.json:
        dump_json(rows, hosts=True)
    else:
        shown = {True: "healthy", False: "FAILED", None: "-"}
        width = _width(args)
        emit(with_whole(table([(r["instance"], r["check"] or "-", shown[r["healthy"]], r["tries"],
                                f"{r['seconds']:.1f}", r["detail"]) for r in rows],
                              ["instance", "check", "result", "tries", "seconds", "detail"],
                              width=width, fit=(Fit.KEEP,) * 5 + (Fit.CUT,)),
                        [(r["instance"], r["detail"] if r["healthy"] is False else "") for r in rows], width,
                        "details") + "\n")
    return 1 if any(r["healthy"] is False for r in rows) else 0


def cmd_rollback(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    jobs = options.positive(str(args.jobs), "-j/--jobs")
    the_plan = plan.make_plan(hive, select(hive, args.patterns))
    _sockets_fit()
    return _show(args, fleet.rollback(_elevated(args, hive), the_plan, options.goal(args.goal), jobs=jobs,
                                      keep_going=args.keep_going))


def cmd_upload_keys(args: argparse.Namespace) -> int:
    hive = _load(args, paths=False)
    jobs = options.positive(str(args.jobs), "-j/--jobs")
    _sockets_fit()
    the_plan = plan.make_plan(hive, select(hive, args.patterns))
    return _show(args, fleet.upload_keys(_elevated(args, hive), the_plan, jobs=jobs))


def cmd_reboot(args: argparse.Namespace) -> int:
    hive, progress = _evaluated(args)
    report = Path(args.report) if args.report else None
    if report is not None and not options.writable(report):
        raise InputError(f"--report {args.report}: cannot write there")
    session = _session(args, hive, select(hive, args.patterns), build_only=True, progress=progress)
    with state.locked(session.state_file), session.progress:
        rows = reboot.reboot_all(session)
    return _show(args, rows, 0 if all(orchestrate.settled_well(session, r) for r in rows) else 1, report)


@contextlib.contextmanager
def _reading(session: Session) -> Iterator[None]:
    """The state file for a command that only reads hosts (`status`): held, as by any run;
    when another run holds it (a deploy under way), a private copy instead, thrown away after:
    `status` never waits for a deploy, and never writes what it built into that run's file."""
    try:
        held = state.Lock(session.state_file)
    except BusyError:
        with tempdirs.private("status") as directory:
            copy = directory / "state"
            if session.state_file.is_file():
                shutil.copyfile(session.state_file, copy)
            session.state_file, session.gcroots = copy, directory / "gcroots"
            yield
        return
    try:
        yield
    finally:
        held.release()


def cmd_publish(args: argparse.Namespace) -> int:
    """Pull mode (issue 32): build as deploy does, publish signed records to the cache, wave by
    wave, and wait for the hosts' reports (hive/publish.py). No ssh to any instance."""
    from hive import cachefiles, publish, pull  # urllib's import, for pull mode's commands alone
    hive = _load(args)
    base = cachefiles.base_url(args.to)
    if hive.signing_key is None:
        raise InputError(f"publish: pull mode needs signed paths: {hive.shown} has no signingKey (make one with "
                         "nix-store --generate-binary-cache-key; hosts trust its public half)")
    if Step.parse_list(args.no) - {Step.BUILD}:
        raise InputError("publish: --no takes build alone (publish pushes and activates nothing)")
    waves = select(hive, args.patterns)
    for instance in flatten(waves):
        pull.checks_lines(instance.checks)  # a check a record cannot hold is refused now
    wait_timeout = options.rate(args.wait_timeout, "--wait-timeout")
    poll = options.rate(args.poll, "--poll")
    session = _session(args, hive, waves, build_only=True)
    with state.locked(session.state_file):
        code, rows, run = publish.publish(session, base, wait=not args.no_wait, wait_timeout=wait_timeout, poll=poll)
    if args.json:
        dump_json({"outcome": "ok" if code == 0 else "failed", **run, "instances": [r.as_json() for r in rows]},
                  hosts=True)
    else:
        width = _width(args)
        emit(with_whole(table([(r.instance, r.wave, r.serial if r.serial is not None else "-", r.outcome, r.reason)
                               for r in rows], ["instance", "wave", "serial", "outcome", "reason"], width=width,
                              fit=(Fit.KEEP, Fit.KEEP, Fit.KEEP, Fit.KEEP, Fit.CUT)),
                        [(r.instance, r.reason) for r in rows], width) + "\n")
    return code


def cmd_status_from(args: argparse.Namespace) -> int:
    """`status --from C`: what the hosts of a pull deployment last reported to the cache (their
    status documents and pointers), no ssh, no build. Exit 1 when a host is stale."""
    from hive import cachefiles, publish  # urllib's import, for pull mode's commands alone
    hive = _load(args, paths=False)
    base = cachefiles.base_url(args.from_, "--from")
    stale = options.rate(args.stale, "--stale")
    names = [i.name for i in flatten(select(hive, args.patterns))]
    rows = publish.status_rows(publish.read_reports(base, names), stale)
    if args.json:
        dump_json({"from": base, "stale_after": stale, "instances": rows,
                   "stale": [r["instance"] for r in rows if r["stale"]]}, hosts=True)
    else:
        def serial(value: int | None) -> str:
            return "-" if value is None else str(value)

        # on a terminal, whether the host applied the newest record ("newest") before the
        # serials themselves, which give way first (-v or a pipe: every column whole)
        width = _width(args)
        emit(with_whole(table([(r["instance"], r["outcome"], publish.newest(r), publish.age(r["record_age"]),
                                publish.age(r["report_age"]), r["reason"] or "-", serial(r["applied_serial"]),
                                serial(r["published_serial"]), r["system"] or "-") for r in rows],
                              ["instance", "outcome", "newest", "record age", "report age", "reason", "applied",
                               "published", "running"], width=width,
                              fit=(Fit.KEEP,) * 5 + (Fit.CUT, Fit.DROP, Fit.DROP, Fit.PATH)),
                        [(r["instance"], r["reason"] or "") for r in rows], width) + "\n"
             + publish.stale_line(rows, stale) + "\n")
    return 1 if any(r["stale"] for r in rows) else 0


def cmd_status(args: argparse.Namespace) -> int:
    if getattr(args, "from_", None) is not None:
        return cmd_status_from(args)
    hive = _load(args)
    waves = select(hive, args.patterns)
    session = _session(args, hive, waves, build_only=True)
    with _reading(session):
        code, rows = orchestrate.status(session)
    if args.json:
        dump_json(rows, hosts=True)
    else:
        width = _width(args)
        states = [f"{r['state']}: {r['reason']}" if r["reason"] else r["state"] for r in rows]
        emit(with_whole(table([(r["instance"], r["system"], r["expected"] or "-", r["current"] or "-", s,
                                r.get("reboot", "-")) for r, s in zip(rows, states, strict=True)],
                              ["instance", "system", "expected path", "current path", "state", "reboot"],
                              width=width, fit=(Fit.KEEP, Fit.KEEP, Fit.PATH, Fit.PATH, Fit.CUT, Fit.KEEP)),
                        [(r["instance"], s) for r, s in zip(rows, states, strict=True)], width, "states") + "\n")
    return code


def cmd_diff(args: argparse.Namespace) -> int:
    hive = _load(args)
    session = _session(args, hive, select(hive, args.patterns), build_only=True)
    with _reading(session):
        code, found = preview.preview(session, dry_run=args.dry_run)
    if args.json:
        dump_json(found.as_json(), hosts=True)
    else:
        emit(preview.tables(found, _width(args), colour=preview.colours(sys.stdout)))
    return code


# Parser --------------------------------------------------------------------------------------

def _shared() -> tuple[Parser, Parser, Parser]:
    """The option groups commands share: every command's, `--no`, `-j`."""
    common = Parser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE|DIR",
                        help="deployment file, or a directory holding default.nix (default: ./hive.nix)")
    common.add_argument("-I", dest="include", action="append", metavar="NAME=PATH",
                        help="override a NIX_PATH entry of the deployment (e.g. -I nixpkgs=/src/nixpkgs)")
    common.add_argument("--state", metavar="FILE",
                        help="state file (default: .hive.state beside the deployment file)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--show-trace", action="store_true",
                        help="when a system's evaluation fails, print Nix's whole trace (passed to it)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    common.add_argument("-v", "--verbose", action="store_true", help="print every command as it starts")
    no = Parser(add_help=False)
    no.add_argument("--no", metavar="STEPS", default="",
                    help="skip steps already done for the same inputs: build,push,activate")
    no.add_argument("--eval-jobs", metavar="N",
                    help="systems evaluated at once (default: the number of cores; each NixOS evaluation takes "
                         "about a gigabyte)")
    no.add_argument("--build-host", metavar="HOST",
                    help="build every system on HOST (an instance or a host of your ssh configuration) instead "
                         "of the deployment's buildHost; copies then go from there")
    jobs = Parser(add_help=False)
    jobs.add_argument("-j", "--jobs", default=10, help="instances handled at once (default: 10)")
    return common, no, jobs


def _selection_commands(sub: Any, common: Parser, no: Parser, jobs: Parser) -> None:
    """The commands that take patterns: build, plan, list, deploy, push, status, diff."""
    goal = Parser(add_help=False)
    goal.add_argument("--goal", choices=[g.value for g in Goal], default="switch",
                      help="switch-to-configuration action (default: switch)")
    json_out = Parser(add_help=False)
    json_out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b = sub.add_parser("build", parents=[common, no], help="build the selected systems, print the inventory as JSON")
    b.set_defaults(func=cmd_build)
    pl = sub.add_parser("plan", parents=[common, no, goal, json_out],
                        help="print what a deployment would do, doing nothing")
    pl.add_argument("--push-only", action="store_true", help="the plan of `nix-hive push`")
    pl.add_argument("--dot", action="store_true",
                    help="print the plan as a Graphviz graph (deployer, build hosts, relay stores, the instances "
                         "behind them, by wave): nix-hive plan --dot | dot -Tsvg > plan.svg")
    pl.set_defaults(func=cmd_plan)
    ls = sub.add_parser("list", parents=[common, json_out], help="list instances and systems")
    ls.set_defaults(func=cmd_list)
    for name, func, helptext in (("deploy", cmd_deploy, "build, push and activate"),
                                 ("push", cmd_push, "build and push, no activation")):
        d = sub.add_parser(name, parents=[common, no, jobs, goal, json_out], help=helptext)
        d.add_argument("--report", metavar="FILE", help="also write the outcome as JSON to FILE")
        d.add_argument("--timeline", metavar="SVG",
                       help="also draw the run in SVG: a row per instance by wave, a bar per step (nix-hive report)")
        d.add_argument("--no-live", action="store_true",
                       help="progress lines, not the live view a terminal shows by default")
        _gate_arguments(d, "stop starting new work")
        d.add_argument("--push-jobs", metavar="N",
                       help="copies at once from each source: each relay store, each build host, this machine "
                            "(default: 10, what an sshd lets authenticate at once)")
        _skip_unreachable_argument(d)
        options.add_deadline_arguments(d)
        d.set_defaults(func=func)
    deploy = sub.choices["deploy"]
    deploy.add_argument("--no-rollback", dest="rollback", action="store_false",
                        help="leave a host whose activation or checks failed as it is (no automatic or magic rollback)")
    deploy.add_argument("--no-keys", dest="keys", action="store_false", help="upload no keys")
    deploy.add_argument("--rollback-on-failure", action="store_true",
                        help="all or nothing: when the run fails, put every instance it switched back on the system "
                             "it ran before, the last wave first")
    deploy.add_argument("--activation-timeout", metavar="SECONDS",
                        help="stop an activation running longer (default: the deployment's, else 600)")
    deploy.add_argument("--confirm-timeout", metavar="SECONDS",
                        help="a host rolls back by itself without confirmation within this (default: the deployment's, "
                             "else 30)")
    deploy.add_argument("--reboot", metavar="always|auto",
                        help="--reboot, or --reboot=auto: install each system for the next boot only, reboot, keep "
                             "it once it is back and healthy, else boot the last good one (auto: only the hosts "
                             "whose kernel, initrd or kernel parameters change, or whose switch inhibitors do; the "
                             "others switch)")
    deploy.add_argument("--diff", action="store_true",
                        help="first show what the deployment changes, grouped (as nix-hive diff), then deploy")
    deploy.add_argument("--confirm", action="store_true",
                        help="show what the deployment changes, then ask 'Deploy to N hosts? [y/N]' on the terminal")
    deploy.add_argument("--yes", action="store_true", help="with --confirm: deploy without asking")
    deploy.add_argument("--ignore-inhibitors", action="store_true",
                        help="switch a host even when a switch inhibitor of its system changed (NixOS's "
                             "NIXOS_NO_CHECK=1; by default such a host is not switched: boot it with --reboot)")
    deploy.add_argument("--reboot-timeout", metavar="SECONDS",
                        help="a rebooting host must answer ssh and finish booting within this (default: the "
                             "deployment's rebootTimeout, else 600)")
    s = sub.add_parser("status", parents=[common, no, jobs, json_out],
                       help="compare each host's system with the hive's")
    s.add_argument("--from", dest="from_", metavar="URL",
                   help="pull mode: read what the hosts reported to this cache (their status documents and "
                        "pointers) instead of asking them over ssh; builds nothing")
    s.add_argument("--stale", default="900", metavar="SECONDS",
                   help="with --from: a host whose last report is older than this is named stale (default: 900)")
    options.add_deadline_arguments(s, only="connect_timeout")
    s.set_defaults(func=cmd_status)
    pb = sub.add_parser("publish", parents=[common, no, json_out],
                        help="pull mode: build, then publish signed records to a binary cache for the hosts' "
                             "agents, wave by wave, and wait for their reports (no ssh to any host)")
    pb.add_argument("--to", required=True, metavar="URL",
                    help="the cache as hosts read it: http(s)://HOST[:PORT][/PATH] (accepting PUT) or file:///DIR")
    pb.add_argument("--no-wait", action="store_true",
                    help="write every wave's pointers at once, wait for no report")
    pb.add_argument("--wait-timeout", default="900", metavar="SECONDS",
                    help="how long each wave's hosts have to report (default: 900); one that does not counts "
                         "as failed (it keeps polling, and applies the record by itself)")
    pb.add_argument("--poll", default="5", metavar="SECONDS",
                    help="seconds between two reads of the hosts' status documents (default: 5)")
    _gate_arguments(pb, "publish no later wave")
    options.add_deadline_arguments(pb)
    pb.set_defaults(func=cmd_publish)
    df = sub.add_parser("diff", parents=[common, no, jobs, json_out],
                        help="what a deployment would change on each host, grouped: package versions, closure "
                             "size, bytes to fetch, units a switch restarts (a dry activation on one host of each "
                             "group), reboots, switch inhibitors")
    df.add_argument("--no-dry-run", dest="dry_run", action="store_false",
                    help="packages and sizes only: copy nothing to a host, run no dry activation")
    options.add_deadline_arguments(df)
    df.set_defaults(func=cmd_diff)
    for command in (b, pl, ls, s, df, pb, *(sub.choices[n] for n in ("deploy", "push"))):
        command.add_argument("patterns", nargs="*", metavar="PATTERN")
    _elevation_arguments(deploy)


def _gate_arguments(parser: argparse.ArgumentParser, stops: str) -> None:
    """The failure policy of a command that goes wave by wave (session.gate's rule)."""
    parser.add_argument("--keep-going", action="store_true", help="carry on with later waves after a failure")
    parser.add_argument("--max-failures", metavar="N|N%", help=f"{stops} after N failures")


def _skip_unreachable_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-unreachable", action="store_true",
                        help="an instance that does not answer when the run starts is skipped: it fails nothing, "
                             "its wave goes on (default: it fails, and its wave stops the later ones)")


def _ssh_commands(sub: Any, common: Parser, jobs: Parser) -> None:
    """ssh-config, ssh, scp and run: the generated ssh configuration at work."""
    sc = sub.add_parser("ssh-config", parents=[common], help="print the generated ssh configuration")
    sc.set_defaults(func=cmd_ssh_config)
    sh_ = sub.add_parser("ssh", parents=[common], help="ssh to an instance")
    sh_.add_argument("-o", dest="ssh_args", action="append", default=[], type=lambda v: f"-o{v}",
                     metavar="OPTION", help="extra ssh option")
    sh_.add_argument("instance")
    sh_.add_argument("command", nargs=argparse.REMAINDER)
    sh_.set_defaults(func=cmd_ssh)
    cp = sub.add_parser("scp", parents=[common], help="scp with instance names as hosts")
    cp.add_argument("scp_args", nargs=argparse.REMAINDER, metavar="ARGS")
    cp.set_defaults(func=cmd_scp)
    ck = sub.add_parser("check", parents=[common, jobs], help="run the selected instances' health checks alone")
    ck.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ck.add_argument("patterns", nargs="*", metavar="PATTERN")
    ck.set_defaults(func=cmd_check)
    uk = sub.add_parser("upload-keys", parents=[common, jobs], help="upload the selected instances' keys alone")
    uk.add_argument("--json", action="store_true", help="print JSON instead of a table")
    uk.add_argument("patterns", nargs="*", metavar="PATTERN")
    uk.set_defaults(func=cmd_upload_keys)
    rb = sub.add_parser("rollback", parents=[common, jobs],
                        help="switch the selected instances to the previous generation of their system profile")
    rb.add_argument("--goal", choices=[g.value for g in Goal], default="switch")
    rb.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rb.add_argument("--keep-going", action="store_true", help="carry on with later waves after a failure")
    rb.add_argument("patterns", nargs="*", metavar="PATTERN")
    rb.set_defaults(func=cmd_rollback)
    rbt = sub.add_parser("reboot", parents=[common, jobs],
                         help="reboot the selected instances into their default system, wave by wave, and check "
                              "them (a system booted once, kept when healthy: see deploy --reboot)")
    rbt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rbt.add_argument("--report", metavar="FILE", help="also write the outcome as JSON to FILE")
    rbt.add_argument("--no-live", action="store_true",
                     help="progress lines, not the live view a terminal shows by default")
    _gate_arguments(rbt, "stop starting new reboots")
    _skip_unreachable_argument(rbt)
    rbt.add_argument("--reboot-timeout", metavar="SECONDS",
                     help="a host must answer ssh and finish booting within this (default: the deployment's "
                          "rebootTimeout, else 600)")
    rbt.add_argument("patterns", nargs="*", metavar="PATTERN")
    rbt.set_defaults(func=cmd_reboot)
    for command in (uk, rb, rbt):
        _elevation_arguments(command)
    r = sub.add_parser("run", parents=[common, jobs], help="run a command on every selected instance")
    r.add_argument("patterns", nargs="+", metavar="PATTERN")
    for command in (ck, uk, rb, rbt, r):  # they log in to hosts (status too, above)
        options.add_deadline_arguments(command, only="connect_timeout")
    r.set_defaults(func=cmd_run)


def parser() -> Parser:
    common, no, jobs = _shared()
    p = Parser(prog="nix-hive", description="Build a few NixOS systems once, deploy them to many hosts.")
    p.add_argument("--version", action="version", version=f"nix-hive {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _selection_commands(sub, common, no, jobs)
    _ssh_commands(sub, common, jobs)
    init = sub.add_parser("init", help="write a starting deployment (hive.nix, or flake.nix) in the current directory")
    init.add_argument("-c", "--config", metavar="DIR", help="write it in DIR instead")
    init.add_argument("--flake", action="store_true", help="a flake.nix with the deployment as its nixHive output")
    init.add_argument("--debug", action="store_true", help="show tracebacks")
    init.set_defaults(func=cmd_init)
    rp = sub.add_parser("report", help="draw a run that deploy --report FILE recorded: its timeline as SVG")
    rp.add_argument("file", metavar="FILE.json", help="a report written by deploy --report")
    rp.add_argument("--svg", metavar="OUT.svg", required=True,
                    help="write the timeline there: a row per instance by wave, a bar per step coloured by outcome")
    rp.add_argument("--debug", action="store_true", help="show tracebacks")
    rp.set_defaults(func=cmd_report)
    return p


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_in
    try:
        try:
            return _main(args_in, debug)
        finally:
            sys.stdout.flush()  # here (after --help too), where a closed pipe is still ours to handle
    except BrokenPipeError:
        # The reader of the output went away (`nix-hive list | head -c 10`): stop, quietly, as a
        # tool killed by SIGPIPE would (its status as the shell shows it). Python's recipe:
        # stdout to /dev/null, or the interpreter's last flush would complain at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


BROKEN_PIPE = 141  # 128 + SIGPIPE


def _say(line: str) -> None:
    """An error line on stderr (made printable); nothing if stderr is a closed pipe too."""
    with contextlib.suppress(OSError, ValueError):
        print(text.block(line), file=sys.stderr, flush=True)


def _main(args_in: list[str], debug: bool) -> int:
    try:
        head, tail = _split_command(args_in) if args_in[:1] == ["run"] else (args_in, [])
        if head[:1] == ["deploy"]:  # `--reboot` alone means always (and takes no pattern for its value)
            head = ["--reboot=always" if a == "--reboot" else a for a in head]
        args = parser().parse_args(head)
        if args_in[:1] == ["run"]:
            args.command = tail
        process.set_verbose(sys.stderr if getattr(args, "verbose", False) else None)
        nix.set_show_trace(getattr(args, "show_trace", False))
        # --connect-timeout, for every command that takes it (a run's session sets it again)
        ssh.set_connect_timeout(options.deadlines({"connect_timeout": getattr(args, "connect_timeout", None)})
                                .get("connect_timeout"))
        return int(args.func(args))
    except HiveError as exc:
        if debug:
            raise
        _say(f"error: {exc}")
        return exc.exit_code
    except BrokenPipeError:
        raise  # our own output's reader went away: main() ends quietly
    except OSError as exc:  # a file nix-hive had to read or write
        if debug:
            raise
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt as exc:  # a second Ctrl-C during a run (orchestrate.Signals), or one before it
        for line in exc.lines() if isinstance(exc, orchestrate.Aborted) else []:
            _say(line)
        _say("error: interrupted")
        return 130


def entry() -> None:
    sys.exit(main())
