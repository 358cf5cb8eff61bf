"""The one builder of the short training runs that test_train.py and test_wake_sleep.py make."""

from pathlib import Path

from vae_utils.config import TrainConfig
from vae_utils.runfiles import LIKELIHOOD_CACHE, RUN_FILES

BATCH = 100
#: The files a finished training run leaves (no step-size pilot, no log p(x) estimate yet).
TRAINED_RUN_FILES = sorted(set(RUN_FILES) - {"lr_pilot.csv", LIKELIHOOD_CACHE})


def small_run_config(run_dir: Path, data_dir: Path, **fields) -> TrainConfig:
    """Three epochs at lr 0.02, minibatches of 100, on the CPU with seed 0, reading ``data_dir``
    and writing ``run_dir``; ``fields`` (sizes, subsets, algorithm...) are set last and win."""
    values = dict(epochs=3, lr=0.02, batch_size=BATCH, device="cpu", seed=0)
    return TrainConfig(**{**values, "data_dir": str(data_dir), "run_dir": str(run_dir), **fields})
