"""Monte Carlo EM's two steps (vae_utils.mcem): the E-step samples the exact posterior of a linear
Gaussian model, the M-step raises log p(x|z), and the cost count is what docs/methods.md says."""

from __future__ import annotations

import math

import pytest
import torch

from vae_utils import mcem
from vae_utils.hmc import TARGET_ACCEPTANCE
from vae_utils.linear_gaussian import LinearGaussian
from vae_utils.model import BernoulliDecoder


def test_the_e_step_keeps_exact_posterior_draws_exact_and_counts_its_evaluations():
    """4,000 copies of one x whose z start as exact draws of p(z|x): after E-steps (chunked, the
    step size adapting) they are still draws of p(z|x), whose mean and covariance are exact."""
    g = torch.Generator().manual_seed(0)
    model = LinearGaussian.random(2, 6, noise_std=1.0, generator=g)
    x = model.sample(1, g).expand(4000, -1)
    posterior = model.posterior(x[:1])
    z0 = posterior.sample((4000,))[:, 0]  # posterior of the batch of one: (4000, 1, 2)
    state = mcem.MCEMState(z0.clone(), step_size=0.3)
    for _ in range(3):
        mcem.e_step(model, x, state, g, n_leapfrog=5, chunk=1500)
    assert state.evaluations == 3 * 4000 * 6
    assert 0.5 < state.acceptance <= 1.0 and state.step_size != 0.3
    assert not torch.equal(state.z, z0)
    mean, cov = posterior.loc.reshape(-1), posterior.covariance_matrix.reshape(2, 2)
    assert torch.allclose(
        state.z.mean(0), mean, atol=4 * cov.diagonal().max().sqrt().item() / math.sqrt(4000)
    )
    assert torch.allclose(torch.cov(state.z.T), cov, atol=0.1 * cov.diagonal().max().item())


def test_the_e_step_moves_chains_from_the_prior_toward_the_posterior():
    g = torch.Generator().manual_seed(1)
    model = LinearGaussian.random(2, 20, noise_std=0.5, generator=g)
    x = model.sample(200, g)
    state = mcem.MCEMState.start(200, 2, g, torch.float64, torch.device("cpu"))
    truth = model.posterior(x).loc
    before = (state.z - truth).norm(dim=-1).mean().item()
    for _ in range(30):
        mcem.e_step(model, x, state, g)
    after = (state.z - truth).norm(dim=-1).mean().item()
    posterior_spread = model.posterior(x).covariance_matrix.diagonal().sum().sqrt().item()
    assert after < 3 * posterior_spread < before  # from the prior's scale to the posterior's
    assert abs(state.acceptance - TARGET_ACCEPTANCE) < 0.2


def test_the_m_step_raises_log_p_x_given_the_sample_and_counts_its_minibatches():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    decoder = BernoulliDecoder(2, 16, 30).double()
    x = (torch.rand(300, 30, generator=g, dtype=torch.float64) < 0.3).double()
    state = mcem.MCEMState(torch.randn(300, 2, generator=g, dtype=torch.float64), step_size=0.1)
    optimizer = torch.optim.Adagrad(decoder.parameters(), lr=0.05)

    def log_px_z() -> float:
        with torch.no_grad():
            return decoder.log_prob(x, state.z).mean().item()

    before = log_px_z()
    values = torch.cat([mcem.m_step(decoder, optimizer, x, state, 50, g) for _ in range(20)])
    assert values.shape == (100,) and torch.isfinite(values).all()
    assert log_px_z() > before + 1.0
    assert state.evaluations == 20 * mcem.M_STEPS * 50


def test_an_epoch_is_one_iteration_and_counts_what_it_evaluates():
    assert mcem.samples_per_epoch(1000, 100) == 1000 * 11 + 5 * 100  # 11,500: HMC 11,000, M-step 500
    assert mcem.samples_per_epoch(50_000, 100) == 550_500
    assert mcem.samples_per_epoch(30, 100) == 30 * 11 + 5 * 30  # a minibatch never exceeds N
    g = torch.Generator().manual_seed(0)
    decoder = BernoulliDecoder(3, 8, 12)
    x = torch.rand(40, 12, generator=g)
    state = mcem.MCEMState.start(40, 3, g, torch.float32, torch.device("cpu"))
    optimizer = torch.optim.Adagrad(decoder.parameters(), lr=0.01)
    out = mcem.mcem_epoch(decoder, optimizer, x, state, 16, g)
    assert out.shape == (mcem.M_STEPS, 2) and torch.equal(out[:, 1], -out[:, 0])
    assert state.evaluations == mcem.samples_per_epoch(40, 16)


@pytest.mark.parametrize("n_leapfrog", [1, 10])
def test_the_e_step_costs_n_leapfrog_plus_one_evaluations_per_point(n_leapfrog):
    g = torch.Generator().manual_seed(3)
    model = LinearGaussian.random(3, 4, noise_std=1.0, generator=g)
    state = mcem.MCEMState.start(7, 3, g, torch.float64, torch.device("cpu"))
    mcem.e_step(model, model.sample(7, g), state, g, n_leapfrog=n_leapfrog)
    assert state.evaluations == 7 * (n_leapfrog + 1)
