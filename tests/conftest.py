"""Shared test set-up: a fixed thread count (float results depend on it) and the shared data folder.

The thread count is also exported so that the kernels nbval starts for the notebook references
inherit it.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # one thread: stable under load, same numbers everywhere
os.environ["MKL_NUM_THREADS"] = "1"

from pathlib import Path

import pytest
import torch

from vae_utils.config import PROJECT_ROOT
from vae_utils.data import data_root

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (``VAE_DATA_DIR``, else ``../shared/data``); skip if neither has MNIST."""
    root = data_root() if os.environ.get("VAE_DATA_DIR") else PROJECT_ROOT.parent / "shared" / "data"
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"no MNIST under {root}: set VAE_DATA_DIR")
    return root
