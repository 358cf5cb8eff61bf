"""The training configuration: one dataclass, validated before any data is touched.

Defaults are the original study's (Kingma & Welling's MNIST setting as the review this project
started from ran it): MNIST, a Bernoulli decoder, 500 hidden tanh units, a 2-D latent space,
minibatches of 100, 100 epochs of Adagrad with step size 0.01, and early stopping after 3 epochs
without a better test ELBO.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

#: The folder that holds ``pyproject.toml`` and ``vae_utils/`` (the package is installed editable).
#: Relative run and data paths are resolved against it, so that a notebook finds the same files
#: whether papermill or nbval started its kernel in the repository root or in ``notebooks/``.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

DATASETS = ("mnist", "fashion_mnist", "frey_face")
DECODERS = ("bernoulli", "gaussian")
ACTIVATIONS = ("tanh", "relu")
OPTIMIZERS = ("adagrad", "adam")
KL_ESTIMATORS = ("analytic", "mc")
BINARIZATIONS = ("none", "dynamic", "static")
DEVICES = ("auto", "cpu", "cuda")
INITS = ("pytorch", "paper")
#: Fields that say where a run lives or runs, not what it is: two runs that differ only in these
#: are the same experiment (a resume may change them; legends ignore them).
PLACEMENT_FIELDS = ("device", "run_dir", "data_dir")
MAX_SEED = 2**31 - 1  # train() also seeds with seed + 1; torch takes up to 2**64 - 1


def resolve_path(path: str | Path) -> Path:
    """An absolute path as is; a relative one against :data:`PROJECT_ROOT`."""
    path = Path(path).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else PROJECT_ROOT / path))


# The checks below are shared by TrainConfig and by the notebooks' validation cells, so that every
# bad parameter is reported the same way: its name, its value, and what is allowed.

def fail(field: str, value, allowed: str) -> None:
    """Raise ``ValueError("<field> = <value> is invalid: allowed <allowed>")``."""
    raise ValueError(f"{field} = {value!r} is invalid: allowed {allowed}")


def check_choice(field: str, value, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_int(field: str, value, minimum: int, optional: bool = False,
              maximum: Optional[int] = None) -> None:
    """An integer (numpy's included, bools excluded) in [minimum, maximum]."""
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or (maximum is not None and value > maximum)):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        fail(field, value, f"an integer {bounds}" + (" or None" if optional else ""))


def check_float(field: str, value, minimum: float, strict: bool) -> None:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(float(value)))
    if not ok or (value <= minimum if strict else value < minimum):
        fail(field, value, f"a finite number {'>' if strict else '>='} {minimum}")


def check_bool(field: str, value) -> None:
    if not isinstance(value, bool):
        fail(field, value, "True or False")


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``TrainConfig(...)`` raises ``ValueError`` on a bad field.

    Model
        dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"frey_face"``.
        decoder: ``"bernoulli"`` (paper eq. 11, on logits) or ``"gaussian"`` (eq. 12).
        latent_dim: N_z, the size of z.
        hidden_dim: hidden units of the encoder and of the decoder (500 for MNIST, 200 for Frey Face
            in the paper).
        activation: ``"tanh"`` as in the paper, or ``"relu"``.
        init: ``"pytorch"`` (PyTorch's default Linear initialisation, the default here: it learns
            faster in the first epochs) or ``"paper"`` (every parameter drawn from N(0, 0.01^2),
            i.e. standard deviation 0.01).
        min_logvar: the smooth lower bound on the Gaussian decoder's log sigma^2 (see
            :class:`vae_utils.model.GaussianDecoder`); unused by the Bernoulli decoder.
        sigmoid_mean: squash the Gaussian decoder's mean into (0, 1), as the paper did for Frey Face.

    Optimisation
        batch_size: M, datapoints per minibatch.
        epochs: the most passes over the training set.
        lr: the global step size (the paper chose from {0.01, 0.02, 0.1} for Adagrad).
        optimizer: ``"adagrad"`` (the paper) or ``"adam"``.
        weight_decay: an L2 penalty on the parameters; ``1 / N_train`` is the paper's N(0, I) prior
            on theta expressed per datapoint. 0 by default, as in the original study.
        n_samples: L, samples of z per datapoint in the ELBO estimate.
        kl: ``"analytic"`` (estimator B, eq. 7/10 with App. B) or ``"mc"`` (estimator A, eq. 6).
        binarize: for a Bernoulli decoder, ``"none"`` (grey levels as probabilities, as the paper),
            ``"dynamic"`` (a fresh binarisation each time a batch is drawn) or ``"static"`` (one
            binarisation with a fixed seed). Must be ``"none"`` for the Gaussian decoder.
        patience: stop after this many epochs without a better test ELBO; ``None`` never stops early.

    Run
        seed: seeds the initialisation, the shuffling, the noise and the binarisation.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        run_dir: where ``config.json``, ``history.csv`` and the checkpoints go; a relative path is
            taken from the project root. ``None`` names it from the configuration under ``runs/``.
        train_subset, test_subset: use only the first n images of each split (in the files'
            order; Frey Face's split is itself shuffled) for quick runs; ``None`` uses all.
        data_dir: where the datasets are; ``None`` looks at ``VAE_DATA_DIR``, then ``<repo>/data``.
    """

    dataset: str = "mnist"
    decoder: str = "bernoulli"
    latent_dim: int = 2
    hidden_dim: int = 500
    activation: str = "tanh"
    init: str = "pytorch"
    min_logvar: float = -6.0
    sigmoid_mean: bool = False
    batch_size: int = 100
    epochs: int = 100
    lr: float = 0.01
    optimizer: str = "adagrad"
    weight_decay: float = 0.0
    n_samples: int = 1
    kl: str = "analytic"
    binarize: str = "none"
    patience: Optional[int] = 3
    seed: int = 0
    device: str = "auto"
    run_dir: Optional[str] = None
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    data_dir: Optional[str] = None

    def __post_init__(self) -> None:
        self.validate()
        for f in dataclasses.fields(self):  # numpy scalars (a sweep over np.arange) -> Python
            value = getattr(self, f.name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, f.name, int(value))
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
        if self.run_dir is None:
            self.run_dir = f"runs/{self.name}"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field, its value and what is allowed."""
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("decoder", self.decoder, DECODERS)
        check_int("latent_dim", self.latent_dim, 1)
        check_int("hidden_dim", self.hidden_dim, 1)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("init", self.init, INITS)
        check_float("min_logvar", self.min_logvar, -math.inf, strict=True)
        check_bool("sigmoid_mean", self.sigmoid_mean)
        check_int("batch_size", self.batch_size, 1)
        check_int("epochs", self.epochs, 1)
        check_float("lr", self.lr, 0.0, strict=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_float("weight_decay", self.weight_decay, 0.0, strict=False)
        check_int("n_samples", self.n_samples, 1)
        check_choice("kl", self.kl, KL_ESTIMATORS)
        check_choice("binarize", self.binarize, BINARIZATIONS)
        if self.decoder == "gaussian" and self.binarize != "none":
            fail("binarize", self.binarize, "'none' with decoder='gaussian' (binarisation is for "
                  "the Bernoulli decoder)")
        check_int("patience", self.patience, 1, optional=True)
        check_int("seed", self.seed, 0, maximum=MAX_SEED)
        check_choice("device", self.device, DEVICES)
        for field in ("run_dir", "data_dir"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (str, Path)) or not str(value).strip()):
                fail(field, value, "a non-empty path or None")
        check_int("train_subset", self.train_subset, 1, optional=True)
        check_int("test_subset", self.test_subset, 1, optional=True)

    @property
    def name(self) -> str:
        """A short name for this configuration, e.g. ``mnist_bernoulli_z2_h500_s0``."""
        return f"{self.dataset}_{self.decoder}_z{self.latent_dim}_h{self.hidden_dim}_s{self.seed}"

    @property
    def path(self) -> Path:
        """The run directory as an absolute path."""
        return resolve_path(self.run_dir)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build a config from a dict; an unknown key is a ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}: allowed {sorted(known)}")
        return cls(**values)
