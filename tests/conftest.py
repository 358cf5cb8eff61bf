"""Shared test set-up: a fixed thread count (float results depend on it) and the shared data folder.

The thread count is also exported so that the kernels nbval starts for the notebook references
inherit it.
"""

import getpass
import os
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"  # one thread: stable under load, same numbers everywhere
os.environ["MKL_NUM_THREADS"] = "1"
# torch.compile's cache does not key on ATEN_CPU_CAPABILITY: a run that emulates another instruction
# set (tests/test_any_cpu.py, docs/reproducibility.md) would be served the machine's own kernels
# (seen: NaN on the first compiled step). One cache per instruction set (inherited by the kernels).
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"torchinductor_{getpass.getuser()}_{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}",
    ),
)

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
