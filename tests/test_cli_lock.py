"""Two `fastalign run --out X` at once: the second fails at once, naming the lock and the PID that
holds it; the lock dies with its process (issue 14, problem 8)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastalign.io.lock import LOCK_NAME, FolderLocked, hold_folder_lock

ROOT = Path(__file__).resolve().parent.parent


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _wait_for_holder(lock: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not (lock.is_file() and lock.read_text().split()[:1] == [str(proc.pid)]):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.2)


def test_a_second_run_on_the_same_folder_fails_at_once_and_a_killed_run_frees_it(tmp_path):
    """Before: both runs wrote the same stage folders at once."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fastalign", "run", "--out", str(out), "--preset", "quick"],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_holder(out / LOCK_NAME, first)
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "fastalign", "run", "--out", str(out), "--preset", "quick"],
                                env=_env(), capture_output=True, text=True, timeout=300)
        refused_after = time.monotonic() - started
        assert first.poll() is None  # still running: the refusal was not a wait for it to finish
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    err = second.stderr
    assert second.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"fastalign run: error: {out} is in use by fastalign run (PID {first.pid}), which holds the lock "
        f"{out / LOCK_NAME}; wait for it to end, or choose another output folder")
    assert second.stdout == ""
    # The refused run did no work: its time is the interpreter and torch import (seconds), not a stage.
    assert refused_after < 120
    # kill -9 left the lock file but no holder: the next run takes the lock.
    with hold_folder_lock(out, "test") as folder:
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()} test\n"


def test_the_lock_is_exclusive_in_one_process_too_and_released_on_exit(tmp_path):
    with hold_folder_lock(tmp_path / "a", "fastalign run"):
        with pytest.raises(FolderLocked, match=rf"in use by fastalign run \(PID {os.getpid()}\), which holds the lock"):
            with hold_folder_lock(tmp_path / "a"):
                pass
        (tmp_path / "a" / "work.txt").write_text("x")
    with hold_folder_lock(tmp_path / "a"):  # released at the end of the with
        pass
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["work.txt"]  # the lock file went with the lock


def test_a_folder_the_lock_created_and_nothing_used_is_removed(tmp_path):
    with pytest.raises(ValueError):
        with hold_folder_lock(tmp_path / "new"):
            raise ValueError("bad input found before any write")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with hold_folder_lock(tmp_path / "old"):
        pass
    assert (tmp_path / "old").is_dir()  # the user's own folder stays, even empty


_CONTEND = r"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)  # the module alone: no torch import, so the processes start together
folder, log, held = sys.argv[2], sys.argv[3], 0
deadline = time.monotonic() + 60
while held < 100 and time.monotonic() < deadline:
    try:
        with lock.hold_folder_lock(folder, "contender"):
            with open(log, "a") as fh:
                fh.write("in\n")
                fh.flush()
                fh.write("out\n")
            held += 1
    except lock.FolderLocked:
        pass
print(held)
"""


def test_contending_processes_never_hold_the_lock_together(tmp_path):
    """Release unlinks the lock file (and the folder it created) while a contender may have it open or
    be creating it: each must still hold alone, and none may fail (CI run 19 saw mkdir fail so)."""
    module = ROOT / "fastalign" / "io" / "lock.py"
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _CONTEND, str(module), str(tmp_path / "shared"), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(8)]
    held = [int(p.communicate(timeout=120)[0]) for p in procs]
    lines = log.read_text().splitlines()
    assert sum(held) == len(lines) // 2 and all(h == 100 for h in held)
    assert lines == ["in", "out"] * sum(held)  # never two "in" in a row: one holder at a time
    shared = tmp_path / "shared"
    assert not shared.exists() or not any(shared.iterdir())  # each release took its lock file away


def test_the_folder_may_be_a_link_to_one_but_not_a_file(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with hold_folder_lock(tmp_path / "link") as folder:
        assert (tmp_path / "real" / LOCK_NAME).is_file() and folder == tmp_path / "link"
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for bad, kind in (("file", "not a folder"), ("dangling", "a link to nowhere")):
        with pytest.raises(FileExistsError, match=f"{bad} exists and is {kind}"):
            with hold_folder_lock(tmp_path / bad):
                pass
    assert (tmp_path / "file").read_text() == "x"


def test_run_out_on_a_file_is_a_clear_error(tmp_path, capsys):
    """Before: `fastalign run --out FILE` ended with '[Errno 17] File exists'."""
    from fastalign.cli.main import main

    (tmp_path / "afile").write_text("x")
    assert main(["run", "--out", str(tmp_path / "afile"), "--preset", "quick"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fastalign run: error: {tmp_path / 'afile'} exists and is not a folder; choose another output folder")
    assert (tmp_path / "afile").read_text() == "x"
