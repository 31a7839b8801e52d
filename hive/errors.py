"""The one exception tree of nix-hive.

Every error a user can cause or meet derives from `HiveError`; the CLI prints its text as a
single `error: ...` line and exits with `exit_code`, re-raising only under `--debug`.
"""

from __future__ import annotations


class HiveError(Exception):
    """Root of every error nix-hive reports to its user."""

    exit_code = 1

    def __str__(self) -> str:
        return " ".join(str(a) for a in self.args)


class InputError(HiveError):
    """Bad input (deployment file, pattern, option): nothing was started; exit status 2."""

    exit_code = 2


class DeploymentError(InputError):
    """The deployment file cannot be read, evaluated or validated.

    Its text names the file and, where one is known, the attribute at fault.
    """

    def __init__(self, file: str, message: str, attribute: str | None = None) -> None:
        self.file = file
        self.attribute = attribute
        self.message = message
        where = f"{file}: {attribute}" if attribute else file
        super().__init__(f"{where}: {message}")


class SelectionError(InputError):
    """A pattern matched no instance, system or tag."""


class ProcessError(HiveError):
    """A nix or ssh command exited non-zero (or could not be started)."""

    def __init__(self, argv: list[str], exit_code: int | None, stderr: str) -> None:
        self.argv = argv
        self.returncode = exit_code
        self.stderr = stderr
        last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        status = "could not start" if exit_code is None else f"exited {exit_code}"
        super().__init__(f"{argv[0]} {status}: {last.strip()}" if last else f"{argv[0]} {status}")


class StepError(HiveError):
    """One step (build, push, activate) failed for one system or instance."""
