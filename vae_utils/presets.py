"""The experiments this project reproduces, as lists of :class:`TrainConfig`: the paper's Figures 2
and 3, and the likelihood comparisons of notebook 07 (Burda et al.'s Table 1, grey-level decoders).

A preset takes a *budget*, the number of training samples per curve (:data:`BUDGETS`), or for the
likelihood runs a number of epochs (:data:`LIKELIHOOD_EPOCHS`), and returns every configuration with
its protocol spelled out. The sweep runs them (``python -m vae_utils.sweep --preset ...``); the nbval
references train tiny versions of them.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from vae_utils import mcem
from vae_utils.config import (
    BURDA_EPOCHS,
    DATASETS,
    PAPER_STEP_SIZES,
    TRAIN_SIZES,
    TrainConfig,
    check_choice,
    check_int,
    fail,
    paper_weight_decay,
)

#: Training samples per curve. Figure 2 runs to 10^8; ``cpu`` is what this project's report used.
BUDGETS = {
    "paper": {"mnist": 10**8, "fashion_mnist": 10**8, "frey_face": 10**8},
    "cpu": {"mnist": 3 * 10**6, "fashion_mnist": 3 * 10**6, "frey_face": 10**7},
    "smoke": {"mnist": 20_000, "fashion_mnist": 20_000, "frey_face": 20_000},
}
#: Figure 2's latent sizes, with the paper's model for each dataset (section 5 and its Figure 2).
FIGURE2_LATENTS = {"mnist": (3, 5, 10, 20, 200), "frey_face": (2, 5, 10, 20)}
FIGURE2_MODELS: dict[str, dict[str, Any]] = {
    "mnist": {"decoder": "bernoulli", "hidden_dim": 500},
    "frey_face": {"decoder": "gaussian", "hidden_dim": 200, "sigmoid_mean": True},
}
#: Figure 2 compares these two (Figure 3 adds Monte Carlo EM).
FIGURE2_ALGORITHMS = ("aevb", "wake_sleep")
#: Seeds per Figure 2 curve: the curve is their mean, their range a band (notebook 06).
FIGURE2_SEEDS = (0, 1, 2)
#: The paper's pilot for choosing the step size; a tenth of the budget when that is smaller.
FIGURE2_PILOT_SAMPLES = 20_000

#: Figure 3 (section 5, App. D, E): training samples evaluated per curve; the whole grid at the
#: paper's budget fits on a 2-core CPU, so ``cpu`` is the paper's too.
FIGURE3_BUDGETS = {"paper": 6 * 10**7, "cpu": 6 * 10**7, "smoke": 200_000}
#: Its two panels' training sets (the first N images of MNIST's training file), model and methods.
FIGURE3_TRAIN_SIZES = (1000, 50_000)
FIGURE3_MODEL: dict[str, Any] = {
    "dataset": "mnist",
    "decoder": "bernoulli",
    "latent_dim": 3,
    "hidden_dim": 100,
}
FIGURE3_ALGORITHMS = (*FIGURE2_ALGORITHMS, "mcem")
#: App. E: log p(x) "on the first 1000 datapoints from the train and test sets"; evaluated this many
#: times along each curve, evenly in training samples (the figure's axis is linear).
FIGURE3_EVAL_IMAGES = 1000
FIGURE3_EVALUATIONS = 20
#: MCEM's Adagrad step size: it has no ELBO for the pilot (docs/methods.md says how it was chosen).
FIGURE3_MCEM_LR = 0.1

#: Epochs of Burda et al.'s schedule per budget: ``paper`` is theirs (3,280); ``cpu`` keeps the eight
#: stages shrunk to 1/40, what fits in about an hour on a 2-core CPU; ``smoke`` is a quick check.
LIKELIHOOD_EPOCHS = {"paper": BURDA_EPOCHS, "cpu": BURDA_EPOCHS // 40, "smoke": 8}
#: Burda et al.'s one-stochastic-layer VAE and its optimisation (their section 5 and Table 1).
BURDA_MODEL: dict[str, Any] = {
    "hidden_dim": 200,
    "hidden_layers": 2,
    "latent_dim": 50,
    "activation": "tanh",
    "batch_size": 20,
    "optimizer": "adam",
    "lr": 1e-3,
    "adam_eps": 1e-4,
    "lr_schedule": "burda",
    "patience": None,
    "eval_per_decade": 4,
    "eval_iw_samples": 100,
}
#: The runs notebook 07 compares: two binarised regimes, and three likelihoods for grey levels.
LIKELIHOOD_VARIANTS: tuple[dict[str, Any], ...] = (
    {"decoder": "bernoulli", "binarize": "dynamic"},
    {"decoder": "bernoulli", "binarize": "static"},
    {"decoder": "bernoulli", "binarize": "none"},
    {"decoder": "continuous_bernoulli", "binarize": "none"},
    {"decoder": "gaussian", "binarize": "none"},
)


def n_train(dataset: str, train_subset: int | None = None) -> int:
    """The number of training images a run of ``dataset`` sees in one epoch."""
    size = TRAIN_SIZES[dataset]
    return size if train_subset is None else min(train_subset, size)


def samples_per_epoch(config: TrainConfig) -> int:
    """Training samples one epoch of ``config`` evaluates: N for AEVB and wake-sleep, N (10 + 1) +
    5M for an MCEM iteration (:func:`vae_utils.mcem.samples_per_epoch`)."""
    n = n_train(config.dataset, config.train_subset)
    return mcem.samples_per_epoch(n, config.batch_size) if config.algorithm == "mcem" else n


def budget_samples(budget: str | int | float, dataset: str) -> int:
    """Training samples per curve: a named budget's number for ``dataset``, or the number itself."""
    check_choice("dataset", dataset, DATASETS)
    if isinstance(budget, str) and budget in BUDGETS:
        return BUDGETS[budget][dataset]
    if isinstance(budget, str):
        try:
            budget = float(budget)
        except ValueError:
            pass
    allowed = "one of " + ", ".join(repr(b) for b in BUDGETS) + " or a number of training samples >= 1"
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or not math.isfinite(budget)
        or budget < 1
    ):
        fail("budget", budget, allowed)
    return int(math.ceil(budget))


def budget_epochs(budget: str | int | float, dataset: str, train_subset: int | None = None) -> int:
    """ceil(budget / n_train): the epochs that reach the budget's training samples."""
    check_int("train_subset", train_subset, 1, optional=True)
    return math.ceil(budget_samples(budget, dataset) / n_train(dataset, train_subset))


def figure2_configs(
    budget: str | int | float = "cpu",
    train_subset: int | None = None,
    test_subset: int | None = None,
    **overrides: Any,
) -> list[TrainConfig]:
    """The paper's Figure 2 grid: 18 configurations in the figure's order, for each of
    :data:`FIGURE2_SEEDS` (54; a ``seed`` override gives one seed's 18).

    MNIST (Bernoulli decoder, 500 hidden units) with N_z = 3, 5, 10, 20, 200 and Frey Face (Gaussian
    decoder with a sigmoid mean, 200 hidden units) with N_z = 2, 5, 10, 20, each trained with AEVB
    and with wake-sleep, all with the paper's protocol: N(0, 0.01^2) initialisation, weight decay
    1/N (the N(0, I) prior on theta), Adagrad with the step size chosen from {0.01, 0.02, 0.1} by a
    pilot of min(20,000, budget / 10) samples, M = 100, L = 1, estimator B, no early stopping, and 8
    log-spaced evaluations per decade of training samples. ``epochs`` = ceil(budget / n_train).
    The compiled step (``compile=True``). ``overrides`` (any TrainConfig field) are applied last and
    win, ``epochs`` included.
    """
    seeds = (overrides.pop("seed"),) if "seed" in overrides else FIGURE2_SEEDS
    configs = []
    for seed in seeds:
        for dataset, latents in FIGURE2_LATENTS.items():
            samples = budget_samples(budget, dataset)
            for latent_dim, algorithm in itertools.product(latents, FIGURE2_ALGORITHMS):
                values = dict(
                    dataset=dataset,
                    latent_dim=latent_dim,
                    algorithm=algorithm,
                    **FIGURE2_MODELS[dataset],
                    init="paper",
                    weight_decay=paper_weight_decay(dataset, train_subset),
                    optimizer="adagrad",
                    lr_candidates=list(PAPER_STEP_SIZES),
                    pilot_samples=min(FIGURE2_PILOT_SAMPLES, max(1, samples // 10)),
                    batch_size=100,
                    n_samples=1,
                    kl="analytic",
                    patience=None,
                    eval_per_decade=8,
                    epochs=budget_epochs(samples, dataset, train_subset),
                    train_subset=train_subset,
                    test_subset=test_subset,
                    seed=seed,
                    compile=True,  # pays after its compile cost on every point (docs/speed.md)
                )
                configs.append(TrainConfig(**{**values, **overrides}))
    return configs


def figure3_configs(
    budget: str | int | float = "cpu",
    train_subset: int | None = None,
    test_subset: int | None = None,
    **overrides: Any,
) -> list[TrainConfig]:
    """The paper's Figure 3 grid: N_train = 1,000 and 50,000 (or ``train_subset`` alone) x AEVB,
    wake-sleep and Monte Carlo EM, 6 configurations in the figure's order.

    MNIST grey levels, Bernoulli decoder, 784-100-3, Figure 2's protocol (N(0, 0.01^2) init, weight
    decay 1/N, Adagrad, M = 100, L = 1, the step-size pilot for AEVB and wake-sleep;
    :data:`FIGURE3_MCEM_LR` for MCEM), ``budget`` training samples evaluated per curve
    (:data:`FIGURE3_BUDGETS`, or a number), and :data:`FIGURE3_EVALUATIONS` evenly spaced
    evaluations of log p(x) on the first 1,000 training and test images (``eval_marginal``);
    ``compile=True`` (AEVB's and wake-sleep's step, MCEM's E-step). ``overrides`` (any TrainConfig
    field) are applied last and win.
    """
    if isinstance(budget, str) and budget in FIGURE3_BUDGETS:
        samples = FIGURE3_BUDGETS[budget]
    else:
        samples = budget_samples(budget, "mnist")
    configs = []
    for size, algorithm in itertools.product(
        FIGURE3_TRAIN_SIZES if train_subset is None else (train_subset,), FIGURE3_ALGORITHMS
    ):
        check_int("train_subset", size, 1)
        common = dict(
            FIGURE3_MODEL,
            algorithm=algorithm,
            init="paper",
            weight_decay=paper_weight_decay("mnist", size),
            optimizer="adagrad",
            batch_size=100,
            n_samples=1,
            kl="analytic",
            patience=None,
            eval_every=math.ceil(samples / FIGURE3_EVALUATIONS),
            eval_marginal=FIGURE3_EVAL_IMAGES,
            train_subset=size,
            test_subset=test_subset,
            compile=True,  # AEVB's and wake-sleep's steps; MCEM's E-step (docs/speed.md)
        )
        method: dict[str, Any]
        if algorithm == "mcem":
            method = dict(
                lr=FIGURE3_MCEM_LR,
                epochs=math.ceil(samples / mcem.samples_per_epoch(n_train("mnist", size), 100)),
            )
        else:
            method = dict(
                lr_candidates=list(PAPER_STEP_SIZES),
                pilot_samples=min(FIGURE2_PILOT_SAMPLES, max(1, samples // 10)),
                epochs=math.ceil(samples / n_train("mnist", size)),
            )
        configs.append(TrainConfig(**{**common, **method, **overrides}))
    return configs


def likelihood_configs(
    budget: str | int | float = "cpu",
    train_subset: int | None = None,
    test_subset: int | None = None,
    **overrides: Any,
) -> list[TrainConfig]:
    """The five runs of notebook 07, all with Burda et al.'s VAE and schedule on MNIST:

    * dynamic and static binarisation, Bernoulli decoder: Table 1's regime and its static variant;
    * grey levels with the Bernoulli (a cross-entropy), the continuous Bernoulli and the Gaussian
      decoder (two densities on [0, 1]^D).

    ``budget`` names :data:`LIKELIHOOD_EPOCHS` or is a number of epochs (>= 8, one per stage); the
    schedule's eight stages shrink in proportion when it is below 3,280.
    """
    if isinstance(budget, str) and budget in LIKELIHOOD_EPOCHS:
        epochs = LIKELIHOOD_EPOCHS[budget]
    else:
        try:
            epochs = int(float(budget))
        except (TypeError, ValueError):
            epochs = -1
        if epochs < 8 or isinstance(budget, bool):
            fail(
                "budget",
                budget,
                "one of " + ", ".join(repr(b) for b in LIKELIHOOD_EPOCHS) + " or a number of epochs >= 8",
            )
    return [
        TrainConfig(
            **{
                **BURDA_MODEL,
                **variant,
                "dataset": "mnist",
                "epochs": epochs,
                "compile": True,  # the compiled step: 1.6-1.8x, on every decoder (docs/speed.md)
                "train_subset": train_subset,
                "test_subset": test_subset,
                **overrides,
            }
        )
        for variant in LIKELIHOOD_VARIANTS
    ]


#: The presets the sweep offers: name -> function(budget, train_subset, test_subset, **overrides).
PRESETS = {"figure2": figure2_configs, "figure3": figure3_configs, "likelihoods": likelihood_configs}
