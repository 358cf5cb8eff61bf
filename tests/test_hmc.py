"""The vectorised HMC sampler (vae_utils.hmc) against Gaussian targets, whose moments are exact."""

from __future__ import annotations

import math

import pytest
import torch

from vae_utils.hmc import adapt_step_size, hmc_transition, leapfrog, log_density_and_grad, sample_chains

D = 3


def gaussian_rows(n: int, seed: int = 0):
    """n independent targets N(m_b, S), one per row: different means, one correlated covariance."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(D, dtype=torch.float64)
    means = 3 * torch.randn(n, D, generator=g, dtype=torch.float64)
    precision = torch.linalg.inv(cov)

    def log_density(z: torch.Tensor) -> torch.Tensor:
        d = z - means
        return -0.5 * ((d @ precision) * d).sum(-1)

    return log_density, means, cov


def test_the_gradient_is_each_rows_own():
    log_density, means, _ = gaussian_rows(4)
    z = torch.zeros(4, D, dtype=torch.float64)
    value, grad = log_density_and_grad(log_density, z)
    assert torch.allclose(value, log_density(z))
    precision = torch.linalg.inv(gaussian_rows(4)[2])
    assert torch.allclose(grad, (means - z) @ precision)  # d/dz -1/2 (z-m)' P (z-m) = P (m - z)


def test_a_transition_leaves_the_target_invariant():
    """Start 20,000 one-dimensional chains at exact draws of N(0, 1): after one transition (a long
    step, so that many are rejected) they are still N(0, 1) draws. A wrong acceptance rule (a
    missing kinetic term, a sign error) moves the variance by far more than the test's 4 sigma."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(20_000, 1, generator=g, dtype=torch.float64)
    out = hmc_transition(lambda z: -0.5 * z.pow(2).sum(-1), z, 1.6, 3, g)
    rate = out.accepted.double().mean().item()
    assert 0.2 < rate < 0.95  # both outcomes happen
    assert abs(out.z.mean().item()) < 4 / math.sqrt(20_000)
    assert abs(out.z.var().item() - 1) < 4 * math.sqrt(2 / 20_000)
    assert torch.equal(out.z[~out.accepted], z[~out.accepted])  # a rejected row keeps its state
    assert torch.allclose(out.log_density, -0.5 * out.z.pow(2).sum(-1))
    assert torch.allclose(out.grad, -out.z)


def test_chains_reach_their_own_rows_target_and_the_acceptance_target():
    log_density, means, cov = gaussian_rows(300)
    g = torch.Generator().manual_seed(1)
    chain = sample_chains(log_density, torch.zeros(300, D, dtype=torch.float64), 150, 4, 0.05, g, burn_in=50)
    assert chain.draws.shape == (150, 300, D) and chain.log_density.shape == (150, 300)
    assert abs(chain.acceptance.mean().item() - 0.9) < 0.03  # App. E's target, from a step 0.05
    centred = (chain.draws - means).reshape(-1, D)
    assert centred.mean(0).abs().max().item() < 0.1  # each row around its own mean
    assert torch.allclose(torch.cov(centred.T), cov, atol=0.06 * cov.diagonal().max().item())


def test_a_row_whose_proposal_is_not_finite_is_rejected_alone():
    def log_density(z: torch.Tensor) -> torch.Tensor:  # row 0's density is NaN away from 0
        value = -0.5 * z.pow(2).sum(-1)
        return torch.where(
            torch.arange(len(z)) == 0, value + (z.abs().sum(-1) > 0).double() * math.nan, value
        )

    z = torch.zeros(5, 2, dtype=torch.float64)
    out = hmc_transition(log_density, z, 0.01, 2, torch.Generator().manual_seed(0))
    assert not out.accepted[0] and torch.equal(out.z[0], z[0])
    assert out.accepted[1:].all() and (out.z[1:] != 0).all()


def test_the_same_seed_gives_the_same_chain():
    log_density, _, _ = gaussian_rows(5)
    z0 = torch.zeros(5, D, dtype=torch.float64)
    runs = [sample_chains(log_density, z0, 10, 3, 0.3, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0].draws, runs[1].draws) and runs[0].step_size == runs[1].step_size


def test_adapt_step_size_moves_toward_the_target_and_caps_the_factor():
    assert adapt_step_size(0.1, 0.9) == pytest.approx(0.1)
    assert adapt_step_size(0.1, 0.95) == pytest.approx(0.1 * math.exp(0.05))  # more accepted: longer
    assert adapt_step_size(0.1, 0.0) == pytest.approx(0.1 / 1.25)  # none accepted: capped at 1.25
    assert adapt_step_size(0.1, 1.0, target=0.5) == pytest.approx(0.125)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_leapfrog": 0}, "n_leapfrog = 0 is invalid: allowed an integer >= 1"),
        ({"step_size": 0.0}, "step_size = 0.0 is invalid: allowed a finite number > 0"),
        ({"step_size": math.inf}, "step_size = inf is invalid"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    arguments = {"n_leapfrog": 2, "step_size": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        hmc_transition(
            lambda z: -z.pow(2).sum(-1), torch.zeros(2, 1), generator=torch.Generator(), **arguments
        )


def test_leapfrog_is_reversible_and_its_energy_error_shrinks_with_the_step():
    log_density, _, _ = gaussian_rows(6)
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(6, D, generator=g, dtype=torch.float64)
    v0 = torch.randn(6, D, generator=g, dtype=torch.float64)
    value0, grad0 = log_density_and_grad(log_density, z0)
    z1, v1, value1, grad1 = leapfrog(log_density, z0, v0, grad0, 0.1, 7)
    back = leapfrog(log_density, z1, -v1, grad1, 0.1, 7)
    assert torch.allclose(back[0], z0, atol=1e-12) and torch.allclose(-back[1], v0, atol=1e-12)

    def energy_error(eps: float) -> float:
        n = round(0.8 / eps)  # the same trajectory length
        z, v, value, _ = leapfrog(log_density, z0, v0, grad0, eps, n)
        h0 = -value0 + 0.5 * v0.pow(2).sum(-1)
        return (-value + 0.5 * v.pow(2).sum(-1) - h0).abs().max().item()

    errors = [energy_error(eps) for eps in (0.1, 0.05, 0.025)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert 3.0 < errors[0] / errors[1] < 5.0 and 3.0 < errors[1] / errors[2] < 5.0  # O(eps^2)
