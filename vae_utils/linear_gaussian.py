"""A latent-variable model whose marginal likelihood and posterior are exact: the linear Gaussian
(probabilistic PCA), p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I), so p(x) = N(b, W W^T + s^2 I) and
p(z|x) = N(m, S) with S = (I + W^T W / s^2)^-1, m = S W^T (x - b) / s^2. Notebook 01 checks the
paper's section 2 against it: eq. 1 and 3, estimators A and B (eq. 6, 7) run by ``loss.elbo``
itself, the reparameterisation and its sigma^2 typo, App. B's KL, reparameterised against
score-function gradients. Work in float64: the identities then hold to ~1e-12.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vae_utils.loss import (
    ELBO,
    LOG_2PI,
    Decoder,
    elbo,
    gaussian_log_density,
    kl_standard_normal,
    reparameterize,
    standard_normal_log_density,
)

GRADIENT_ESTIMATORS = ("score_function", "reparam_A", "reparam_B")


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + b, s^2 I), with W (D, K), b (D,) and noise_std s > 0.

    ``log_prob(x, z)`` is log p(x|z), the decoder interface that ``vae_utils.loss`` calls, so this
    model can stand in for a VAE's decoder (see :class:`FixedQ`).
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, noise_std: float):
        self.W, self.b, self.noise_std = W, b, float(noise_std)
        self.logvar = torch.tensor(2 * math.log(noise_std), dtype=W.dtype)  # log s^2

    @classmethod
    def random(
        cls,
        latent_dim: int,
        data_dim: int,
        noise_std: float,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> LinearGaussian:
        """W and b drawn from N(0, 1)."""
        W = torch.randn(data_dim, latent_dim, generator=generator, dtype=dtype)
        b = torch.randn(data_dim, generator=generator, dtype=dtype)
        return cls(W, b, noise_std)

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x ~ p(x): z ~ p(z), then x ~ p(x|z). Shape (n, D)."""
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.W.dtype)
        noise = torch.randn(n, self.data_dim, generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.noise_std * noise

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) = log N(x; W z + b, s^2 I), for z of shape (..., K) and x broadcastable to (..., D)."""
        return gaussian_log_density(x, z @ self.W.T + self.b, self.logvar)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(x|z) + log p(z)."""
        return self.log_prob(x, z) + standard_normal_log_density(z)

    def marginal(self) -> MultivariateNormal:
        """p(x) = integral p(x|z) p(z) dz = N(b, W W^T + s^2 I)."""
        eye = torch.eye(self.data_dim, dtype=self.W.dtype)
        return MultivariateNormal(self.b, self.W @ self.W.T + self.noise_std**2 * eye)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """The exact marginal likelihood log p(x), the quantity the ELBO bounds (eq. 1-2)."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """The exact posterior p(z|x) = p(x|z) p(z) / p(x) = N(m, S) (Bayes' rule, both Gaussian)."""
        precision = torch.eye(self.latent_dim, dtype=self.W.dtype) + self.W.T @ self.W / self.noise_std**2
        S = torch.linalg.inv(precision)
        m = (x - self.b) @ self.W @ S / self.noise_std**2  # S symmetric: (S W^T (x - b))^T
        return MultivariateNormal(m, S)

    def expected_log_likelihood(self, x: torch.Tensor, q: MultivariateNormal) -> torch.Tensor:
        """E_q[log p(x|z)] in closed form for q = N(mu, Sigma):
        -D/2 log(2 pi s^2) - (|x - W mu - b|^2 + tr(W Sigma W^T)) / (2 s^2)."""
        residual = (x - q.loc @ self.W.T - self.b).pow(2).sum(-1)
        trace = (self.W @ q.covariance_matrix @ self.W.T).diagonal(dim1=-2, dim2=-1).sum(-1)
        return -0.5 * self.data_dim * (LOG_2PI + self.logvar) - 0.5 * (residual + trace) / self.noise_std**2

    def prior(self) -> MultivariateNormal:
        """p(z) = N(0, I)."""
        return MultivariateNormal(
            torch.zeros(self.latent_dim, dtype=self.W.dtype), torch.eye(self.latent_dim, dtype=self.W.dtype)
        )

    def elbo(self, x: torch.Tensor, q: MultivariateNormal) -> torch.Tensor:
        """L(q) = -KL(q || p(z)) + E_q[log p(x|z)] (eq. 3), exactly: no sampling."""
        return self.expected_log_likelihood(x, q) - kl_divergence(q, self.prior())

    def kl_to_posterior(self, x: torch.Tensor, q: MultivariateNormal) -> torch.Tensor:
        """KL(q || p(z|x)), the gap log p(x) - L(q) according to eq. 1."""
        return kl_divergence(q, self.posterior(x))

    def mean_field_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of the best diagonal q: the maximiser of L(q) over N(mu, diag sigma^2),
        i.e. the minimiser of KL(q || p(z|x)). For a Gaussian posterior N(m, Lambda^-1) it is
        mu = m, sigma_j^2 = 1 / Lambda_jj (Bishop 2006, sec. 10.1.2)."""
        posterior = self.posterior(x)
        return posterior.loc, -posterior.precision_matrix.diagonal().log().expand_as(posterior.loc)


def diagonal_gaussian(mu: torch.Tensor, logvar: torch.Tensor) -> MultivariateNormal:
    """q = N(mu, diag sigma^2) from (mu, log sigma^2), the form of the VAE's encoder output."""
    return MultivariateNormal(mu, scale_tril=torch.diag_embed(torch.exp(0.5 * logvar)))


class FixedQ:
    """A "VAE" whose encoder returns the same q = N(mu, diag sigma^2) for every x, and whose decoder
    is ``decoder`` (e.g. a :class:`LinearGaussian`): the two things ``vae_utils.loss.elbo`` uses."""

    def __init__(self, decoder: Decoder, mu: torch.Tensor, logvar: torch.Tensor):
        self.decoder, self.mu, self.logvar = decoder, mu, logvar

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*x.shape[:-1], self.mu.shape[-1])
        return self.mu.expand(shape), self.logvar.expand(shape)


def monte_carlo_elbo(
    model: LinearGaussian,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    n_samples: int,
    kl: str,
    generator: torch.Generator | None = None,
) -> ELBO:
    """The SGVB estimate of L(q) with L = ``n_samples`` reparameterised samples, computed by
    ``vae_utils.loss.elbo``: ``kl="mc"`` is estimator A (eq. 6), ``kl="analytic"`` estimator B (eq. 7)."""
    return elbo(FixedQ(model, mu, logvar), x, n_samples, kl, generator)


def monte_carlo_kl(
    mu: torch.Tensor, logvar: torch.Tensor, n_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """L single-sample estimates log q(z_l) - log p(z_l), z_l ~ q = N(mu, diag sigma^2): shape (L, ...).
    Their mean estimates KL(q || N(0, I)), the term that estimator A samples and estimator B
    takes in closed form (App. B, ``vae_utils.loss.kl_standard_normal``)."""
    z = reparameterize(mu, logvar, n_samples, generator)
    return gaussian_log_density(z, mu, logvar) - standard_normal_log_density(z)


def log_weights(
    model: LinearGaussian,
    x: torch.Tensor,
    q: MultivariateNormal,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L single-sample estimates of estimator A (eq. 6), log p(x, z_l) - log q(z_l), z_l ~ q, for
    any Gaussian q (full covariance too): shape (L, ...). At q = p(z|x) every one equals log p(x)."""
    eps = torch.randn((n_samples, *q.loc.shape), generator=generator, dtype=q.loc.dtype)
    z = q.loc + (q.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    return model.log_joint(x, z) - q.log_prob(z)


def prior_monte_carlo_log_marginal(
    model: LinearGaussian, x: torch.Tensor, n_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The naive estimate log 1/L sum_l p(x|z_l), z_l ~ p(z), of log p(x) = log E_p(z)[p(x|z)]."""
    z = torch.randn(n_samples, model.latent_dim, generator=generator, dtype=model.W.dtype)
    return torch.logsumexp(model.log_prob(x, z), dim=0) - math.log(n_samples)


def reparameterize_typo(
    mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma^2 * eps: the review's typo, kept only to show that its variance is sigma^4.
    Draws the same eps as ``vae_utils.loss.reparameterize`` given an equally seeded generator."""
    eps = torch.randn((n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(logvar) * eps


def typo_elbo(
    model: LinearGaussian,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Estimator B (eq. 7) computed with the typo: the analytic KL of N(mu, sigma^2), but the
    reconstruction averaged over z ~ N(mu, sigma^4). It is the ELBO of no q, and not a bound.
    Shapes as for :func:`monte_carlo_elbo`: one estimate per row of x."""
    mu, logvar = FixedQ(model, mu, logvar).encode(x)
    z = reparameterize_typo(mu, logvar, n_samples, generator)
    return model.log_prob(x, z).mean(0) - kl_standard_normal(mu, logvar).sum(-1)


def elbo_gradients(
    model: LinearGaussian,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    estimator: str,
    n_samples: int,
    n_repeats: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n_repeats`` independent estimates of grad_(mu, log sigma^2) L(q), each from L = ``n_samples``
    draws, for q = N(mu, diag sigma^2) and one datapoint x (D,). Returns (n_repeats, 2K): the mu
    gradient then the log sigma^2 gradient.

    ``"score_function"``: the naive estimator of section 2.2, 1/L sum_l f(z_l) grad log q(z_l),
        f(z) = log p(x, z) - log q(z), z_l ~ q (REINFORCE; the term E_q[grad f] = -E_q[grad log q]
        is zero and left out).
    ``"reparam_A"``: the gradient of estimator A (eq. 6) through z = mu + sigma * eps (eq. 4, section 2.4).
    ``"reparam_B"``: the gradient of estimator B (eq. 7): analytic KL, sampled reconstruction.
    All three are unbiased estimates of the same gradient, :func:`exact_elbo_gradient`.
    """
    if estimator not in GRADIENT_ESTIMATORS:
        raise ValueError(f"estimator = {estimator!r} is invalid: allowed one of {GRADIENT_ESTIMATORS}")
    # One copy of (mu, logvar) per repeat: the gradient of the summed estimates with respect to
    # row r is then the r-th estimate's gradient, all computed in one backward pass.
    mu = mu.detach().expand(n_repeats, -1).clone().requires_grad_()
    logvar = logvar.detach().expand(n_repeats, -1).clone().requires_grad_()
    xs = x.expand(n_repeats, -1)
    if estimator == "score_function":
        with torch.no_grad():
            z = reparameterize(mu, logvar, n_samples, generator)  # plain samples z ~ q: no path
        log_q = gaussian_log_density(z, mu, logvar)
        f = model.log_joint(xs, z) - log_q
        objective = (f.detach() * log_q).mean(0)
    else:
        kl = "mc" if estimator == "reparam_A" else "analytic"
        objective = monte_carlo_elbo(model, xs, mu, logvar, n_samples, kl, generator).elbo
    return torch.cat(torch.autograd.grad(objective.sum(), (mu, logvar)), dim=-1)


def exact_elbo_gradient(
    model: LinearGaussian, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """grad_(mu, log sigma^2) of the closed-form L(q) (eq. 3): the value the estimators aim at, (2K,)."""
    mu = mu.detach().clone().requires_grad_()
    logvar = logvar.detach().clone().requires_grad_()
    value = model.elbo(x, diagonal_gaussian(mu, logvar))
    return torch.cat(torch.autograd.grad(value, (mu, logvar)))


def estimator_spread(
    model: LinearGaussian,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    sample_sizes: list[int],
    n_repeats: int,
    generator: torch.Generator | None = None,
) -> pd.DataFrame:
    """Estimators A (eq. 6) and B (eq. 7) of L(q), q = N(mu, diag sigma^2), each drawn ``n_repeats``
    times for every L in ``sample_sizes``: one row per (estimator, L) with their mean and std."""
    xs = x.expand(n_repeats, -1)
    rows = []
    for name, kl in (("A (eq. 6)", "mc"), ("B (eq. 7)", "analytic")):
        for n in sample_sizes:
            estimates = monte_carlo_elbo(model, xs, mu, logvar, n, kl, generator).elbo
            rows.append(
                {"estimator": name, "L": n, "mean": estimates.mean().item(), "std": estimates.std().item()}
            )
    return pd.DataFrame(rows)


def gradient_variances(
    model: LinearGaussian,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    sample_sizes: list[int],
    n_repeats: int,
    generator: torch.Generator | None = None,
) -> pd.DataFrame:
    """Every estimator of :func:`elbo_gradients` at every L, ``n_repeats`` draws each: one row with the
    mean estimate of dL/dmu_1 against its exact value, their difference in standard errors, the
    total variance (the trace of the covariance of the 2K-vector estimate), and its ratio to that
    of reparam_B at the same L."""
    exact = exact_elbo_gradient(model, x, mu, logvar)[0].item()
    rows = []
    for estimator in GRADIENT_ESTIMATORS:
        for n in sample_sizes:
            grads = elbo_gradients(model, x, mu, logvar, estimator, n, n_repeats, generator)
            mean, se = grads[:, 0].mean().item(), grads[:, 0].std().item() / math.sqrt(n_repeats)
            rows.append(
                {
                    "estimator": estimator,
                    "L": n,
                    "mean dL/dmu_1": mean,
                    "exact dL/dmu_1": exact,
                    "(mean - exact) / s.e.": (mean - exact) / se,
                    "total variance": grads.var(0).sum().item(),
                }
            )
    frame = pd.DataFrame(rows)
    reference = frame[frame["estimator"] == "reparam_B"].set_index("L")["total variance"]
    frame["variance / reparam_B's"] = frame["total variance"] / frame["L"].map(reference)
    return frame


def rounded(frame: pd.DataFrame, digits: int = 4, zero: float = 1e-9) -> pd.DataFrame:
    """Float columns rounded to ``digits`` significant digits, |values| < ``zero`` shown as 0:
    tables whose text is the same on every re-execution (nbval compares it)."""

    def round_one(v: float) -> float:
        if not math.isfinite(v) or abs(v) < zero:
            return 0.0 if math.isfinite(v) else v
        return round(v, digits - 1 - math.floor(math.log10(abs(v))))

    frame = frame.copy()
    for column in frame.select_dtypes("float").columns:
        frame[column] = frame[column].map(round_one)
    return frame
