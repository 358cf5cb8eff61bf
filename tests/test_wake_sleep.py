"""Wake-sleep (Figure 2's baseline) and the paper's protocol options: the step-size pilot, log-spaced
evaluation and Burda et al.'s schedule.

The sleep phase is checked on the exactly solvable linear-Gaussian model: with the decoder fixed,
it must drive a linear-Gaussian encoder to the exact posterior. The wake phase must leave the
encoder's parameters without gradient, and the sleep phase the decoder's. Wake-sleep runs must be
deterministic, resumable and stopped by a NaN, as AEVB runs are.
"""

import math

import pandas as pd
import pytest
import torch
from small_runs import BATCH, small_run_config
from torch import nn

import vae_utils.steps as S
import vae_utils.training as T
from vae_utils.config import BURDA_EPOCHS, TrainConfig
from vae_utils.data import load_dataset
from vae_utils.linear_gaussian import LinearGaussian
from vae_utils.model import VAE
from vae_utils.runfiles import load_run
from vae_utils.steps import sleep_loss, wake_loss
from vae_utils.training import (
    TrainingDiverged,
    burda_stage,
    choose_step_size,
    evaluation_due,
    scheduled_lr,
    train,
)

N_TRAIN, N_TEST = 600, 200


def make_config(run_dir, shared_data, **overrides) -> TrainConfig:
    sizes = {
        "hidden_dim": 40,
        "latent_dim": 3,
        "train_subset": N_TRAIN,
        "test_subset": N_TEST,
        "algorithm": "wake_sleep",
    }
    return small_run_config(run_dir, shared_data, **{**sizes, **overrides})


@pytest.fixture(scope="module")
def mnist_small(shared_data):
    return load_dataset("mnist", shared_data, train_subset=N_TRAIN, test_subset=N_TEST)


# ----------------------------------------------------------------------------- the two phases


class LinearGaussianVAE(nn.Module):
    """A linear-Gaussian encoder q(z|x) = N(A x + c, diag exp(v)) in front of a fixed
    :class:`LinearGaussian` decoder: the interface that sleep_loss uses."""

    def __init__(self, truth: LinearGaussian):
        super().__init__()
        self.truth, self.latent_dim = truth, truth.latent_dim
        self.linear = nn.Linear(truth.data_dim, truth.latent_dim).double()
        self.logvar = nn.Parameter(torch.zeros(truth.latent_dim, dtype=torch.float64))
        self.decoder = self  # decoder.sample(z, generator): x ~ p(x|z)

    def encode(self, x):
        return self.linear(x), self.logvar.expand(*x.shape[:-1], self.latent_dim)

    def sample_prior(self, n, generator=None):
        return torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)

    def sample(self, z, generator=None):
        noise = torch.randn(len(z), self.truth.data_dim, generator=generator, dtype=torch.float64)
        return z @ self.truth.W.T + self.truth.b + self.truth.noise_std * noise


def test_sleep_phase_drives_q_to_the_exact_posterior():
    """p(x|z) = N(W z + b, s^2 I) with orthogonal columns in W, so that the posterior
    N(m(x), S) has a diagonal S and lies inside the encoder's family. Sleep steps (Adam, decaying
    step size) must bring q's mean map to m(x) and its variances to diag S."""
    torch.manual_seed(0)
    q_basis, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
    truth = LinearGaussian(
        q_basis * torch.tensor([1.5, 0.7], dtype=torch.float64),
        torch.randn(5, dtype=torch.float64),
        noise_std=0.5,
    )
    model = LinearGaussianVAE(truth)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4000):
        optimizer.zero_grad()
        sleep_loss(model, 1000, generator).backward()
        optimizer.step()
        schedule.step()
    x = truth.sample(20, torch.Generator().manual_seed(2))
    posterior = truth.posterior(x)
    mu, logvar = model.encode(x)
    assert torch.allclose(mu, posterior.loc, atol=0.01), (mu - posterior.loc).abs().max()
    exact_variances = posterior.covariance_matrix[0].diagonal()
    assert torch.allclose(logvar[0].exp(), exact_variances, rtol=0.02), (logvar[0].exp(), exact_variances)
    # the starting point, q = N(0, I) for every x, was far from it
    assert (posterior.loc.abs().max() > 0.5) and (exact_variances.max() < 0.5)


def test_each_phase_reaches_only_its_own_networks(mnist_small):
    """The wake loss has gradients for the decoder only, the sleep loss for the encoder only; both
    are finite, and the wake phase's minibatch ELBO is the estimator-B ELBO of the pair."""
    torch.manual_seed(0)
    model = VAE(784, 40, 3)
    x = mnist_small.x_train[:50]
    wake, minibatch_elbo = wake_loss(model, x, 1, torch.Generator().manual_seed(0))
    wake.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    from vae_utils.loss import elbo

    expected = elbo(model, x, 1, "analytic", torch.Generator().manual_seed(0)).elbo.mean()
    assert torch.allclose(minibatch_elbo, expected.detach())
    model.zero_grad(set_to_none=True)
    sleep_loss(model, 50, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_fantasies_are_samples_of_the_decoder(decoder):
    """Sleep trains on x~ ~ p(x|z): binary for the Bernoulli decoder, continuous otherwise (and in
    [0, 1] for the continuous Bernoulli)."""
    torch.manual_seed(0)
    model = VAE(20, 10, 2, decoder=decoder)
    x = model.sample_x(
        model.sample_prior(200, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1)
    )
    values = x.unique()
    if decoder == "bernoulli":
        assert set(values.tolist()) <= {0.0, 1.0}
    else:
        assert len(values) > 1000
    if decoder == "continuous_bernoulli":
        assert x.min() >= 0 and x.max() <= 1


# ----------------------------------------------------------------------------- wake-sleep runs


def test_wake_sleep_runs_are_deterministic_and_learn(tmp_path, shared_data, mnist_small):
    a = train(make_config(tmp_path / "a", shared_data), progress=False, data=mnist_small)
    b = train(make_config(tmp_path / "b", shared_data), progress=False, data=mnist_small)
    pd.testing.assert_frame_equal(
        a.history.drop(columns="seconds"), b.history.drop(columns="seconds"), check_exact=True
    )
    h = a.history
    assert h["samples"].tolist() == [N_TRAIN, 2 * N_TRAIN, 3 * N_TRAIN]
    assert h["test_elbo"].iloc[-1] > h["test_elbo"].iloc[0] + 5, h["test_elbo"].tolist()
    assert ((h["test_recon"] - h["test_kl"] - h["test_elbo"]).abs() < 1e-3).all()
    aevb = train(make_config(tmp_path / "c", shared_data, algorithm="aevb"), progress=False, data=mnist_small)
    assert (aevb.history["test_elbo"] != h["test_elbo"]).all()
    assert load_run(a.path).config.algorithm == "wake_sleep"


def test_resumed_wake_sleep_run_equals_uninterrupted_run(tmp_path, shared_data, mnist_small, monkeypatch):
    full = train(make_config(tmp_path / "full", shared_data, epochs=3), progress=False, data=mnist_small)
    config = make_config(tmp_path / "cut", shared_data, epochs=3)
    real, calls = S.sleep_loss, {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == N_TRAIN // BATCH + 2:  # in the middle of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "sleep_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, data=mnist_small)
    monkeypatch.undo()
    assert len(pd.read_csv(config.path / "history.csv")) == 1
    resumed = train(config, resume=True, progress=False, data=mnist_small)
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="seconds"), full.history.drop(columns="seconds"), check_exact=True
    )


def test_nan_in_the_sleep_phase_stops_wake_sleep(tmp_path, shared_data, mnist_small, monkeypatch):
    """A NaN sleep loss (which the minibatch ELBO does not contain) in epoch 2 stops the run with
    TrainingDiverged naming epoch and batch, and keeps epoch 1's checkpoint."""
    config = make_config(tmp_path / "run", shared_data, epochs=3)
    real, calls = S.sleep_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * math.nan if calls["n"] == N_TRAIN // BATCH + 4 else out

    monkeypatch.setattr(S, "sleep_loss", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        train(config, progress=False, data=mnist_small)
    message = str(info.value)
    assert "epoch 2, batch 4 of 6" in message and "(epoch 1)" in message
    run = load_run(config.path, checkpoint="last")
    assert run.history["epoch"].tolist() == [1]
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values())


# ----------------------------------------------------------------------------- the protocol


def test_evaluation_due_at_log_spaced_sample_counts():
    """With 4 points per decade, Frey Face (1,765 images an epoch) is evaluated after the first
    epoch and then after each epoch that first reaches 10^(j/4) samples: 1,778 (epoch 2), 3,162
    (also epoch 2), 5,623 (epoch 4), 10^4 (epoch 6), ... 562,341 (epoch 319)."""
    assert all(evaluation_due(e, e - 1, None) for e in range(1, 5))
    n = 1765
    due = [e for e in range(1, 400) if evaluation_due(e * n, (e - 1) * n, 4)]
    assert due == [1, 2, 4, 6, 11, 18, 32, 57, 101, 180, 319]
    assert evaluation_due(10**6, 10**6 - 1, 8) and not evaluation_due(10**6 + 1, 10**6, 8)


def test_evaluation_due_at_multiples_of_eval_every():
    """Figure 3's linear axis: an evaluation after each epoch that reaches the next multiple."""
    n = 600
    due = [e for e in range(1, 21) if evaluation_due(e * n, (e - 1) * n, None, every=2500)]
    assert due == [5, 9, 13, 17]  # 3,000 >= 2,500; 5,400 >= 5,000; 7,800 >= 7,500; 10,200 >= 10,000
    assert evaluation_due(5000, 4999, 8, every=5000) and not evaluation_due(5001, 5000, 8, every=5000)


def test_an_evenly_spaced_run_evaluates_at_those_epochs_and_at_the_last(tmp_path, shared_data, mnist_small):
    config = make_config(
        tmp_path / "run", shared_data, algorithm="aevb", epochs=7, eval_every=1500, patience=None
    )
    run = train(config, progress=False, data=mnist_small)
    assert run.history["samples"].tolist() == [1800, 3000, 4200]  # 600 an epoch; the last is 4,200


def test_log_spaced_run_evaluates_at_those_epochs_and_at_the_last(tmp_path, shared_data, mnist_small):
    config = make_config(
        tmp_path / "run", shared_data, algorithm="aevb", epochs=12, eval_per_decade=3, patience=None
    )
    run = train(config, progress=False, data=mnist_small)
    # 600 images an epoch; points 10^(j/3): 1000 (epoch 2), 2154 (4), 4642 (8), then the last (12)
    assert run.history["epoch"].tolist() == [1, 2, 4, 8, 12]
    assert run.history["samples"].tolist() == [600, 1200, 2400, 4800, 7200]


def test_burda_schedule_stages():
    """3^i epochs in stage i at the full 3,280 epochs; a shortened run keeps eight stages of at least
    one epoch each, in proportion; the step size is lr * 10^(-i/7)."""
    full = [burda_stage(e, BURDA_EPOCHS) for e in range(1, BURDA_EPOCHS + 1)]
    assert [full.count(i) for i in range(8)] == [3**i for i in range(8)]
    short = [burda_stage(e, 82) for e in range(1, 83)]
    assert sorted(set(short)) == list(range(8)) and short == sorted(short)
    assert [short.count(i) for i in range(8)] == [1, 1, 1, 1, 1, 4, 18, 55]
    config = TrainConfig(lr_schedule="burda", optimizer="adam", lr=1e-3, epochs=BURDA_EPOCHS)
    assert scheduled_lr(config, 1, 1e-3) == 1e-3
    assert scheduled_lr(config, BURDA_EPOCHS, 1e-3) == pytest.approx(1e-3 * 10 ** (-1))
    assert scheduled_lr(TrainConfig(), 50, 0.01) == 0.01


def test_burda_schedule_is_applied_and_resumes(tmp_path, shared_data, mnist_small):
    config = make_config(
        tmp_path / "run",
        shared_data,
        algorithm="aevb",
        optimizer="adam",
        lr=1e-3,
        adam_eps=1e-4,
        lr_schedule="burda",
        epochs=8,
        batch_size=200,
    )
    run = train(config, progress=False, data=mnist_small)
    saved = torch.load(config.path / "last.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert saved["lr"] == pytest.approx(1e-3 * 10 ** (-1))  # the last epoch is stage 7
    assert saved["eps"] == 1e-4
    assert len(run.history) == 8


def test_step_size_pilot_is_recorded_and_chosen(tmp_path, shared_data, mnist_small):
    """Each candidate trains pilot_samples from the same initialisation; the best training ELBO
    wins; the table is saved as lr_pilot.csv and the run uses (and reports) the chosen lr; a
    resumed run reads the choice back instead of piloting again."""
    config = make_config(
        tmp_path / "run",
        shared_data,
        algorithm="aevb",
        epochs=1,
        lr_candidates=[0.001, 0.02, 50.0],
        pilot_samples=300,
    )
    lr, table = choose_step_size(config, mnist_small, torch.device("cpu"), progress=False)
    assert table["lr"].tolist() == [0.001, 0.02, 50.0]
    assert (table["samples"] == 300).all() and table["chosen"].sum() == 1
    best = table["train_elbo"].where(table["train_elbo"].map(math.isfinite)).idxmax()
    assert lr == table.loc[best, "lr"] and table.loc[table["chosen"], "lr"].item() == lr
    assert lr == 0.02  # 0.001 learns too slowly, 50 blows up
    run = train(config, progress=False, data=mnist_small)
    saved = pd.read_csv(config.path / "lr_pilot.csv")
    pd.testing.assert_frame_equal(saved.drop(columns="seconds"), table.drop(columns="seconds"))
    assert run.lr == 0.02 and load_run(config.path).lr == 0.02
    assert (
        torch.load(config.path / "last.pt", weights_only=False)["optimizer"]["param_groups"][0]["lr"] == 0.02
    )
    config.epochs = 2  # not a different experiment for the pilot
    with pytest.raises(ValueError, match="epochs"):
        train(config, resume=True, progress=False, data=mnist_small)


def test_a_pilot_where_every_candidate_diverges_is_an_error(shared_data, mnist_small, tmp_path):
    config = make_config(
        tmp_path / "run", shared_data, algorithm="aevb", lr_candidates=[1e6, 1e7], pilot_samples=200
    )
    with pytest.raises(TrainingDiverged, match="every step size"):
        choose_step_size(config, mnist_small, torch.device("cpu"), progress=False)


def test_a_long_stretch_without_evaluation_still_checkpoints_and_resumes(
    tmp_path, shared_data, mnist_small, monkeypatch
):
    """With log-spaced evaluation, epochs between evaluations are saved to last.pt once
    CHECKPOINT_SECONDS have passed (0 here: every epoch), so an interruption loses little; the
    resumed run still equals the uninterrupted one."""
    values = dict(algorithm="aevb", epochs=6, eval_per_decade=1, patience=None)
    full = train(make_config(tmp_path / "full", shared_data, **values), progress=False, data=mnist_small)
    assert full.history["epoch"].tolist() == [1, 2, 6]  # 600, 1200 (>= 10^3), then the last
    monkeypatch.setattr(T, "CHECKPOINT_SECONDS", 0.0)
    config = make_config(tmp_path / "cut", shared_data, **values)
    real, calls = S.aevb_loss, {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 * N_TRAIN // BATCH + 3:  # in epoch 5, after epoch 4 was saved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "aevb_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(config, progress=False, data=mnist_small)
    monkeypatch.setattr(S, "aevb_loss", real)
    assert torch.load(config.path / "last.pt", weights_only=False)["epoch"] == 4
    assert len(pd.read_csv(config.path / "history.csv")) == 2
    resumed = train(config, resume=True, progress=False, data=mnist_small)
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="seconds"), full.history.drop(columns="seconds"), check_exact=True
    )


def test_importance_weighted_log_likelihood_during_training(tmp_path, shared_data, mnist_small):
    """eval_iw_samples = k records the test log p(x) estimate at each evaluation, which lies
    above the test ELBO (a tighter bound); without it the column is empty."""
    run = train(
        make_config(tmp_path / "a", shared_data, algorithm="aevb", epochs=2, eval_iw_samples=20),
        progress=False,
        data=mnist_small,
    )
    h = run.history
    assert h["test_log_px"].notna().all() and (h["test_log_px"] > h["test_elbo"]).all()
    from vae_utils.loss import importance_weighted_log_likelihood

    expected = importance_weighted_log_likelihood(run.model, mnist_small.x_test, 20, seed=1, progress=False)
    assert h["test_log_px"].iloc[-1] == pytest.approx(expected.mean().item(), abs=1e-6)
    plain = train(
        make_config(tmp_path / "b", shared_data, algorithm="aevb", epochs=1), progress=False, data=mnist_small
    )
    assert plain.history["test_log_px"].isna().all()
