"""The one builder of the short training runs that test_train.py and test_wake_sleep.py make, and
the crash that the resumption tests simulate in the middle of one."""

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vae_utils.config import TrainConfig
from vae_utils.runfiles import LIKELIHOOD_CACHE, RUN_FILES
from vae_utils.training import train

BATCH = 100
#: The files a finished training run leaves (no step-size pilot, no log p(x) estimate yet).
TRAINED_RUN_FILES = sorted(set(RUN_FILES) - {"lr_pilot.csv", LIKELIHOOD_CACHE})


def small_run_config(run_dir: Path, data_dir: Path, **fields) -> TrainConfig:
    """Three epochs at lr 0.02, minibatches of 100, on the CPU with seed 0, reading ``data_dir``
    and writing ``run_dir``; ``fields`` (sizes, subsets, algorithm...) are set last and win."""
    values = dict(epochs=3, lr=0.02, batch_size=BATCH, device="cpu", seed=0)
    return TrainConfig(**{**values, "data_dir": str(data_dir), "run_dir": str(run_dir), **fields})


class Interrupted(Exception):
    """Stands for a crash or a kill in the middle of an epoch."""


def train_interrupted(
    monkeypatch: pytest.MonkeyPatch,
    module: ModuleType,
    name: str,
    call: int,
    config: TrainConfig,
    **kwargs: Any,
) -> None:
    """Train ``config`` with the ``call``-th call of ``module.name`` raising :class:`Interrupted`, as a
    crash would (the work of that call is lost, the checkpoint on disk is older); check that it was
    interrupted, then undo ``monkeypatch``. ``kwargs`` go to ``train`` (``data``, say)."""
    real, calls = getattr(module, name), {"n": 0}

    def interrupted(*args: Any, **inner: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupted
        return real(*args, **inner)

    monkeypatch.setattr(module, name, interrupted)
    with pytest.raises(Interrupted):
        train(config, progress=False, **kwargs)
    monkeypatch.undo()
