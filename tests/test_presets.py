"""presets.py: the experiments as TrainConfigs, with the protocols the paper and Burda et al. give."""

import pytest

from vae_utils import presets
from vae_utils.config import BURDA_EPOCHS, PAPER_STEP_SIZES


def test_figure2_grid_is_the_papers():
    configs = presets.figure2_configs("cpu")
    assert len(configs) == 18
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
        assert c.compile == (c.decoder == "bernoulli")  # the compiled step supports the Bernoulli only
    assert {c.epochs for c in presets.likelihood_configs("paper")} == {BURDA_EPOCHS}
    assert {c.epochs for c in presets.likelihood_configs(20)} == {20}
    with pytest.raises(
        ValueError, match="budget = 7 is invalid: allowed one of 'paper', 'cpu', 'smoke' or a"
    ):
        presets.likelihood_configs(7)
