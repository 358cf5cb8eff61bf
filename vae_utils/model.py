"""The VAE of Kingma & Welling (2013): one-hidden-layer MLP encoder q_phi(z|x) and decoder p_theta(x|z).

Paper equations referred to below: eq. 11 (Bernoulli MLP decoder), eq. 12 (Gaussian MLP, used as
the encoder and as the Frey Face decoder). The prior is p(z) = N(0, I).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vae_utils import continuous_bernoulli, loss
from vae_utils.config import ACTIVATIONS, TrainConfig


class MLP(nn.Sequential):
    """Linear -> activation, ..., Linear. Its input is cast to the weights' floating-point type, so
    that a float64 model (``TrainConfig.dtype``) takes the float32 grids and draws of the analysis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first: nn.Linear = self[0]  # type: ignore[assignment]
        return super().forward(x.to(first.weight.dtype))


def mlp(n_in: int, n_hidden: int, n_out: int, activation: str, layers: int = 1) -> MLP:
    """Linear -> activation, ``layers`` times, then Linear: with ``layers=1`` the one-hidden-layer MLP
    of the paper's App. C; Burda et al.'s VAE has two."""
    modules: list[nn.Module] = []
    for i in range(layers):
        modules += [nn.Linear(n_in if i == 0 else n_hidden, n_hidden), getattr(nn, ACTIVATIONS[activation])()]
    return MLP(*modules, nn.Linear(n_hidden, n_out))


class GaussianEncoder(nn.Module):
    """q_phi(z|x) = N(z; mu, diag sigma^2) with [mu, log sigma^2] = MLP(x) (eq. 12, App. C.2).

    Both heads come out of one output layer of size 2 N_z: one matrix multiply instead of two.
    """

    def __init__(
        self, data_dim: int, hidden_dim: int, latent_dim: int, activation: str = "tanh", layers: int = 1
    ):
        super().__init__()
        self.net = mlp(data_dim, hidden_dim, 2 * latent_dim, activation, layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, log sigma^2), each (..., N_z)."""
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class PixelDecoder(nn.Module):
    """p_theta(x|z) = prod_i p(x_i|z): a network maps z to each pixel's parameters, and the
    subclass's ``log_density(params, x)`` sums the log densities over the last dimension."""

    #: The most log p(x_i|z) one pixel can contribute.
    max_pixel_log_prob: float

    @staticmethod
    def log_density(params: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, (...,). Under bfloat16 autocast the network's output is
        taken to float32 first, so that the likelihood's elementwise terms are not rounded to 8 bits
        (the compiled step computes them in float32 too)."""
        out = self(z)
        if isinstance(out, tuple):
            return self.log_density(tuple(_at_least_float32(o) for o in out), x)
        return self.log_density(_at_least_float32(out), x)

    def pixel_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x_i|z) of each pixel, (..., D): the terms :meth:`log_prob` sums (each pixel is
        given a last dimension of its own to sum over)."""
        out = self(z)
        params = tuple(o.unsqueeze(-1) for o in out) if isinstance(out, tuple) else out.unsqueeze(-1)
        return self.log_density(params, x.unsqueeze(-1))


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a 16-bit floating-point type (autocast's output), else itself."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class BernoulliDecoder(PixelDecoder):
    """p_theta(x|z) = prod_i Bernoulli(x_i; y_i), y = sigmoid(MLP(z)) (eq. 11), kept as logits.

    The log-likelihood is computed from the logits (never sigmoid-then-log), so it stays finite
    and accurate for saturated pixels.
    """

    def __init__(
        self, latent_dim: int, hidden_dim: int, data_dim: int, activation: str = "tanh", layers: int = 1
    ):
        super().__init__()
        self.net = mlp(latent_dim, hidden_dim, data_dim, activation, layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The logits of y, (..., D)."""
        return self.net(z)

    #: The most log p(x_i|z) one pixel can contribute: log 1 = 0.
    max_pixel_log_prob = 0.0

    @staticmethod
    def log_density(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) from the network's output, summed over the last dimension."""
        return loss.bernoulli_log_likelihood(logits, x)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(z))

    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Binary x ~ p(x|z), drawn as u < y with u ~ U(0, 1). Unlike ``torch.bernoulli`` this does
        not raise on a NaN y, so that a diverged decoder in wake-sleep's sleep phase is reported by
        the training loop's NaN check (TrainingDiverged) rather than as a crash."""
        y = self.mean(z)
        u = torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return (u < y).to(y.dtype)


class ContinuousBernoulliDecoder(BernoulliDecoder):
    """p_theta(x|z) = prod_i CB(x_i; lambda_i), lambda = sigmoid(MLP(z)): the continuous Bernoulli
    (Loaiza-Ganem & Cunningham 2019), a normalised density on [0, 1] for grey-level pixels.

    The same network as :class:`BernoulliDecoder`; the log density adds the normaliser log C(lambda)
    to the Bernoulli cross-entropy. Its mean is *not* lambda (see
    :func:`vae_utils.continuous_bernoulli.continuous_bernoulli_mean`): reconstructions and
    manifolds show the mean.
    """

    #: Unbounded: the density at x = 0 or 1 grows without limit as lambda -> 0 or 1.
    max_pixel_log_prob = float("inf")

    @staticmethod
    def log_density(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return continuous_bernoulli.continuous_bernoulli_log_likelihood(logits, x)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return continuous_bernoulli.continuous_bernoulli_mean(self(z))

    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return continuous_bernoulli.continuous_bernoulli_sample(self(z), generator)


class GaussianDecoder(PixelDecoder):
    """p_theta(x|z) = N(x; mu, diag sigma^2), h = tanh(W3 z + b3), mu = W4 h + b4,
    log sigma^2 = W5 h + b5 (eq. 12), with two changes, both documented and optional:

    * ``sigmoid_mean``: mu = sigmoid(W4 h + b4), the paper's Frey Face choice (data in (0, 1)).
    * the log-variance is bounded below smoothly: log sigma^2 = m + softplus(a - m), where
      a = W5 h + b5 and m = ``min_logvar``. It equals a when a >> m and never drops below m.
      Unbounded, the likelihood of MNIST's many always-0 pixels grows without limit as sigma -> 0
      and training runs off to -inf or NaN; with the bound each pixel contributes at most
      -1/2 (log 2 pi + m) nats. ``min_logvar=-inf`` is not accepted; use a very low value to
      approach the paper's unbounded form.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        data_dim: int,
        activation: str = "tanh",
        min_logvar: float = -6.0,
        sigmoid_mean: bool = False,
        layers: int = 1,
    ):
        super().__init__()
        self.net = mlp(latent_dim, hidden_dim, 2 * data_dim, activation, layers)
        self.min_logvar = min_logvar
        self.sigmoid_mean = sigmoid_mean
        self.max_pixel_log_prob = -0.5 * (loss.LOG_2PI + min_logvar)  # at x = mu, sigma^2 at its floor

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2), each (..., D)."""
        mu, raw = self.net(z).chunk(2, dim=-1)
        if self.sigmoid_mean:
            mu = torch.sigmoid(mu)
        logvar = self.min_logvar + loss.softplus(raw - self.min_logvar)
        return mu, logvar

    @staticmethod
    def log_density(params: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return loss.gaussian_log_density(x, *params)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self(z)[0]

    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, logvar = self(z)
        return mu + torch.exp(0.5 * logvar) * torch.randn(
            mu.shape, generator=generator, device=mu.device, dtype=mu.dtype
        )


class VAE(nn.Module):
    """Encoder q_phi(z|x), decoder p_theta(x|z) and the prior p(z) = N(0, I)."""

    def __init__(
        self,
        data_dim: int,
        hidden_dim: int = 500,
        latent_dim: int = 2,
        decoder: str = "bernoulli",
        activation: str = "tanh",
        init: str = "pytorch",
        min_logvar: float = -6.0,
        sigmoid_mean: bool = False,
        hidden_layers: int = 1,
    ):
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.encoder = GaussianEncoder(data_dim, hidden_dim, latent_dim, activation, hidden_layers)
        self.decoder: BernoulliDecoder | GaussianDecoder
        if decoder == "bernoulli":
            self.decoder = BernoulliDecoder(latent_dim, hidden_dim, data_dim, activation, hidden_layers)
        elif decoder == "continuous_bernoulli":
            self.decoder = ContinuousBernoulliDecoder(
                latent_dim, hidden_dim, data_dim, activation, hidden_layers
            )
        elif decoder == "gaussian":
            self.decoder = GaussianDecoder(
                latent_dim, hidden_dim, data_dim, activation, min_logvar, sigmoid_mean, hidden_layers
            )
        else:
            raise ValueError(
                f"decoder = {decoder!r} is invalid: allowed 'bernoulli', 'continuous_bernoulli' or 'gaussian'"
            )
        if init == "paper":
            paper_init_(self)
        elif init != "pytorch":
            raise ValueError(f"init = {init!r} is invalid: allowed 'pytorch' or 'paper'")

    @classmethod
    def from_config(cls, config: TrainConfig, data_dim: int) -> VAE:
        return cls(
            data_dim,
            config.hidden_dim,
            config.latent_dim,
            config.decoder,
            config.activation,
            config.init,
            config.min_logvar,
            config.sigmoid_mean,
            config.hidden_layers,
        ).to(getattr(torch, config.dtype))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z|x)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean E[x|z]: what reconstructions, samples shown as images and manifolds use."""
        return self.decoder.mean(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x|z] at z = the posterior mean mu(x)."""
        return self.decode(self.encode(x)[0])

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z) = N(0, I), (n, N_z)."""
        weight = next(self.parameters())
        return torch.randn(n, self.latent_dim, generator=generator, device=weight.device, dtype=weight.dtype)

    def sample_x(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z): a draw from the decoder, not its mean (pixel noise included)."""
        return self.decoder.sample(z, generator)


@torch.no_grad()
def paper_init_(model: nn.Module, std: float = 0.01) -> None:
    """Draw every parameter from N(0, std^2), the paper's "N(0, 0.01)" read as a standard deviation."""
    for p in model.parameters():
        p.normal_(0.0, std)
