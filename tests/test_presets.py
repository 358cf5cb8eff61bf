"""presets.py: the experiments as TrainConfigs, with the protocols the paper and Burda et al. give."""

import pytest

from vae_utils import presets
from vae_utils.config import BURDA_EPOCHS, PAPER_STEP_SIZES


def test_figure2_grid_is_the_papers():
    configs = presets.figure2_configs("cpu")
    assert len(configs) == 54 and [c.seed for c in configs] == [0] * 18 + [1] * 18 + [2] * 18
    assert [c.seed for c in presets.figure2_configs("cpu", seed=4)] == [4] * 18  # one seed, as asked
    panels = {(c.dataset, c.latent_dim) for c in configs}
    assert panels == {("mnist", z) for z in (3, 5, 10, 20, 200)} | {("frey_face", z) for z in (2, 5, 10, 20)}
    assert all(
        {c.algorithm for c in configs if (c.dataset, c.latent_dim) == p} == {"aevb", "wake_sleep"}
        for p in panels
    )
    for c in configs:
        assert (c.init, c.optimizer, c.batch_size, c.n_samples, c.kl, c.patience) == (
            "paper",
            "adagrad",
            100,
            1,
            "analytic",
            None,
        )
        assert c.lr_candidates == list(PAPER_STEP_SIZES) and c.pilot_samples == 20_000
        assert c.compile  # the compiled step pays on every point (docs/speed.md)
        if c.dataset == "mnist":
            assert (c.decoder, c.hidden_dim, c.epochs, c.weight_decay) == ("bernoulli", 500, 50, 1 / 60_000)
        else:
            assert (c.decoder, c.hidden_dim, c.sigmoid_mean) == ("gaussian", 200, True)
            assert c.epochs == 5_666 and c.epochs * 1_765 >= 10**7 and c.weight_decay == 1 / 1_765


def test_budgets_set_epochs_from_training_samples():
    assert presets.budget_epochs("paper", "mnist") == 1_667
    assert presets.budget_epochs("paper", "frey_face") == 56_658
    assert presets.budget_epochs(1e6, "mnist", train_subset=1_000) == 1_000
    with pytest.raises(ValueError, match="budget = 'huge' is invalid: allowed one of 'paper', 'cpu'"):
        presets.budget_samples("huge", "mnist")
    tiny = presets.figure2_configs(3000, train_subset=500)
    assert {c.epochs for c in tiny} == {6} and {c.pilot_samples for c in tiny} == {300}


def test_likelihood_runs_are_burdas_model_in_five_regimes():
    configs = presets.likelihood_configs("cpu")
    regimes = [(c.decoder, c.binarize) for c in configs]
    assert regimes == [
        ("bernoulli", "dynamic"),
        ("bernoulli", "static"),
        ("bernoulli", "none"),
        ("continuous_bernoulli", "none"),
        ("gaussian", "none"),
    ]
    for c in configs:
        assert (c.hidden_dim, c.hidden_layers, c.latent_dim, c.batch_size) == (200, 2, 50, 20)
        assert (c.optimizer, c.lr, c.adam_eps, c.lr_schedule, c.epochs) == ("adam", 1e-3, 1e-4, "burda", 82)
        assert c.compile  # the compiled step covers every decoder and pays on each (docs/speed.md)
    assert {c.epochs for c in presets.likelihood_configs("paper")} == {BURDA_EPOCHS}
    assert {c.epochs for c in presets.likelihood_configs(20)} == {20}
    with pytest.raises(
        ValueError, match="budget = 7 is invalid: allowed one of 'paper', 'cpu', 'smoke' or a"
    ):
        presets.likelihood_configs(7)


def test_figure3_grid_is_the_papers_at_its_budget():
    """Two training-set sizes x AEVB, wake-sleep and MCEM, 784-100-3 on MNIST grey levels, each
    curve just past 6e7 training samples evaluated (MCEM's HMC included), 20 evenly spaced
    evaluations of log p(x) on 1,000 + 1,000 images."""
    configs = presets.figure3_configs()
    assert [(c.train_subset, c.algorithm) for c in configs] == [
        (n, a) for n in (1000, 50_000) for a in ("aevb", "wake_sleep", "mcem")
    ]
    assert all(c.compile for c in configs)  # MCEM: its E-step's HMC evaluations
    for c in configs:
        assert (c.dataset, c.decoder, c.binarize, c.latent_dim, c.hidden_dim) == (
            "mnist",
            "bernoulli",
            "none",
            3,
            100,
        )
        assert (c.init, c.optimizer, c.batch_size, c.patience, c.weight_decay) == (
            "paper",
            "adagrad",
            100,
            None,
            1 / c.train_subset,
        )
        assert (c.eval_every, c.eval_marginal, c.eval_per_decade) == (3 * 10**6, 1000, None)
        per_epoch = presets.samples_per_epoch(c)
        assert 6 * 10**7 <= c.epochs * per_epoch < 6 * 10**7 + per_epoch
        if c.algorithm == "mcem":  # no ELBO, no pilot: a fixed step size
            assert c.lr_candidates is None and c.lr == presets.FIGURE3_MCEM_LR
            assert per_epoch == c.train_subset * 11 + 500
        else:
            assert c.lr_candidates == list(PAPER_STEP_SIZES) and per_epoch == c.train_subset
    assert [c.epochs for c in configs] == [60_000, 60_000, 5_218, 1_200, 1_200, 109]
    assert presets.FIGURE3_BUDGETS["cpu"] == presets.FIGURE3_BUDGETS["paper"]


def test_figure3_takes_one_training_set_size_and_a_budget_in_samples():
    configs = presets.figure3_configs(20_000, train_subset=200, test_subset=50)
    assert [(c.train_subset, c.test_subset) for c in configs] == [(200, 50)] * 3
    assert [c.epochs for c in configs] == [100, 100, 8]  # MCEM: 200 x 11 + 5 x 100 = 2,700 per epoch
    assert {c.eval_every for c in configs} == {1000} and configs[0].pilot_samples == 2000
    with pytest.raises(ValueError, match="budget = 'huge' is invalid"):
        presets.figure3_configs("huge")
