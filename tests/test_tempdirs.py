"""Temporary directories of runs killed with `kill -9` are removed by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hive import tempdirs


def test_a_killed_runs_directory_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from hive import tempdirs; "
            "print(tempdirs.make('run', Path(sys.argv[1])), flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    left = Path(proc.stdout.readline().strip())
    (left / "c").mkdir()  # sockets of shared connections live there
    mine = tempdirs.make("run", tmp_path)
    foreign = tmp_path / "nix-hive-run-by-an-old-version"  # no owner recorded: not ours to judge
    foreign.mkdir()
    assert tempdirs.sweep(tmp_path) == []  # its owner is alive
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()  # waits, and closes the stdout pipe
    assert tempdirs.sweep(tmp_path) == [left]
    assert not left.exists() and mine.exists() and foreign.exists()
    assert oct(mine.stat().st_mode & 0o777) == "0o700"
    with tempdirs.private("check") as private:
        assert private.parent == Path(os.environ.get("TMPDIR", "/tmp")) and private.is_dir()
    assert not private.exists()
