"""The training configuration: one dataclass, validated before any data is touched.

Defaults are the original study's (Kingma & Welling's MNIST setting as the review this project
started from ran it): MNIST, a Bernoulli decoder, 500 hidden tanh units, a 2-D latent space,
minibatches of 100, 100 epochs of Adagrad with step size 0.01, and early stopping after 3 epochs
without a better test ELBO.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

#: The folder that holds ``pyproject.toml`` and ``vae_utils/`` (the package is installed editable).
#: Relative run and data paths are resolved against it, so that a notebook finds the same files
#: whether papermill or nbval started its kernel in the repository root or in ``notebooks/``.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

DATASETS = ("mnist", "fashion_mnist", "frey_face")
DECODERS = ("bernoulli", "gaussian", "continuous_bernoulli")
ALGORITHMS = ("aevb", "wake_sleep", "mcem")
LR_SCHEDULES = ("constant", "burda")
#: The hidden units' nonlinearity: its name here -> its class in ``torch.nn``.
ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU"}
OPTIMIZERS = ("adagrad", "adam")
KL_ESTIMATORS = ("analytic", "mc")
BINARIZATIONS = ("none", "dynamic", "static")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float64")
#: ``TrainConfig.autocast``: the training step's matrix multiplies in float32, or in bfloat16.
AUTOCASTS = ("none", "bfloat16")
INITS = ("pytorch", "paper")
#: Fields that say where a run lives or runs, not what it is: two runs that differ only in these
#: are the same experiment (a resume may change them; legends ignore them).
PLACEMENT_FIELDS = ("device", "compile", "tensorboard", "run_dir", "data_dir")
MAX_SEED = 2**31 - 1  # train() also seeds with seed + 1; torch takes up to 2**64 - 1
#: The number of training images of each dataset (Frey Face: after its fixed 200-image test split).
TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "frey_face": 1_765}
#: The step sizes the paper chose Adagrad's from (section 5).
PAPER_STEP_SIZES = (0.01, 0.02, 0.1)
#: Burda et al.'s schedule: stage i = 0..7 runs 3^i epochs at step size lr * 10^(-i/7).
BURDA_STAGES = 8
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3,280


#: The project's folders: notebooks, committed reports, sweeps (relative paths resolve against
#: PROJECT_ROOT, see :func:`resolve_path`).
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
REPORTS_DIR = PROJECT_ROOT / "reports"
SWEEPS_DIR = PROJECT_ROOT / "sweeps"
#: The study's notebooks, in order (``python -m vae_utils.study`` runs them into reports/<name>/).
STUDY_NOTEBOOKS = ("01_derivation", "02_train", "03_loss_curves", "04_reconstruction", "05_latent_manifold")


@dataclass(frozen=True)
class Regime:
    """A data regime: what a run's nats are nats *of*. Log-likelihoods compare only within one
    (NOTES, "Likelihoods")."""

    label: str  # a few words for tables: what the nats are nats of
    run_label: str  # a run's short name in notebook 07
    note: str  # which published numbers the run's log-likelihood may be set beside
    density: bool  # a log *density* of grey levels (it can be positive), not a probability


#: Every data regime by its code (:attr:`TrainConfig.regime`). Code filters on these codes, never
#: on the words.
REGIMES = {
    "binary_dynamic": Regime(
        "dynamically binarised",
        "VAE, dynamic binarisation",
        "Bernoulli decoder on dynamically binarised images: Burda et al.'s regime "
        "(their VAE with 50 latents and two hidden layers: log p(x) = -86.76 nats).",
        density=False,
    ),
    "binary_static": Regime(
        "statically binarised",
        "VAE, static binarisation",
        "Bernoulli decoder on one fixed binarisation: models score about 2 nats worse "
        "here than with dynamic binarisation, and overfit more (Burda et al.).",
        density=False,
    ),
    "grey_bernoulli": Regime(
        "grey levels as Bernoulli probabilities (not a likelihood)",
        "Bernoulli on grey levels",
        "Bernoulli decoder on grey levels (binarize='none'), the paper's own regime "
        "(Figure 2): a cross-entropy against grey pixels, not the log-probability of "
        "binary images, so not comparable with Burda et al.'s binarised numbers.",
        density=False,
    ),
    "grey_continuous_bernoulli": Regime(
        "grey levels, continuous Bernoulli density",
        "continuous Bernoulli",
        "Continuous Bernoulli decoder: a normalised log *density* of grey pixel values on "
        "[0, 1], comparable with the Gaussian decoder's density on the same data, not with "
        "any Bernoulli (discrete) log-likelihood.",
        density=True,
    ),
    "grey_gaussian": Regime(
        "grey levels, Gaussian density",
        "Gaussian",
        "Gaussian decoder: a log *density* of continuous pixel values; it can be positive "
        "and is not comparable with any Bernoulli (discrete) log-likelihood.",
        density=True,
    ),
}


def resolve_path(path: str | Path) -> Path:
    """An absolute path as is; a relative one against :data:`PROJECT_ROOT`."""
    path = Path(path).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else PROJECT_ROOT / path))


def display_path(path: str | Path) -> str:
    """``path`` relative to :data:`PROJECT_ROOT` when it lies inside it (no machine's absolute paths
    in printed lines or committed files), else as it is: the inverse of :func:`resolve_path`."""
    path = Path(os.path.normpath(Path(path).absolute()))
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


#: How both command lines (the study's and the sweep's) separate the values of a list field.
LIST_SEPARATOR = ":"


def parse_float_list(field: str, text: str) -> list[float]:
    """A list field's value on a command line, e.g. ``lr_candidates`` = ``0.01:0.02:0.1``. The study's
    earlier ``,`` is still read, with a note on stderr (in a sweep's ``--grid`` a ``,`` separates
    grid values instead). A value that is not a number raises ``ValueError``."""
    if "," in text:
        print(
            f"note: {field} = {text!r}: list values are separated by {LIST_SEPARATOR!r} in both command "
            f"lines; read as {text.replace(',', LIST_SEPARATOR)!r}",
            file=sys.stderr,
        )
        text = text.replace(",", LIST_SEPARATOR)
    return [float(v) for v in text.split(LIST_SEPARATOR)]


# The checks below are shared by TrainConfig and by the notebooks' validation cells, so that every
# bad parameter is reported the same way: its name, its value, and what is allowed.


def fail(field: str, value: object, allowed: str) -> NoReturn:
    """Raise ``ValueError("<field> = <value> is invalid: allowed <allowed>")``."""
    raise ValueError(f"{field} = {value!r} is invalid: allowed {allowed}")


def check_choice(field: str, value: object, choices: Collection[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_int(
    field: str, value: object, minimum: int, optional: bool = False, maximum: int | None = None
) -> None:
    """An integer (numpy's included, bools excluded) in [minimum, maximum]."""
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or int(value) < minimum
        or (maximum is not None and int(value) > maximum)
    ):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        fail(field, value, f"an integer {bounds}" + (" or None" if optional else ""))


def check_float(field: str, value: object, minimum: float, strict: bool) -> None:
    number = math.nan if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
    if not math.isfinite(number) or (number <= minimum if strict else number < minimum):
        fail(field, value, f"a finite number {'>' if strict else '>='} {minimum}")


def check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        fail(field, value, "True or False")


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``TrainConfig(...)`` raises ``ValueError`` on a bad field.

    Model
        dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"frey_face"``.
        decoder: ``"bernoulli"`` (paper eq. 11, on logits), ``"gaussian"`` (eq. 12) or
            ``"continuous_bernoulli"`` (Loaiza-Ganem & Cunningham 2019: the normalised density on
            [0, 1] that the Bernoulli-on-grey-levels habit approximates; on logits too).
        latent_dim: N_z, the size of z.
        hidden_dim: hidden units of the encoder and of the decoder (500 for MNIST, 200 for Frey Face
            in the paper).
        hidden_layers: deterministic hidden layers in the encoder and in the decoder: 1 in the paper,
            2 in Burda et al.'s one-stochastic-layer VAE.
        activation: ``"tanh"`` as in the paper, or ``"relu"``.
        init: ``"pytorch"`` (PyTorch's default Linear initialisation, the default here: it learns
            faster in the first epochs) or ``"paper"`` (every parameter drawn from N(0, 0.01^2),
            i.e. standard deviation 0.01).
        min_logvar: the smooth lower bound on the Gaussian decoder's log sigma^2 (see
            :class:`vae_utils.model.GaussianDecoder`); unused by the Bernoulli decoder.
        sigmoid_mean: squash the Gaussian decoder's mean into (0, 1), as the paper did for Frey Face.

    Optimisation
        algorithm: ``"aevb"`` (the paper's Algorithm 1: encoder and decoder step together on the
            ELBO) or ``"wake_sleep"`` (Hinton et al. 1995, the paper's baseline in Figure 2: the
            wake phase steps the decoder on log p(x|z), z ~ q(z|x); the sleep phase steps the
            encoder on log q(z|x~) for fantasies z ~ p(z), x~ ~ p(x|z)). Same networks, optimizer,
            step size, minibatch and weight decay; both are evaluated with the same ELBO. Or
            ``"mcem"``, Monte Carlo EM (App. E, Figure 3): no encoder (it stays at its
            initialisation, and the ELBO columns are NaN); a persistent z per training point moved
            by HMC, then decoder steps on log p(x, z) (:mod:`vae_utils.mcem`); ``samples`` counts
            every datapoint at which log p(x, z) or its gradient is computed.
        batch_size: M, datapoints per minibatch.
        epochs: the most passes over the training set.
        lr: the global step size (the paper chose from {0.01, 0.02, 0.1} for Adagrad). Ignored when
            ``lr_candidates`` is given.
        lr_candidates: ``None``, or step sizes to choose ``lr`` from, as the paper did: a pilot of
            ``pilot_samples`` training samples per candidate, from the same initialisation, and the
            one with the best training-set ELBO wins. The pilot is saved as ``lr_pilot.csv`` in
            the run directory; the paper's candidates are :data:`PAPER_STEP_SIZES`.
        pilot_samples: the length of each pilot, in training samples.
        lr_schedule: ``"constant"``, or ``"burda"``: Burda et al.'s 8 stages, stage i at step size
            lr * 10^(-i/7) for 3^i epochs when ``epochs`` = 3,280; a smaller ``epochs`` shrinks
            every stage in proportion (each keeps at least one epoch), a shortened schedule.
        optimizer: ``"adagrad"`` (the paper) or ``"adam"``.
        adam_eps: Adam's epsilon (PyTorch's 1e-8 by default; Burda et al. used 1e-4).
        weight_decay: an L2 penalty on the parameters; ``1 / N_train`` is the paper's N(0, I) prior
            on theta expressed per datapoint. 0 by default, as in the original study.
        n_samples: L, samples of z per datapoint in the ELBO estimate.
        kl: ``"analytic"`` (estimator B, eq. 7/10 with App. B) or ``"mc"`` (estimator A, eq. 6).
        binarize: for a Bernoulli decoder, ``"none"`` (grey levels as probabilities, as the paper),
            ``"dynamic"`` (a fresh binarisation each time a batch is drawn) or ``"static"`` (one
            binarisation with a fixed seed). Must be ``"none"`` for the Gaussian decoder.
        patience: stop after this many evaluations without a better test ELBO; ``None`` never stops
            early (the paper's Figure 2).
        eval_per_decade: ``None`` evaluates after every epoch. An integer n evaluates only after the
            epochs at which the training samples seen first reach 10^(j/n) (j = 0, 1, ...), and
            after the last: a log-spaced curve, as Figure 2's axis, at a small cost on long runs.
        eval_every: ``None``, or n: evaluate only after the epochs at which the training samples
            first reach a multiple of n, and after the last: a linear axis, as Figure 3's. Not with
            ``eval_per_decade``.
        eval_iw_samples: ``None``, or k: each evaluation also estimates the test log p(x) with k
            importance samples (Burda et al.), the history's ``test_log_px``, so that the
            log-likelihood's trend shows during training (k = 5000 is left to the analysis).
        eval_marginal: ``None``, or n: each evaluation also estimates log p(x) on the first n training
            and the first n test images with App. D's estimator from HMC draws of the posterior
            (Figure 3; :func:`vae_utils.marginal_likelihood.hmc_log_px`), the history's
            ``train_log_px_hmc`` and ``test_log_px_hmc``; MCEM keeps its best model by it.

    Run
        seed: seeds the initialisation, the shuffling, the noise and the binarisation.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"`` or ``"float64"``, the floating-point type of the parameters, the data
            and every computation. A float32 run's history depends on the CPU's instruction set
            (its kernels sum in other orders) beyond the printed digits after a few thousand steps;
            a short float64 run does not (docs/reproducibility.md). The nbval references use it.
        compile: on a CPU, each training step (forward, backward, update) as one graph compiled by
            ``torch.compile`` (needs a C++ compiler; the first step compiles, up to a minute cold).
            AEVB or wake-sleep, any decoder, Adam or Adagrad; for MCEM, its HMC evaluations (the
            M-step stays eager); eager on CUDA. Results agree with the eager step's to float
            rounding (wake-sleep with Bernoulli fantasies and MCEM's accept-reject: in
            distribution), reproduce and resume exactly (docs/speed.md).
        autocast: ``"bfloat16"``: the training step under ``torch.autocast`` to bfloat16 (its
            matrix multiplies take bfloat16 inputs); parameters, optimizer state and evaluations
            stay float32. Faster only on CPUs with bfloat16 units (docs/speed.md). Needs float32
            ``dtype``; not for MCEM, nor the Gaussian decoder (its curves fell 17 nats below
            float32's). ``"none"`` (the default): the step runs in ``dtype``.
        tensorboard: also write each evaluation as TensorBoard events in ``<run_dir>/tb`` (scalars
            against training samples, reconstructions and prior samples at log-spaced
            evaluations; :mod:`vae_utils.tensorboard_log`, docs/live.md), to watch a long run live.
            ``history.csv`` stays the record; False writes none.
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
    hidden_layers: int = 1
    activation: str = "tanh"
    init: str = "pytorch"
    min_logvar: float = -6.0
    sigmoid_mean: bool = False
    algorithm: str = "aevb"
    batch_size: int = 100
    epochs: int = 100
    lr: float = 0.01
    lr_candidates: list | None = None
    pilot_samples: int = 20_000
    lr_schedule: str = "constant"
    optimizer: str = "adagrad"
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    n_samples: int = 1
    kl: str = "analytic"
    binarize: str = "none"
    patience: int | None = 3
    eval_per_decade: int | None = None
    eval_every: int | None = None
    eval_iw_samples: int | None = None
    eval_marginal: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False
    autocast: str = "none"
    tensorboard: bool = True
    run_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        self.validate()
        if self.lr_candidates is not None:  # a tuple, a numpy array... -> a list of floats (JSON)
            self.lr_candidates = [float(v) for v in self.lr_candidates]
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
        check_int("hidden_layers", self.hidden_layers, 1)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("init", self.init, INITS)
        check_float("min_logvar", self.min_logvar, -math.inf, strict=True)
        check_bool("sigmoid_mean", self.sigmoid_mean)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        check_int("batch_size", self.batch_size, 1)
        check_int("epochs", self.epochs, 1)
        check_float("lr", self.lr, 0.0, strict=True)
        if self.lr_candidates is not None:
            candidates = self.lr_candidates
            if (
                isinstance(candidates, (str, bytes))
                or not hasattr(candidates, "__iter__")
                or not list(candidates)
            ):
                fail("lr_candidates", candidates, "None or a non-empty list of finite step sizes > 0")
            for value in candidates:
                try:
                    check_float("lr_candidates", value, 0.0, strict=True)
                except ValueError:
                    fail("lr_candidates", candidates, "None or a non-empty list of finite step sizes > 0")
        check_int("pilot_samples", self.pilot_samples, 1)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr_schedule == "burda" and self.optimizer != "adam":
            fail("optimizer", self.optimizer, "'adam' with lr_schedule='burda' (Burda et al. used Adam)")
        if self.lr_schedule == "burda" and self.epochs < BURDA_STAGES:
            need = f"an integer >= {BURDA_STAGES} with lr_schedule='burda' (an epoch a stage)"
            fail("epochs", self.epochs, need)
        check_float("adam_eps", self.adam_eps, 0.0, strict=True)
        check_float("weight_decay", self.weight_decay, 0.0, strict=False)
        check_int("n_samples", self.n_samples, 1)
        check_choice("kl", self.kl, KL_ESTIMATORS)
        check_choice("binarize", self.binarize, BINARIZATIONS)
        if self.decoder != "bernoulli" and self.binarize != "none":
            fail(
                "binarize",
                self.binarize,
                f"'none' with decoder={self.decoder!r} (binarisation is for the Bernoulli decoder)",
            )
        check_int("patience", self.patience, 1, optional=True)
        check_int("eval_per_decade", self.eval_per_decade, 1, optional=True)
        check_int("eval_every", self.eval_every, 1, optional=True)
        if self.eval_every is not None and self.eval_per_decade is not None:
            fail("eval_every", self.eval_every, "None when eval_per_decade is set (one evaluation schedule)")
        check_int("eval_iw_samples", self.eval_iw_samples, 1, optional=True)
        check_int("eval_marginal", self.eval_marginal, 1, optional=True)
        if self.algorithm == "mcem":
            self._check_mcem()
        check_int("seed", self.seed, 0, maximum=MAX_SEED)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPES)
        check_bool("compile", self.compile)
        check_choice("autocast", self.autocast, AUTOCASTS)
        excluded = self.dtype != "float32" or self.algorithm == "mcem" or self.decoder == "gaussian"
        if self.autocast != "none" and excluded:
            used = f"dtype={self.dtype!r}, algorithm={self.algorithm!r} and decoder={self.decoder!r}"
            kinds = "float32 AEVB and wake-sleep, (continuous) Bernoulli"
            fail("autocast", self.autocast, f"'none' with {used} ({kinds})")
        check_bool("tensorboard", self.tensorboard)
        for field in ("run_dir", "data_dir"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (str, Path)) or not str(value).strip()):
                fail(field, value, "a non-empty path or None")
        check_int("train_subset", self.train_subset, 1, optional=True)
        check_int("test_subset", self.test_subset, 1, optional=True)

    def _check_mcem(self) -> None:
        """What Monte Carlo EM cannot do: it has no encoder, so no ELBO to choose a step size or to
        stop on, and its persistent posterior sample is of fixed training images."""
        if self.lr_candidates is not None:
            fail("lr_candidates", self.lr_candidates, "None with algorithm='mcem' (the pilot compares ELBOs)")
        if self.patience is not None and self.eval_marginal is None:
            fail(
                "patience",
                self.patience,
                "None with algorithm='mcem' unless eval_marginal is set (MCEM has no ELBO to stop on)",
            )
        if self.binarize == "dynamic":
            fail("binarize", self.binarize, "'none' or 'static' with algorithm='mcem' (z is kept per image)")

    @property
    def name(self) -> str:
        """A short name for this configuration, e.g. ``mnist_bernoulli_z2_h500_s0``; two hidden
        layers read ``h200x2``, wake-sleep adds ``_ws``, Monte Carlo EM ``_mcem``."""
        layers = f"x{self.hidden_layers}" if self.hidden_layers != 1 else ""
        algorithm = {"aevb": "", "wake_sleep": "_ws", "mcem": "_mcem"}[self.algorithm]
        return (
            f"{self.dataset}_{self.decoder}_z{self.latent_dim}_h{self.hidden_dim}{layers}"
            f"_s{self.seed}{algorithm}"
        )

    @property
    def regime(self) -> str:
        """The data regime's code, a key of :data:`REGIMES`: a density decoder's (its data are grey
        levels: binarisation is for the Bernoulli decoder), or how a Bernoulli decoder's data were
        binarised."""
        if self.decoder != "bernoulli":
            return f"grey_{self.decoder}"
        return {"none": "grey_bernoulli", "dynamic": "binary_dynamic", "static": "binary_static"}[
            self.binarize
        ]

    @property
    def path(self) -> Path:
        """The run directory as an absolute path."""
        return resolve_path(self.run_dir if self.run_dir is not None else f"runs/{self.name}")

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def differences(self, saved: dict) -> dict:
        """``{field: (saved value, this value)}`` for the fields, placement aside, in which a saved
        ``config.json`` differs from this config; a field the saved file lacks (written before the
        field existed) counts as its default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {
            k: (saved.get(k, defaults[k]), v)
            for k, v in self.to_dict().items()
            if k not in PLACEMENT_FIELDS and saved.get(k, defaults[k]) != v
        }

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build a config from a dict; an unknown key is a ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}: allowed {sorted(known)}")
        return cls(**values)


#: TrainConfig's fields, in order: the parameters of 02_train and of every sweep point.
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def varying_fields(configs: Sequence[TrainConfig], ignore: Sequence[str] = ("run_dir",)) -> list[str]:
    """The fields (in :data:`FIELDS` order) whose values differ among ``configs``, except ``ignore``."""
    dicts = [c.to_dict() for c in configs]
    return [f for f in FIELDS if f not in ignore and len({json.dumps(d[f]) for d in dicts}) > 1]


def paper_weight_decay(dataset: str, train_subset: int | None = None) -> float:
    """The weight decay that stands for the paper's N(0, I) prior on the parameters.

    The objective is the per-datapoint mean of eq. 8's minibatch estimate plus the prior's
    1/N log p(theta) = -||theta||^2 / (2N) + const, whose gradient is -theta / N: PyTorch's
    ``weight_decay`` adds ``weight_decay * theta`` to the loss gradient, so it is 1/N with N the
    number of training images.
    """
    check_choice("dataset", dataset, DATASETS)
    n = TRAIN_SIZES[dataset] if train_subset is None else min(train_subset, TRAIN_SIZES[dataset])
    return 1.0 / n


# ----------------------------------------------------------------------------- analysis options

#: The analysis notebooks' (03-05) own options: name -> (type, minimum, None allowed). The one place
#: their bounds live: ``python -m vae_utils.study``'s options and the notebooks' validation cells
#: both check them with :func:`check_analysis_option`.
ANALYSIS_OPTIONS = {
    "iw_samples": (int, 1, False),
    "iw_subset": (int, 1, True),
    "n_images": (int, 1, False),
    "grid_size": (int, 2, False),
}


def check_analysis_option(name: str, value: object) -> None:
    """Check an analysis option against :data:`ANALYSIS_OPTIONS`: ``ValueError`` with the package's
    message (``grid_size = 1 is invalid: allowed an integer >= 2``), ``KeyError`` for a name that is
    not an analysis option."""
    if name not in ANALYSIS_OPTIONS:
        raise KeyError(f"{name!r} is not an analysis option: allowed {sorted(ANALYSIS_OPTIONS)}")
    _, minimum, optional = ANALYSIS_OPTIONS[name]
    check_int(name, value, minimum, optional)
