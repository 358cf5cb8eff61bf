"""Run directories: what a training run leaves on disk, written atomically, and how to read it back.

A run directory holds::

    config.json    the TrainConfig
    history.csv    one row per evaluation (see HISTORY_COLUMNS)
    last.pt        model, optimizer, RNG state, epoch, history: enough to resume exactly
    best.pt        the same, saved at the evaluation with the best test ELBO so far
    lr_pilot.csv   the step-size pilot, when the config asks for one (``lr_candidates``)

Every file is written atomically (a temporary file in the same folder, then a rename), so an
interrupted run leaves the previous good version of each file in place. An existing run is never
overwritten silently: :func:`prepare_run_dir` refuses unless asked to resume or to overwrite.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

from vae_utils.config import TrainConfig, resolve_path
from vae_utils.model import VAE

HISTORY_COLUMNS = (
    "epoch",  # 1-based
    "samples",  # training datapoints processed so far (Figure 2's x-axis)
    "seconds",  # wall-clock seconds of training and evaluation so far
    "train_elbo",
    "train_recon",
    "train_kl",  # evaluated on <= 10,000 training images
    "test_elbo",
    "test_recon",
    "test_kl",  # evaluated on the test set
    "minibatch_elbo",  # mean of the minibatch estimates since the last row (the training objective)
    "test_log_px",  # importance-weighted test log p(x) with config.eval_iw_samples samples (else NaN)
)
RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt", "lr_pilot.csv")


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


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def _atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
