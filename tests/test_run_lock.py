"""runfiles.lock_run_dir and train(): one writer per run directory (issue 16).

A real second process holds the lock (``start_holder``): while it lives, a second writer, in this
process or another, is refused with RunLocked naming its host, pid and start time, and a refused
train() touches nothing; once it is SIGKILLed, its lock is taken over and train(resume=True)
proceeds. Run directories live in ``tmp_path``.
"""

import errno
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from small_runs import small_run_config

import vae_utils.runfiles as R
import vae_utils.training as T
from vae_utils import sweep_engine, sweep_plan
from vae_utils.config import PROJECT_ROOT
from vae_utils.data import load_dataset
from vae_utils.runfiles import LOCK_FILE, RunLocked, existing_run_files, lock_run_dir
from vae_utils.training import train

N_TRAIN, N_TEST = 500, 200

HOLDER = """
import sys, time
from vae_utils.runfiles import lock_run_dir
lock = lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def make_config(run_dir, shared_data, **fields):
    sizes = {"hidden_dim": 20, "latent_dim": 2, "train_subset": N_TRAIN, "test_subset": N_TEST}
    return small_run_config(run_dir, shared_data, **{**sizes, **fields})


@pytest.fixture(scope="module")
def mnist_tiny(shared_data):
    return load_dataset("mnist", shared_data, train_subset=N_TRAIN, test_subset=N_TEST)


@pytest.fixture
def start_holder():
    """start_holder(run_dir): a Python process that locks run_dir and sleeps; killed at teardown."""
    procs = []

    def start(run_dir) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert line == "locked\n", f"the holder process did not take the lock: {line!r}"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


class Crash(Exception):
    """Stands for a crash in the middle of training."""


def files_snapshot(folder) -> dict:
    """Every file under ``folder`` (tb/'s event files too), by relative path: bytes and mtime."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_second_writer_is_refused_naming_the_holder(tmp_path, start_holder):
    """While another process holds the lock, lock_run_dir raises RunLocked at once, in this process
    and in a third one, with the holder's host, pid and start time as attributes and in the message
    (which names the run directory); the refusal leaves the holder's record intact."""
    run_dir = tmp_path / "run"
    before = datetime.now().astimezone() - timedelta(seconds=1)
    holder = start_holder(run_dir)

    with pytest.raises(RunLocked) as info:
        lock_run_dir(run_dir)
    refused = info.value
    assert (refused.host, refused.pid) == (socket.gethostname(), holder.pid)
    started = datetime.fromisoformat(refused.started)
    assert before <= started <= datetime.now().astimezone()
    message = str(refused)
    assert str(run_dir) in message
    assert f"process {holder.pid} on host {socket.gethostname()}, started {refused.started}" in message
    assert isinstance(refused, RuntimeError)

    third = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vae_utils.runfiles import lock_run_dir; lock_run_dir(sys.argv[1])",
        ]
        + [str(run_dir)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
    )
    assert third.returncode == 1
    assert f"RunLocked: run directory {run_dir} is in use by process {holder.pid}" in third.stderr

    record = json.loads((run_dir / LOCK_FILE).read_text())
    assert record == {"host": refused.host, "pid": holder.pid, "started": refused.started}
    assert holder.poll() is None  # still running, still the holder


def test_refused_train_touches_nothing(tmp_path, shared_data, mnist_tiny, start_holder):
    """train() with overwrite=True or resume=True while another process holds the run directory
    raises RunLocked naming it, before prepare_run_dir: no run file is deleted or rewritten."""
    config = make_config(tmp_path / "run", shared_data, epochs=1)
    train(config, progress=False, data=mnist_tiny)
    assert not (config.path / LOCK_FILE).exists()  # released (and deleted) at the end
    before = files_snapshot(config.path)

    holder = start_holder(config.path)
    for mode in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(RunLocked) as info:
            train(config, progress=False, data=mnist_tiny, **mode)
        assert info.value.pid == holder.pid and str(holder.pid) in str(info.value)
    after = files_snapshot(config.path)
    assert after.pop(LOCK_FILE)[0] != b""  # the holder's record
    assert after == before


def test_killed_holders_lock_is_taken_over_and_resume_proceeds(
    tmp_path, shared_data, mnist_tiny, start_holder, monkeypatch, capsys
):
    """A 2-epoch run crashes in epoch 2 (its lock is released on the way out); a process that then
    locks the folder is SIGKILLed, leaving its .lock and record behind. train(resume=True) takes
    the lock over, says whose it was, resumes after epoch 1 and finishes; its clean release leaves
    no .lock."""
    config = make_config(tmp_path / "run", shared_data, epochs=2)
    real_epoch, calls = T.train_epoch, []

    def crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Crash
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(T, "train_epoch", crash_in_epoch_2)
    with pytest.raises(Crash):
        train(config, progress=False, data=mnist_tiny)
    monkeypatch.undo()
    assert not (config.path / LOCK_FILE).exists()

    holder = start_holder(config.path)
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert json.loads((config.path / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind

    capsys.readouterr()
    run = train(config, resume=True, data=mnist_tiny)
    out = capsys.readouterr().out
    assert f"took over the lock of {config.path}: its holder, process {holder.pid} on host" in out
    assert "had died" in out and "after epoch 1" in out
    assert run.history["epoch"].tolist() == [1, 2]
    assert not (config.path / LOCK_FILE).exists()
    with lock_run_dir(config.path) as lock:
        assert lock.previous is None  # a clean release leaves no record to take over


def test_lock_is_held_while_training_and_survives_overwrite(tmp_path, shared_data, mnist_tiny, monkeypatch):
    """During train(overwrite=True) on an existing run, .lock exists and records this process
    (overwrite deletes the run files, not the lock), and it is not a run file."""
    config = make_config(tmp_path / "run", shared_data, epochs=1)
    train(config, progress=False, data=mnist_tiny)
    real_epoch, seen = T.train_epoch, []

    def observe(*args, **kwargs):
        seen.append(json.loads((config.path / LOCK_FILE).read_text())["pid"])
        assert LOCK_FILE not in existing_run_files(config)
        with pytest.raises(RunLocked):  # a second writer within this process is refused too
            lock_run_dir(config.path)
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(T, "train_epoch", observe)
    train(config, overwrite=True, progress=False, data=mnist_tiny)
    assert seen == [os.getpid()]
    assert not (config.path / LOCK_FILE).exists()


def test_lock_release_record_and_pickle_round_trip(tmp_path):
    """The lock file holds the holder's record while held and is gone after release (release
    twice is harmless); the directory is made if missing; RunLocked survives pickling (a Dask
    worker may send it back) with its attributes and message."""
    run_dir = tmp_path / "new" / "run"
    lock = lock_run_dir(run_dir)
    assert json.loads((run_dir / LOCK_FILE).read_text()) == lock.holder
    assert lock.holder["pid"] == os.getpid() and lock.previous is None
    with pytest.raises(RunLocked) as info:
        lock_run_dir(run_dir)
    lock.release()
    lock.release()
    assert list(run_dir.iterdir()) == []

    again = pickle.loads(pickle.dumps(info.value))
    assert (again.path, again.host, again.pid, again.started) == (
        run_dir,
        socket.gethostname(),
        os.getpid(),
        lock.holder["started"],
    )
    assert str(again) == str(info.value)

    unknown = RunLocked(run_dir, None, None, None)  # a holder between its lock and its record
    assert "another process" in str(unknown) and str(run_dir) in str(unknown)


def test_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    """Where flock is not supported (ENOLCK, e.g. some cluster mounts), lock_run_dir warns that no
    second writer would be refused and returns an unlocked lock, leaving no .lock."""

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(R.fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="no file locks"):
        lock = lock_run_dir(tmp_path / "run")
    assert lock.fd is None and not (tmp_path / "run" / LOCK_FILE).exists()
    lock.release()

    def other_error(fd, op):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(R.fcntl, "flock", other_error)
    with pytest.raises(OSError, match="Input/output"):
        lock_run_dir(tmp_path / "run")


def test_lock_file_deleted_between_open_and_flock_is_locked_again(tmp_path, monkeypatch):
    """A holder that releases (deleting .lock) between this process's open and its flock leaves it
    a lock on a deleted file, which excludes no one: lock_run_dir notices and locks the new file."""
    run_dir = tmp_path / "run"
    real_flock, calls = R.fcntl.flock, []

    def released_meanwhile(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            (run_dir / LOCK_FILE).unlink()
        real_flock(fd, op)

    monkeypatch.setattr(R.fcntl, "flock", released_meanwhile)
    with lock_run_dir(run_dir) as lock:
        assert len(calls) == 2
        assert os.path.samestat(os.fstat(lock.fd), os.stat(run_dir / LOCK_FILE))
        assert json.loads((run_dir / LOCK_FILE).read_text()) == lock.holder


# ----------------------------------------------------------------------------- sweeps


def test_sweep_rerun_does_not_start_a_second_writer_for_a_point_in_training(
    tmp_path, start_holder, monkeypatch
):
    """A sweep rerun reaching a point whose kernel (an orphan of a killed worker) still trains it
    reports the point failed, naming the holder, and starts no kernel and rewrites no file there."""
    from vae_utils.config import TrainConfig

    folder = tmp_path / "point"
    holder = start_holder(folder)
    (folder / "point.json").write_text('{"status": "running"}')
    before = files_snapshot(folder)
    started = []
    monkeypatch.setattr(sweep_engine, "run_notebook", lambda *args, **kwargs: started.append(args))
    result = sweep_engine.run_point("point", TrainConfig(run_dir=str(folder)).to_dict())
    assert started == [] and files_snapshot(folder) == before
    assert result["status"] == "failed" and result["error"].startswith("RunLocked: ")
    assert f"process {holder.pid} on host {socket.gethostname()}" in result["error"]
    holder.kill()
    holder.wait()
    assert sweep_engine.run_point("point", TrainConfig(run_dir=str(folder)).to_dict())["status"] == "done"
    assert len(started) == 1


def test_sweep_overwrite_deletes_no_point_that_is_being_trained(tmp_path, start_holder):
    plan = sweep_plan.plan_sweep({"latent_dim": [2, 3]}, "ow", sweeps_dir=tmp_path)
    folders = [plan.point_dir(point) for point in plan.points]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "history.csv").write_text("epoch\n")
    holder = start_holder(folders[1])
    with pytest.raises(
        sweep_plan.SweepError, match=rf"point {folders[1].name} is still being trained: .*{holder.pid}"
    ):
        sweep_plan.check_existing(plan, overwrite=True)
    assert all((folder / "history.csv").is_file() for folder in folders)  # nothing deleted
    assert not (folders[0] / LOCK_FILE).exists()  # the lock taken on the first point was let go
    holder.kill()
    holder.wait()
    sweep_plan.check_existing(plan, overwrite=True)
    assert not (plan.folder / "points").exists()
