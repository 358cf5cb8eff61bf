"""vae_utils: the package behind the notebooks that re-derive and study Kingma & Welling's VAE.

Imports run one way, from the bottom up:

config.py      TrainConfig, validated, and the checks the notebooks' parameters share
progress.py    progress lines that read well headless
data.py        datasets in memory, binarisation, minibatches
loss.py        log densities, the ELBO (estimators A and B), importance-weighted log p(x)
model.py       encoder q(z|x); Bernoulli, continuous Bernoulli and Gaussian decoders p(x|z); the VAE
runfiles.py    run directories: atomic checkpoints, history, load_run
training.py    AEVB and wake-sleep training, step-size pilot, schedules, resumption
plotting.py    figures and the small computations behind them
reports.py     HTML export that works offline, the reports' landing page
study.py       the main job: notebooks 01-05 through papermill into reports/
sweep.py       grids of 02_train runs as Dask tasks; the Figure 2 preset
linear_gaussian.py  an exact model for checking the derivation (notebook 01)
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
