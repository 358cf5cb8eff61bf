"""Run directories: what a training run leaves on disk (config.json, history.csv, last.pt, best.pt,
lr_pilot.csv, tb/), each file written atomically; reading a run back; and one writer at a time
(:func:`lock_run_dir`). An existing run is never overwritten silently (:func:`prepare_run_dir`).
docs/package.md lists the files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

from vae_utils.config import TrainConfig, resolve_path
from vae_utils.model import VAE

HISTORY_COLUMNS = (
    "epoch",  # 1-based
    "samples",  # training datapoints evaluated so far (Figure 2's x-axis; MCEM's HMC included)
    "seconds",  # wall-clock seconds of training and evaluation so far
    "train_elbo",
    "train_recon",
    "train_kl",  # evaluated on <= 10,000 training images
    "test_elbo",
    "test_recon",
    "test_kl",  # evaluated on the test set
    "minibatch_elbo",  # mean of the minibatch estimates since the last row (the training objective)
    "test_log_px",  # importance-weighted test log p(x) with config.eval_iw_samples samples (else NaN)
    "train_log_px_hmc",  # log p(x) by App. D's estimator on config.eval_marginal training images (else NaN)
    "test_log_px_hmc",  # the same on as many test images (Figure 3)
    "train_log_px_hmc_is",  # importance sampling from a Student-t fitted to the same HMC draws (else NaN)
    "test_log_px_hmc_is",  # the same on the test images: with *_hmc, it brackets log p(x)
)
TB_DIR = "tb"  # a folder: the TensorBoard event files
LIKELIHOOD_CACHE = "likelihood_cache.json"  # log p(x) estimates of the run's model (analysis.py)
RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt", "lr_pilot.csv", TB_DIR, LIKELIHOOD_CACHE)
LOCK_FILE = ".lock"  # not a run file: prepare_run_dir's overwrite leaves it to its holder


@dataclass
class Run:
    """A trained run, as :func:`vae_utils.training.train` returns it and :func:`load_run` reads it."""

    config: TrainConfig
    history: pd.DataFrame
    model: VAE
    path: Path
    best_epoch: int
    epoch: int  # the epoch of the checkpoint the model was read from
    lr: float  # the step size used: config.lr, or the pilot's choice when config.lr_candidates is set

    @property
    def final(self) -> pd.Series:
        """The history row of the epoch whose model was kept (the best test ELBO)."""
        return self.history.set_index("epoch").loc[self.best_epoch]


def timestamp() -> str:
    """Now, in local time with its UTC offset, to the second: how every record here dates itself."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def read_json(path: Path) -> dict:
    """The JSON record at ``path``; {} when it is missing or unreadable (a record being replaced)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` atomically, indented, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(record, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide a run from the other users of a share
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock: it is writing a run there.

    ``host``, ``pid`` and ``started`` (ISO 8601, when it took the lock) name the holder as the lock
    file records it; None where that record cannot be read (in the instant between a holder's lock
    and its write)."""

    def __init__(self, path: Path, host: str | None, pid: int | None, started: str | None) -> None:
        super().__init__(path, host, pid, started)  # every argument in args: the exception pickles
        self.path, self.host, self.pid, self.started = path, host, pid, started

    def __str__(self) -> str:
        holder = (
            f"process {self.pid} on host {self.host}, started {self.started}"
            if self.pid is not None
            else "another process (its record in the lock file is not readable yet)"
        )
        return (
            f"run directory {self.path} is in use by {holder}: it holds the directory's lock "
            f"({LOCK_FILE}), so this second writer is refused. Wait for that process to finish or stop "
            "it; a lock whose holder has died is taken over by the next attempt."
        )


@dataclass
class RunLock:
    """The lock :func:`lock_run_dir` took; released by :meth:`release`, at the end of a ``with``
    block, or by the kernel when the process dies."""

    path: Path
    holder: dict  # {"host", "pid", "started"}: this process, as the lock file records it
    previous: dict | None  # the record left by a holder that died, whose lock this one took over
    fd: int | None  # None: released, or never locked (a filesystem without locks)

    def release(self) -> None:
        if self.fd is None:
            return
        try:  # unlinked while still held, so that no one can lock the old file afterwards
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_record(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0))
    except ValueError:  # empty (a holder between its lock and its write) or not ours
        return {}
    return record if isinstance(record, dict) else {}


def lock_run_dir(run_dir: str | Path) -> RunLock:
    """Lock ``run_dir`` (made if missing) for this process, or raise :class:`RunLocked` at once
    naming the process that holds it. :func:`vae_utils.training.train` holds it while it trains.

    The lock is ``flock`` on ``run_dir/.lock``, an open file that also records the holder's host,
    pid and start time. The kernel releases a flock when its process dies, SIGKILL included, so a
    dead holder's lock is free: the next call takes it over and reports the dead holder's record in
    ``previous``. A clean release deletes the file (while still holding it; a file locked after that
    is found no longer to be the one at the path and is locked again), so a ``.lock`` left in a run
    directory means a process writes there or one died there. A process forked (not exec'd) by the
    holder inherits the lock and keeps it while it lives.

    Shared filesystems: on NFS, Linux sends a flock to the server as a byte-range lock, so writers
    on two hosts exclude each other. A lost host's lock is freed by the server: with NFSv4 when the
    host's lease expires (90 s by default), with NFSv3 only when the host reboots (else by an
    administrator); until then the refusal names it. NFSv3 mounts with ``nolock`` or
    ``local_lock=flock`` keep locks on each host: writers on different hosts are then not excluded.
    Where flock is not supported at all (some Lustre or FUSE mounts), this warns and returns
    without locking. There is no heartbeat: a holder is judged by its lock alone, never by its
    host, pid or the file's age, which is what makes this safe across hosts.
    """
    path = resolve_path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = _read_record(fd)
            os.close(fd)
            raise RunLocked(path, held.get("host"), held.get("pid"), held.get("started")) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            (path / LOCK_FILE).unlink(missing_ok=True)
            warnings.warn(
                f"{path}: this filesystem offers no file locks ({error.strerror}), so the run "
                "directory is not locked and a second writer would not be refused",
                stacklevel=2,
            )
            return RunLock(path, {}, None, None)
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path / LOCK_FILE))
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # a holder deleted it between our open and our lock: lock the new file
    previous = _read_record(fd) or None
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": timestamp(),
    }
    lock = RunLock(path, holder, previous, fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)  # readers on other hosts of a shared filesystem see it
    except BaseException:
        lock.release()
        raise
    return lock


def existing_run_files(config: TrainConfig) -> list[str]:
    """The run files already in ``config``'s run directory (empty when it holds no run)."""
    return [f for f in RUN_FILES if (config.path / f).exists()]


def run_state(run_dir: str | Path) -> dict | None:
    """The training state saved in ``run_dir/last.pt`` (epoch, history, ``finished``...), or None."""
    path = resolve_path(run_dir) / "last.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["state"]


def prepare_run_dir(config: TrainConfig, overwrite: bool, resume: bool) -> dict | None:
    """Make the run directory; return the checkpoint to resume from, if any.

    An existing run raises ``FileExistsError`` unless ``resume`` (its config.json must match
    ``config`` in every field but the placement ones) or ``overwrite`` (its files are deleted).
    """
    path = config.path
    existing = existing_run_files(config)
    if existing and resume:
        differ = config.differences(json.loads((path / "config.json").read_text()))
        if differ:
            raise ValueError(
                f"cannot resume {path}: its config.json differs in "
                + ", ".join(f"{k} (saved {a!r}, asked {b!r})" for k, (a, b) in differ.items())
            )
        if (path / "last.pt").exists():
            return torch.load(path / "last.pt", map_location="cpu", weights_only=False)
    elif existing and not overwrite:
        raise FileExistsError(
            f"run directory {path} already holds a run ({', '.join(existing)}); it is never "
            "overwritten silently: pass resume=True to continue it, overwrite=True to replace it, "
            "or choose another run_dir"
        )
    elif existing:
        for f in RUN_FILES:
            if (path / f).is_dir():
                shutil.rmtree(path / f)
            else:
                (path / f).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    return None


def save_checkpoint(
    path: Path,
    model: VAE,
    optimizer: torch.optim.Optimizer,
    data_gen: torch.Generator,
    state: dict,
    is_best: bool,
) -> None:
    """Write ``last.pt`` (and ``best.pt`` if ``is_best``), then ``history.csv``, each atomically."""
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": data_gen.get_state(),
        "epoch": state["epoch"],
        "state": state,
    }
    if is_best:
        atomic_torch_save(checkpoint, path / "best.pt")
    atomic_torch_save(checkpoint, path / "last.pt")
    history = pd.DataFrame(state["history"], columns=list(HISTORY_COLUMNS))
    atomic_write_text(path / "history.csv", history.to_csv(index=False))


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> Run:
    """Read a run back: its config, its history as a DataFrame, and the model of ``best.pt``
    (or ``last.pt`` with ``checkpoint="last"``) in eval mode."""
    path = resolve_path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint = {checkpoint!r} is invalid: allowed 'best' or 'last'")
    missing = [f for f in ("config.json", "history.csv", f"{checkpoint}.pt") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"run_dir = {str(run_dir)!r} is not a finished training run: {path} lacks "
            f"{', '.join(missing)}. Train one first (notebooks/02_train.ipynb or vae_utils.train())."
        )
    config = TrainConfig.from_dict(json.loads((path / "config.json").read_text()))
    saved = torch.load(path / f"{checkpoint}.pt", map_location=device, weights_only=False)
    history = pd.read_csv(path / "history.csv")
    model = VAE.from_config(config, saved["model"]["encoder.net.0.weight"].shape[1]).to(device)
    model.load_state_dict(saved["model"])
    model.eval()
    state = saved["state"]
    return Run(config, history, model, path, state["best_epoch"], saved["epoch"], state.get("lr", config.lr))


def runs_table(run_dirs: list) -> pd.DataFrame:
    """One row per run directory: ``point`` (the folder's name), ``run_dir`` (absolute), ``status``
    (``done``, ``running`` or ``missing``) and every field of its saved TrainConfig."""
    rows = []
    for run_dir in run_dirs:
        path = resolve_path(run_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"run_dir = {str(run_dir)!r} holds no run: {path} lacks config.json")
        config = TrainConfig.from_dict(json.loads((path / "config.json").read_text()))
        state = run_state(path)
        status = "missing" if state is None else ("done" if state["finished"] else "running")
        rows.append({"point": path.name, **config.to_dict(), "run_dir": str(path), "status": status})
    return pd.DataFrame(rows)
