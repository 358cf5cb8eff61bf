"""vae_utils.marginal_likelihood against the truth: the linear-Gaussian model's exact log p(x), and a
converged grid integral for a small nonlinear (Bernoulli) decoder. The tolerances are a few times
the spread measured over seeds; the comments give the measured errors."""

from __future__ import annotations

import math

import pytest
import torch

from vae_utils import marginal_likelihood as ml
from vae_utils.linear_gaussian import LinearGaussian
from vae_utils.loss import bernoulli_log_likelihood, standard_normal_log_density

F64 = torch.float64


def linear_model(n: int = 4, latent_dim: int = 3, data_dim: int = 8, seed: int = 0):
    """A LinearGaussian (noise 0.7) and ``n`` datapoints drawn from it."""
    g = torch.Generator().manual_seed(seed)
    model = LinearGaussian.random(latent_dim, data_dim, 0.7, g)
    return model, model.sample(n, g)


def exact_draws(posterior, n: int, generator: torch.Generator) -> torch.Tensor:
    """n independent draws from a MultivariateNormal with batch shape (B,): (n, B, N_z)."""
    eps = torch.randn((n, *posterior.loc.shape), generator=generator, dtype=F64)
    return posterior.loc + (posterior.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


def std(posterior) -> torch.Tensor:
    return posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().expand_as(posterior.loc)


class TinyDecoder:
    """z (2) -> tanh (16) -> 20 Bernoulli logits, random float64 weights: non-Gaussian posteriors,
    a few of them with a second mode."""

    def __init__(self, generator: torch.Generator, gain: float = 1.5):
        self.w1 = gain * torch.randn(2, 16, generator=generator, dtype=F64)
        self.b1 = torch.randn(16, generator=generator, dtype=F64)
        self.w2 = gain * torch.randn(16, 20, generator=generator, dtype=F64) / 4
        self.b2 = torch.randn(20, generator=generator, dtype=F64)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.w1 + self.b1) @ self.w2 + self.b2

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(self.logits(z), x)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, 2, generator=generator, dtype=F64)
        return torch.bernoulli(torch.sigmoid(self.logits(z)), generator=generator)


@pytest.fixture(scope="module")
def nonlinear():
    """(decoder, x (6, 20), the grid reference log p(x) (6,)): a prior-wide box, [-6, 6]^2."""
    g = torch.Generator().manual_seed(0)
    decoder = TinyDecoder(g)
    x = decoder.sample(6, g)
    zeros = torch.zeros(6, 2, dtype=F64)
    check = ml.grid_convergence(decoder, x, zeros, torch.ones_like(zeros), 120, width=6.0)
    assert check.difference.max() < 1e-6  # measured 1e-9 between 120^2 and 240^2 cells
    return decoder, x, check.fine


# ------------------------------------------------------------------ linear Gaussian: exact log p(x)


def test_posterior_log_density_is_the_log_joint():
    model, x = linear_model()
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    log_density = ml.posterior_log_density(model, x)
    torch.testing.assert_close(log_density(z), model.log_joint(x, z), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"z.shape = \(3, 3\) is invalid: allowed \(4, N_z\)"):
        log_density(z[:3])


@pytest.mark.parametrize("latent_dim", [1, 2, 3])
def test_grid_matches_the_exact_log_marginal(latent_dim):
    model, x = linear_model(latent_dim=latent_dim)
    posterior = model.posterior(x)
    estimate = ml.grid_log_px(model, x, posterior.loc, std(posterior), 24)
    assert (estimate - model.log_marginal(x)).abs().max() < 1e-6  # measured <= 1e-14 nats


def test_grid_convergence_measures_the_grid_error():
    """10 cells per dimension are visibly off (~3e-3 nats); 20 are exact to 1e-9, so the difference
    between the two is the coarse grid's error."""
    model, x = linear_model()
    posterior, exact = model.posterior(x), model.log_marginal(x)
    check = ml.grid_convergence(model, x, posterior.loc, std(posterior), 10)
    assert (check.coarse - exact).abs().min() > 1e-4
    assert (check.fine - exact).abs().max() < 1e-9
    torch.testing.assert_close(check.difference, (check.coarse - exact).abs(), rtol=0, atol=1e-9)


def test_kde_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(2)
    fit = torch.randn(25, 2, 3, generator=g, dtype=F64) * torch.tensor([1.0, 0.3, 2.0], dtype=F64)
    points = torch.randn(7, 2, 3, generator=g, dtype=F64)
    mine = ml.kde_log_density(fit, points)
    for b in range(2):
        reference = stats.gaussian_kde(fit[:, b].T.numpy()).logpdf(points[:, b].T.numpy())
        torch.testing.assert_close(mine[:, b], torch.from_numpy(reference), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("n_draws", "latent_dim", "expected"),
    [(50, 3, "kde"), (22, 3, "diagonal"), (24, 3, "kde"), (50, 1, "diagonal"), (16, 2, "kde")],
)
def test_density_rule_is_anglepys(n_draws, latent_dim, expected):
    """A KDE where the first half holds at least 4 draws per latent dimension (and N_z > 1)."""
    model, x = linear_model(latent_dim=latent_dim)
    draws = exact_draws(model.posterior(x), n_draws, torch.Generator().manual_seed(3))
    log_joint = model.log_joint(x, draws)
    auto = ml.reciprocal_importance_log_px(draws, log_joint)
    forced = ml.reciprocal_importance_log_px(draws, log_joint, density=expected)
    torch.testing.assert_close(auto, forced, rtol=0, atol=0)


def test_reciprocal_importance_sampling_with_exact_draws():
    model, x = linear_model()
    draws = exact_draws(model.posterior(x), 2000, torch.Generator().manual_seed(4))
    error = ml.reciprocal_importance_log_px(draws, model.log_joint(x, draws)) - model.log_marginal(x)
    assert error.abs().max() < 0.06  # measured over 8 seeds: 0.006-0.026 nats at most


def test_reciprocal_importance_sampling_overestimates_in_expectation():
    """App. D's estimator at the paper's S = 50 exact draws on 1000 datapoints: it is unbiased for
    1/p(x), so its log is high on average. Measured over 5 seeds: +0.035 to +0.050 nats on average
    (s.e. 0.008), sd 0.22-0.26 per datapoint with the KDE; +0.008, sd 0.12 with a diagonal q."""
    model, x = linear_model(n=1000, seed=1)
    draws = exact_draws(model.posterior(x), 50, torch.Generator().manual_seed(5))
    error = ml.reciprocal_importance_log_px(draws, model.log_joint(x, draws)) - model.log_marginal(x)
    assert 0.02 < error.mean() < 0.1
    assert 0.15 < error.std() < 0.4


@pytest.mark.parametrize("family", ml.FAMILIES)
def test_fitted_proposal_with_exact_draws(family):
    model, x = linear_model()
    g = torch.Generator().manual_seed(6)
    draws = exact_draws(model.posterior(x), 200, g)
    error = ml.fitted_proposal_log_px(model, x, draws, 5000, g, family=family) - model.log_marginal(x)
    assert error.abs().max() < 0.03  # measured over 8 seeds: 0.005-0.013 nats at most


@pytest.mark.parametrize(("family", "low", "high"), [("gaussian", -0.4, -0.1), ("student_t", -0.1, 0.0)])
def test_fitted_proposal_underestimates_in_expectation(family, low, high):
    """A proposal fitted to draws squeezed towards their mean (0.6x: too narrow) and k = 10: the
    estimate is low on average over 500 repeats (s.e. 0.025 nats). Measured over 3 seeds: -0.18 to
    -0.27 nats for the Gaussian, -0.03 to -0.055 for the Student-t, whose heavier tails cover the
    posterior."""
    model, x = linear_model()
    g = torch.Generator().manual_seed(7)
    posterior = model.posterior(x)
    squeezed = posterior.loc + 0.6 * (exact_draws(posterior, 200, g) - posterior.loc)
    repeats = 500
    estimates = ml.fitted_proposal_log_px(
        model, x.repeat(repeats, 1), squeezed.repeat(1, repeats, 1), 10, g, family=family
    )
    error = estimates.reshape(repeats, 4).mean(0) - model.log_marginal(x)
    assert ((low < error) & (error < high)).all()


def test_hmc_log_px_matches_the_exact_log_marginal():
    """The whole HMC path with 2000 draws on 4 datapoints. Measured over 8 seeds: App. D's estimate
    0.008-0.026 nats from the truth on average, 0.04 at most; importance sampling from the same
    draws (Student-t, k = 5000) 0.013 at most."""
    model, x = linear_model()
    g = torch.Generator().manual_seed(8)
    estimate = ml.hmc_log_px(model, x, g, latent_dim=3, n_draws=2000)
    exact = model.log_marginal(x)
    assert (estimate.log_px - exact).abs().max() < 0.08
    assert (estimate.log_px - exact).abs().mean() < 0.04
    assert abs(estimate.chain.acceptance.mean().item() - 0.9) < 0.05
    proposal = ml.fitted_proposal_log_px(model, x, estimate.chain.draws, 5000, g)
    assert (proposal - exact).abs().max() < 0.03


def test_paper_protocol_on_many_datapoints():
    """App. E's 50 HMC draws with 4 leapfrog steps on 1000 datapoints. Measured over 5 seeds: App. D's
    estimate +0.02 to +0.07 nats on average, sd 0.47-0.55 per datapoint (twice that of 50 exact
    draws: the chain's draws are correlated); Student-t importance sampling (k = 5000) from the same
    50 draws 0.000 on average, sd 0.012."""
    model, x = linear_model(n=1000, seed=1)
    g = torch.Generator().manual_seed(9)
    estimate = ml.hmc_log_px(model, x, g, latent_dim=3)
    assert estimate.chain.draws.shape == (ml.PAPER_HMC_DRAWS, 1000, 3)
    error = estimate.log_px - model.log_marginal(x)
    assert -0.05 < error.mean() < 0.15 and error.std() < 0.7
    error = ml.fitted_proposal_log_px(model, x, estimate.chain.draws, 5000, g) - model.log_marginal(x)
    assert abs(error.mean()) < 0.01 and error.std() < 0.03


def test_hmc_log_px_thins_and_starts_from_z0():
    model, x = linear_model()
    z0 = model.posterior(x).loc
    estimate = ml.hmc_log_px(model, x, torch.Generator().manual_seed(10), z0, n_draws=8, burn_in=0, thin=3)
    assert estimate.chain.draws.shape == (8, 4, 3) and estimate.chain.acceptance.shape == (8,)
    torch.testing.assert_close(estimate.chain.log_density, model.log_joint(x, estimate.chain.draws))


def test_without_an_encoder_a_chain_starts_at_the_best_of_many_prior_draws():
    """best_prior_draw returns, per row, the argmax of log p(x, z) over its n prior draws (drawn in
    order from the generator), so its start is at least as good as any single draw."""
    model, x = linear_model(n=5)
    best = ml.best_prior_draw(model, x, 3, torch.Generator().manual_seed(4), n=50)
    g = torch.Generator().manual_seed(4)
    draws = torch.stack([torch.randn(5, 3, generator=g, dtype=F64) for _ in range(50)])  # (50, 5, 3)
    values = torch.stack([model.log_joint(x, z) for z in draws])
    torch.testing.assert_close(best, draws[values.argmax(0), torch.arange(5)], rtol=0, atol=0)
    assert (model.log_joint(x, best) >= values.max(0).values).all()
    with pytest.raises(ValueError, match="n = 0 is invalid"):
        ml.best_prior_draw(model, x, 3, g, n=0)


def test_chunks_give_the_same_answer(monkeypatch):
    """Chunks of 64 numbers instead of 2^22: the grid and App. D's KDE unchanged, importance sampling
    (other random numbers) still within 0.03 nats of the truth."""
    model, x = linear_model()
    posterior, exact = model.posterior(x), model.log_marginal(x)
    g = torch.Generator().manual_seed(12)
    draws = exact_draws(posterior, 200, g)
    log_joint = model.log_joint(x, draws)
    grid = ml.grid_log_px(model, x, posterior.loc, std(posterior), 12)
    ris = ml.reciprocal_importance_log_px(draws, log_joint)
    monkeypatch.setattr(ml, "MAX_ELEMENTS", 64)
    torch.testing.assert_close(ml.grid_log_px(model, x, posterior.loc, std(posterior), 12), grid)
    torch.testing.assert_close(ml.reciprocal_importance_log_px(draws, log_joint), ris)
    assert (ml.fitted_proposal_log_px(model, x, draws, 2000, g) - exact).abs().max() < 0.03


def test_float32_decoder():
    """A float32 model: the decoder sees float32 z, the estimates come back in float64."""
    g = torch.Generator().manual_seed(13)
    model = LinearGaussian.random(2, 6, 0.7, g, dtype=torch.float32)
    x = model.sample(3, g)
    exact = model.marginal().log_prob(x).double()
    posterior = model.posterior(x)
    grid = ml.grid_log_px(model, x, posterior.loc, std(posterior).float(), 30)
    assert grid.dtype == F64 and (grid - exact).abs().max() < 1e-3
    estimate = ml.hmc_log_px(model, x, g, posterior.loc, n_draws=400)
    assert estimate.log_px.dtype == F64 and (estimate.log_px - exact).abs().max() < 0.2
    proposal = ml.fitted_proposal_log_px(model, x, estimate.chain.draws, 1000, g)
    assert proposal.dtype == F64 and (proposal - exact).abs().max() < 0.03


# ------------------------------------------------------ nonlinear decoder: the grid as the reference


def test_bracket_with_exact_posterior_draws(nonlinear):
    """Independent draws from the grid's own posterior (a cell by its probability, then uniform within
    it), S = 50 per repeat, 200 repeats per datapoint: App. D's estimate is high on average,
    importance sampling (Student-t, k = 5) low. Measured over 3 seeds: App. D +0.021 to +0.026 nats
    (s.e. 0.005; sd 0.15-0.25 per estimate), importance sampling -0.021 to -0.030 (s.e. 0.008)."""
    decoder, x, reference = nonlinear
    g = torch.Generator().manual_seed(11)
    spacing, nodes_1d = 12 / 240, torch.linspace(-6 + 6 / 240, 6 - 6 / 240, 240, dtype=F64)
    nodes = torch.cartesian_prod(nodes_1d, nodes_1d)[:, None, :].expand(-1, 6, -1)
    log_joint = decoder.log_prob(x, nodes) + standard_normal_log_density(nodes)
    repeats, n = 200, 50
    cells = torch.multinomial(torch.softmax(log_joint.T, -1), repeats * n, True, generator=g)  # (6, R n)
    jitter = (torch.rand(6, repeats * n, 2, generator=g, dtype=F64) - 0.5) * spacing
    draws = nodes[cells, 0] + jitter  # (6, R n, 2)
    # (S, R * 6, 2): column r * 6 + b is repeat r of row b, as in x.repeat(R, 1)
    draws = draws.reshape(6, repeats, n, 2).permute(2, 1, 0, 3).reshape(n, repeats * 6, 2)
    xs = x.repeat(repeats, 1)
    log_joint = decoder.log_prob(xs, draws) + standard_normal_log_density(draws)
    ris = ml.reciprocal_importance_log_px(draws, log_joint).reshape(repeats, 6) - reference
    assert ris.mean() > 0.005 and (ris.mean(0) > -0.05).all() and ris.abs().max() < 1.5
    proposal = ml.fitted_proposal_log_px(decoder, xs, draws, 5, g).reshape(repeats, 6) - reference
    assert proposal.mean() < -0.005 and (proposal.mean(0) < 0.02).all() and (proposal.mean(0) > -0.15).all()


def test_bracket_with_hmc(nonlinear):
    """The HMC path, 400 draws, 4 seeds: App. D's estimate within 0.3 nats of the grid, not low on
    average; importance sampling from the same draws within 0.03, not high on average. Measured over
    16 seeds: App. D -0.008 to +0.02 on average (4 seeds), 0.18 at most; importance sampling -0.003
    to -0.0008 on average, 0.018 at most."""
    decoder, x, reference = nonlinear
    ris, proposal = [], []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        estimate = ml.hmc_log_px(decoder, x, g, latent_dim=2, n_draws=400)
        ris.append(estimate.log_px - reference)
        proposal.append(ml.fitted_proposal_log_px(decoder, x, estimate.chain.draws, 5000, g) - reference)
    ris_t, proposal_t = torch.stack(ris), torch.stack(proposal)
    assert ris_t.abs().max() < 0.3 and ris_t.mean() > -0.05
    assert proposal_t.abs().max() < 0.03 and proposal_t.mean() < 0.005


# ------------------------------------------------------------------------------------------ errors


def test_grid_refuses_more_than_three_latent_dimensions():
    model, x = linear_model(latent_dim=4)
    center = torch.zeros(4, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"N_z = 4 is invalid: allowed 1, 2 or 3"):
        ml.grid_log_px(model, x, center, torch.ones_like(center), 5)


def test_errors_name_the_field():
    model, x = linear_model()
    draws = torch.zeros(10, 4, 3, dtype=F64)
    center, scale = torch.zeros(4, 3, dtype=F64), torch.ones(4, 3, dtype=F64)
    g = torch.Generator()
    cases = [
        (lambda: ml.reciprocal_importance_log_px(draws, torch.zeros(10, 3)), r"log_joint.shape = \(10, 3\)"),
        (lambda: ml.reciprocal_importance_log_px(draws[:3], torch.zeros(3, 4)), r"S \(draws per row\) = 3"),
        (lambda: ml.reciprocal_importance_log_px(draws[0], torch.zeros(10, 4)), r"draws.shape = \(4, 3\)"),
        (lambda: ml.reciprocal_importance_log_px(draws, torch.zeros(10, 4), "kernel"), "density = 'kernel'"),
        (lambda: ml.fitted_proposal_log_px(model, x, draws[:, :3], 10, g), r"draws.shape = \(10, 3, 3\)"),
        (lambda: ml.fitted_proposal_log_px(model, x, draws, 10, g, family="t"), "family = 't'"),
        (lambda: ml.fitted_proposal_log_px(model, x, draws, 0, g), "k = 0"),
        (lambda: ml.grid_log_px(model, x[:3], center, scale, 5), r"center.shape = \(4, 3\)"),
        (lambda: ml.grid_log_px(model, x, center, scale[:, :2], 5), r"scale.shape = \(4, 2\)"),
        (lambda: ml.grid_log_px(model, x, center, -scale, 5), r"scale = a tensor in \[-1, -1\]"),
        (lambda: ml.grid_log_px(model, x[0], center, scale, 5), r"x.shape = \(8,\)"),
        (lambda: ml.hmc_log_px(model, x, g), "latent_dim = None is invalid"),
        (lambda: ml.hmc_log_px(model, x, g, center[:2]), r"z0.shape = \(2, 3\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "is invalid: allowed" in str(info.value)
    assert math.isfinite(ml.grid_log_px(model, x, center, scale, 3)[0].item())
