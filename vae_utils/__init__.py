"""vae_utils: the package behind the notebooks that re-derive and study Kingma & Welling's VAE.

data.py     datasets in memory, binarisation, minibatches
model.py    encoder q(z|x), Bernoulli and Gaussian decoders p(x|z), the VAE
loss.py     log densities, the ELBO (estimators A and B), importance-weighted log p(x)
training.py training with early stopping, checkpoints, resumption; load_run
config.py   TrainConfig, validated, and the checks the notebooks' parameters share
plotting.py figures and the small computations behind them
study.py    the main job: notebooks 01-05 through papermill into reports/
linear_gaussian.py  an exact model for checking the derivation (notebook 01)
"""
from vae_utils.config import TrainConfig
from vae_utils.data import Data, DatasetCorruptError, DatasetNotFoundError, load_dataset
from vae_utils.loss import elbo, evaluate, importance_weighted_log_likelihood, posterior_statistics
from vae_utils.model import VAE
from vae_utils.training import Run, TrainingDiverged, load_run, train

__all__ = [
    "TrainConfig", "Data", "DatasetCorruptError", "DatasetNotFoundError", "load_dataset", "elbo",
    "evaluate", "importance_weighted_log_likelihood", "posterior_statistics", "VAE", "Run",
    "TrainingDiverged", "load_run", "train",
]
