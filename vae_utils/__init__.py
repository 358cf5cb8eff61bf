"""vae_utils: the package behind the notebooks that re-derive and study Kingma & Welling's VAE.
Its modules, one concern each, import one way from config at the bottom to sweep at the top;
docs/package.md lists them. Here: the names a notebook or a user reaches for first.
"""

from vae_utils.config import TrainConfig
from vae_utils.data import Data, DatasetCorruptError, DatasetNotFoundError, load_dataset
from vae_utils.loss import elbo, evaluate, importance_weighted_log_likelihood, posterior_statistics
from vae_utils.model import VAE
from vae_utils.runfiles import Run, load_run
from vae_utils.training import TrainingDiverged, train

__all__ = [
    "TrainConfig",
    "Data",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "load_dataset",
    "elbo",
    "evaluate",
    "importance_weighted_log_likelihood",
    "posterior_statistics",
    "VAE",
    "Run",
    "TrainingDiverged",
    "load_run",
    "train",
]
