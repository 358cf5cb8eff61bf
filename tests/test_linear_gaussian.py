"""Value tests of vae_utils.linear_gaussian: exact quantities against brute force and Bayes' rule,
the identity log p(x) = KL(q || p(z|x)) + ELBO (eq. 1), and the Monte-Carlo estimators against
their closed forms."""

import math

import pandas as pd
import pytest
import torch

from vae_utils import linear_gaussian as lg
from vae_utils.loss import kl_standard_normal, reparameterize

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def model_and_x():
    g = gen(0)
    model = lg.LinearGaussian.random(latent_dim=2, data_dim=4, noise_std=0.7, generator=g)
    return model, model.sample(1, g)[0]


def random_diagonal_q(n: int, k: int, g: torch.Generator):
    mu = 2 * torch.randn(n, k, generator=g, dtype=F64)
    logvar = 4 * torch.rand(n, k, generator=g, dtype=F64) - 3
    return mu, logvar


def grid_1d():
    """A 1-D model and a fine grid over z for brute-force integrals."""
    model = lg.LinearGaussian(
        torch.tensor([[1.5], [-0.8]], dtype=F64), torch.tensor([0.3, -0.2], dtype=F64), noise_std=0.6
    )
    x = torch.tensor([1.1, -0.9], dtype=F64)
    z = torch.linspace(-12, 12, 40_001, dtype=F64)
    return model, x, z


def test_log_marginal_matches_numerical_integral_1d():
    model, x, z = grid_1d()
    joint = model.log_joint(x, z[:, None]).exp()  # p(x|z) p(z) on the grid
    assert math.log(torch.trapezoid(joint, z)) == pytest.approx(model.log_marginal(x).item(), abs=1e-9)


def test_posterior_is_bayes_rule_1d():
    model, x, z = grid_1d()
    bayes = (model.log_joint(x, z[:, None]) - model.log_marginal(x)).exp()
    exact = model.posterior(x).log_prob(z[:, None]).exp()
    torch.testing.assert_close(exact, bayes, atol=1e-10, rtol=1e-8)


def test_posterior_is_bayes_rule_2d(model_and_x):
    """p(z|x) p(x) = p(x|z) p(z) at arbitrary z."""
    model, x = model_and_x
    z = torch.randn(50, 2, generator=gen(1), dtype=F64)
    torch.testing.assert_close(model.posterior(x).log_prob(z) + model.log_marginal(x), model.log_joint(x, z))


def test_batched_x_matches_rows(model_and_x):
    model, _ = model_and_x
    xs = model.sample(3, gen(2))
    post = model.posterior(xs)
    for i in range(3):
        assert model.log_marginal(xs)[i].item() == pytest.approx(model.log_marginal(xs[i]).item())
        torch.testing.assert_close(post.loc[i], model.posterior(xs[i]).loc)


def test_identity_log_px_equals_kl_plus_elbo(model_and_x):
    """Eq. 1 for diagonal and full-covariance Gaussian q's; the gap is >= 0."""
    model, x = model_and_x
    g = gen(3)
    mu, logvar = random_diagonal_q(20, 2, g)
    a = torch.randn(20, 2, 2, generator=g, dtype=F64)
    qs = [
        lg.diagonal_gaussian(mu, logvar),
        torch.distributions.MultivariateNormal(mu, a @ a.mT + 0.1 * torch.eye(2, dtype=F64)),
    ]
    for q in qs:
        gap = model.log_marginal(x) - model.elbo(x, q)
        torch.testing.assert_close(gap, model.kl_to_posterior(x, q), atol=1e-10, rtol=1e-10)
        assert (gap > 0).all()


def test_gap_closes_at_true_posterior(model_and_x):
    model, x = model_and_x
    post = model.posterior(x)
    assert model.elbo(x, post).item() == pytest.approx(model.log_marginal(x).item(), abs=1e-12)
    assert model.kl_to_posterior(x, post).item() == pytest.approx(0.0, abs=1e-12)
    # estimator A then has zero variance: every sample is log p(x)
    w = lg.log_weights(model, x, post, 100, gen(4))
    torch.testing.assert_close(w, model.log_marginal(x).expand(100))


def test_mean_field_posterior_maximises_elbo_over_diagonal_q(model_and_x):
    model, x = model_and_x
    mu, logvar = model.mean_field_posterior(x)
    torch.testing.assert_close(
        lg.exact_elbo_gradient(model, x, mu, logvar), torch.zeros(4, dtype=F64), atol=1e-10, rtol=0
    )
    best = model.elbo(x, lg.diagonal_gaussian(mu, logvar))
    others = model.elbo(x, lg.diagonal_gaussian(*random_diagonal_q(50, 2, gen(5))))
    assert (others < best).all() and best < model.log_marginal(x)


def test_closed_form_kl_matches_torch_distributions():
    """App. B's -KL = 1/2 sum(1 + log sigma^2 - mu^2 - sigma^2) and torch's KL of a diagonal MVN."""
    mu, logvar = random_diagonal_q(10, 3, gen(6))
    prior = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64))
    torch.testing.assert_close(
        kl_standard_normal(mu, logvar).sum(-1),
        torch.distributions.kl_divergence(lg.diagonal_gaussian(mu, logvar), prior),
    )


def test_monte_carlo_kl_is_unbiased():
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    logvar = torch.tensor([-1.0, 0.7], dtype=F64)
    samples = lg.monte_carlo_kl(mu, logvar, 200_000, gen(7))
    se = samples.std() / math.sqrt(len(samples))
    assert abs(samples.mean() - kl_standard_normal(mu, logvar).sum()) < 4 * se


@pytest.mark.parametrize("kl", ["mc", "analytic"])
def test_estimators_a_and_b_are_unbiased(model_and_x, kl):
    """Estimators A (eq. 6) and B (eq. 7), run through vae_utils.loss.elbo, average to eq. 3."""
    model, x = model_and_x
    mu, logvar = torch.tensor([0.3, -0.4], dtype=F64), torch.tensor([-0.5, -1.2], dtype=F64)
    estimates = lg.monte_carlo_elbo(model, x.expand(2000, -1), mu, logvar, 10, kl, gen(8)).elbo
    exact = model.elbo(x, lg.diagonal_gaussian(mu, logvar))
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / math.sqrt(len(estimates))


def test_variance_of_estimators_a_and_b(model_and_x):
    """B has the lower variance for a q far from the posterior (typically, as the paper says); near
    the posterior A's sampled terms cancel (exactly, at the posterior) and A has the lower one."""
    model, x = model_and_x
    xs = x.expand(2000, -1)
    mu, logvar = model.mean_field_posterior(x)
    for shift, a_wins in ((0.0, True), (1.0, False)):
        a = lg.monte_carlo_elbo(model, xs, mu + shift, logvar + shift, 1, "mc", gen(9)).elbo
        b = lg.monte_carlo_elbo(model, xs, mu + shift, logvar + shift, 1, "analytic", gen(9)).elbo
        assert (a.var() < b.var()) == a_wins


def test_prior_monte_carlo_log_marginal(model_and_x):
    model, x = model_and_x
    estimate = lg.prior_monte_carlo_log_marginal(model, x, 200_000, gen(10))
    assert estimate.item() == pytest.approx(model.log_marginal(x).item(), abs=0.05)


def test_reparameterisation_variance_sigma_squared_and_typo_sigma_fourth():
    mu = torch.zeros(3, dtype=F64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    logvar = 2 * sigma.log()
    right = reparameterize(mu, logvar, 100_000, gen(11))
    typo = lg.reparameterize_typo(mu, logvar, 100_000, gen(11))
    torch.testing.assert_close(right.var(0), sigma**2, rtol=0.02, atol=0)
    torch.testing.assert_close(typo.var(0), sigma**4, rtol=0.02, atol=0)
    torch.testing.assert_close((typo - mu) / sigma**2, (right - mu) / sigma)  # the same eps


def test_typo_elbo_can_exceed_log_px(model_and_x):
    """With sigma < 1 the typo samples too narrow a q: its "bound" lies above log p(x)."""
    model, x = model_and_x
    mu, logvar = model.mean_field_posterior(x)
    assert (logvar < 0).all()
    assert lg.typo_elbo(model, x, mu, logvar, 20_000, gen(12)) > model.log_marginal(x)


def test_gradient_estimators_agree_in_mean_and_differ_in_variance(model_and_x):
    model, x = model_and_x
    mu, logvar = model.mean_field_posterior(x)
    mu = mu + 0.5
    exact = lg.exact_elbo_gradient(model, x, mu, logvar)
    variances = {}
    for i, estimator in enumerate(lg.GRADIENT_ESTIMATORS):
        grads = lg.elbo_gradients(
            model, x, mu, logvar, estimator, n_samples=10, n_repeats=4000, generator=gen(13 + i)
        )
        assert grads.shape == (4000, 4)
        se = grads.std(0) / math.sqrt(len(grads))
        assert ((grads.mean(0) - exact).abs() < 5 * se + 1e-12).all(), estimator
        variances[estimator] = grads.var(0).sum().item()
    assert variances["score_function"] > 10 * variances["reparam_A"]
    assert variances["reparam_A"] > variances["reparam_B"]


def test_gradient_estimator_name_is_checked(model_and_x):
    model, x = model_and_x
    with pytest.raises(ValueError, match="estimator = 'foo'"):
        lg.elbo_gradients(model, x, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), "foo", 1, 2)


def test_rounded():
    frame = pd.DataFrame({"name": ["a", "b", "c"], "v": [123456.789, 0.000123456, -3e-13]})
    out = lg.rounded(frame, digits=3)
    assert out["v"].tolist() == [123000.0, 0.000123, 0.0]
    assert math.copysign(1.0, out["v"][2]) == 1.0  # no "-0.0"
    assert out["name"].tolist() == ["a", "b", "c"]
