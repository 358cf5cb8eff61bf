"""Training: minibatch SGVB (paper Algorithm 1) with early stopping, checkpoints and resumption.

A run directory holds::

    config.json   the TrainConfig
    history.csv   one row per epoch (see HISTORY_COLUMNS)
    last.pt       model, optimizer, RNG states, epoch, history: enough to resume exactly
    best.pt       the same, saved at the epoch with the best test ELBO so far

Every file is written atomically (a temporary file in the same folder, then a rename), so an
interrupted run leaves the previous good version of each file in place.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd
import torch

from vae_utils.config import PLACEMENT_FIELDS, TrainConfig, resolve_path
from vae_utils.data import Data, batches, load_config_data
from vae_utils.loss import elbo, evaluate
from vae_utils.model import VAE

HISTORY_COLUMNS = (
    "epoch",  # 1-based
    "samples",  # training datapoints processed so far (Figure 2's x-axis)
    "seconds",  # wall-clock seconds of training and evaluation so far
    "train_elbo", "train_recon", "train_kl",  # evaluated after the epoch on <= 10,000 training images
    "test_elbo", "test_recon", "test_kl",  # evaluated after the epoch on the test set
    "minibatch_elbo",  # mean of the epoch's minibatch estimates (the training objective)
)
RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""


@dataclass
class Run:
    """A trained run, as :func:`train` returns it and :func:`load_run` reads it back."""

    config: TrainConfig
    history: pd.DataFrame
    model: VAE
    path: Path
    best_epoch: int
    epoch: int  # the epoch of the checkpoint the model was read from

    @property
    def final(self) -> pd.Series:
        """The history row of the epoch whose model was kept (the best test ELBO)."""
        return self.history.set_index("epoch").loc[self.best_epoch]


# ----------------------------------------------------------------------------- files

def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def _atomic(path: Path, write) -> None:
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


def _prepare_run_dir(config: TrainConfig, overwrite: bool, resume: bool) -> Optional[dict]:
    """Make the run directory; return the checkpoint to resume from, if any."""
    path = config.path
    existing = existing_run_files(config)
    if existing and resume:
        saved = json.loads((path / "config.json").read_text())
        differ = {k: (saved.get(k), v) for k, v in config.to_dict().items()
                  if k not in PLACEMENT_FIELDS and saved.get(k) != v}
        if differ:
            raise ValueError(f"cannot resume {path}: its config.json differs in "
                             + ", ".join(f"{k} (saved {a!r}, asked {b!r})" for k, (a, b) in differ.items()))
        if (path / "last.pt").exists():
            return torch.load(path / "last.pt", map_location="cpu", weights_only=False)
    elif existing and not overwrite:
        raise FileExistsError(
            f"run directory {path} already holds a run ({', '.join(existing)}); it is never "
            "overwritten silently: pass resume=True to continue it, overwrite=True to replace it, "
            "or choose another run_dir")
    elif existing:
        for f in RUN_FILES:
            (path / f).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    return None


# ----------------------------------------------------------------------------- progress

def interactive() -> bool:
    """True when a person watches a terminal; False under papermill, nbval, CI and pipes."""
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable, enabled: bool = True, desc: str = "", unit: str = "it",
                 total: Optional[int] = None):
    """A tqdm bar in a terminal; plain lines at each tenth when not interactive; nothing if disabled."""
    if not enabled:
        return iterable
    if interactive():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False)
    return _plain_progress(iterable, desc, unit, total)


def _plain_progress(iterable, desc, unit, total):
    total = len(iterable) if total is None else total
    marks = {math.ceil(total * i / 10) for i in range(1, 11)}
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if i in marks:
            print(f"{desc}: {i}/{total} {unit} [{time.perf_counter() - start:.1f} s]", flush=True)


# ----------------------------------------------------------------------------- training

def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' is invalid here: no CUDA device is available; "
                         "allowed 'auto' or 'cpu'")
    return torch.device(device)


def make_optimizer(model: VAE, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adagrad (the paper) or Adam, fused into one kernel where PyTorch offers it on this device."""
    kwargs = dict(lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), fused=device.type == "cpu", **kwargs)
    return torch.optim.Adam(model.parameters(), fused=True, **kwargs)


def _eval_row(model: VAE, data: Data, config: TrainConfig, epoch: int) -> dict:
    """Train and test ELBO with fixed evaluation noise (the same every epoch)."""
    row = {}
    model.eval()
    for split, x in (("train", data.x_train_eval), ("test", data.x_test)):
        values = evaluate(model, x, config.n_samples, config.kl, seed=config.seed + 1)
        row.update({f"{split}_{k}": v for k, v in values.items()})
    model.train()
    return row


def _format_row(row: dict, epochs: int, best: bool) -> str:
    return (f"epoch {row['epoch']:>3}/{epochs} | train ELBO {row['train_elbo']:9.2f} | "
            f"test ELBO {row['test_elbo']:9.2f} (recon {row['test_recon']:9.2f}, "
            f"KL {row['test_kl']:6.2f}){' *' if best else '  '} [{row['seconds']:.1f} s]")


def train(config: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          progress: bool = True, data: Optional[Data] = None) -> Run:
    """Train a VAE as ``config`` says, save it under ``config.run_dir`` and return the best model.

    Each epoch runs minibatch SGVB over the shuffled training set, then evaluates the ELBO on the
    test set and on up to 10,000 training images, appends a row to the history and writes
    ``last.pt`` (and ``best.pt`` when the test ELBO beats the best so far). Training stops after
    ``config.epochs`` epochs, or after ``config.patience`` epochs in a row without a better test
    ELBO; the model returned, and kept in ``best.pt``, is the best one.

    An existing run directory raises ``FileExistsError`` unless ``resume`` (continue from
    ``last.pt``, giving the same history as an uninterrupted run on the same machine) or
    ``overwrite`` is set. A NaN or infinite loss raises :class:`TrainingDiverged` naming the epoch
    and batch, and leaves the previous epoch's checkpoints in place.

    ``progress``: a tqdm bar in a terminal, plain per-epoch lines otherwise; False is silent.
    ``data`` skips loading when the caller already holds the dataset.
    """
    config.validate()  # again: fields may have been changed since construction
    if overwrite and resume:
        raise ValueError("train(overwrite=True, resume=True): choose one")
    device = resolve_device(config.device)
    checkpoint = _prepare_run_dir(config, overwrite, resume)
    if data is None:
        data = load_config_data(config, device)
    torch.manual_seed(config.seed)
    model = VAE.from_config(config, data.dim).to(device)
    optimizer = make_optimizer(model, config, device)
    data_gen = torch.Generator(device).manual_seed(config.seed)
    state = {"epoch": 0, "history": [], "best_elbo": -math.inf, "best_epoch": 0, "bad_epochs": 0,
             "finished": False, "seconds": 0.0}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        data_gen.set_state(checkpoint["rng"].to(torch.uint8))
        state = checkpoint["state"]
        if progress and not state["finished"]:
            print(f"resuming {config.path} after epoch {state['epoch']}", flush=True)

    path = config.path
    while not state["finished"]:
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        losses = train_epoch(model, optimizer, data, config, data_gen, progress and interactive(),
                             f"epoch {epoch}")
        finite = torch.isfinite(losses)
        if not bool(finite.all()):  # one host sync per epoch, not per step
            bad = int((~finite).nonzero()[0])
            raise TrainingDiverged(
                f"the loss became {losses[bad].item()} at epoch {epoch}, batch {bad + 1} of "
                f"{len(losses)}: training stopped. "
                + (f"The last good checkpoint (epoch {state['epoch']}) is kept in {path}. "
                   if state["epoch"] else f"No epoch finished, so {path} holds no checkpoint. ")
                + "Try a smaller lr or, for the Gaussian decoder, a higher "
                "min_logvar.")
        row = {"epoch": epoch, "samples": epoch * len(data.x_train)}
        row.update(_eval_row(model, data, config, epoch))
        row["minibatch_elbo"] = -losses.double().mean().item()
        state["seconds"] += time.perf_counter() - started
        row["seconds"] = state["seconds"]
        is_best = row["test_elbo"] > state["best_elbo"]
        if is_best:
            state.update(best_elbo=row["test_elbo"], best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["history"].append(row)
        state["epoch"] = epoch
        stop_early = config.patience is not None and state["bad_epochs"] >= config.patience
        state["finished"] = epoch >= config.epochs or stop_early
        _save(path, model, optimizer, data_gen, state, is_best)
        if progress:
            print(_format_row(row, config.epochs, is_best), flush=True)
            if stop_early:
                print(f"early stop: no better test ELBO for {config.patience} epochs; keeping epoch "
                      f"{state['best_epoch']} (test ELBO {state['best_elbo']:.2f})", flush=True)
    return load_run(path, device=device)


def train_epoch(model: VAE, optimizer: torch.optim.Optimizer, data: Data, config: TrainConfig,
                generator: torch.Generator, progress: bool = False, desc: str = "") -> torch.Tensor:
    """One pass of minibatch SGVB over ``data.x_train`` (Algorithm 1): for each shuffled minibatch,
    draw eps, step on -ELBO. Returns the minibatch losses (negative ELBO per datapoint), left on the
    device: nothing here waits for the device, so the caller checks them once per epoch."""
    n_batches = math.ceil(len(data.x_train) / config.batch_size)
    losses = torch.empty(n_batches, device=data.x_train.device)
    epoch_batches = batches(data.x_train, config.batch_size, generator, config.binarize == "dynamic")
    for i, x in enumerate(progress_bar(epoch_batches, progress, desc, "batch", n_batches)):
        loss = -elbo(model, x, config.n_samples, config.kl, generator).elbo.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[i] = loss.detach()
    return losses


def _save(path: Path, model, optimizer, data_gen, state: dict, is_best: bool) -> None:
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "rng": data_gen.get_state(), "epoch": state["epoch"], "state": state}
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
            f"{', '.join(missing)}. Train one first (notebooks/02_train.ipynb or vae_utils.train()).")
    config = TrainConfig.from_dict(json.loads((path / "config.json").read_text()))
    saved = torch.load(path / f"{checkpoint}.pt", map_location=device, weights_only=False)
    history = pd.read_csv(path / "history.csv")
    model = VAE.from_config(config, saved["model"]["encoder.net.0.weight"].shape[1]).to(device)
    model.load_state_dict(saved["model"])
    model.eval()
    return Run(config, history, model, path, saved["state"]["best_epoch"], saved["epoch"])
