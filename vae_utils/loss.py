"""The ELBO (paper eq. 3, estimators A and B, eq. 6-7 and 10) and importance-weighted log-likelihood.

Every number is in nats **per datapoint**: log densities are summed over pixels and latent
dimensions, then averaged over datapoints (the paper's N/M-scaled minibatch sum, eq. 8, divided
by N; Adagrad and Adam are invariant to that constant factor).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, NamedTuple, Protocol

import pandas as pd
import torch

from vae_utils.config import check_choice
from vae_utils.progress import progress_bar

LOG_2PI = math.log(2 * math.pi)

#: The gradients an autograd Function's backward returns, one per input (None: not needed).
_Grads = tuple[torch.Tensor | None, torch.Tensor | None]


class Decoder(Protocol):
    """What the ELBO needs of a decoder: log p(x|z), summed over the last dimension."""

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...


class LatentVariableModel(Protocol):
    """What the ELBO needs of a model: q(z|x)'s mean and log-variance, and a :class:`Decoder`. A
    :class:`vae_utils.model.VAE`, or :class:`vae_utils.linear_gaussian.FixedQ` (an exact model)."""

    @property
    def decoder(self) -> Decoder: ...

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def bernoulli_pixel_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x l - softplus(l) for each pixel, from logits l, in plain differentiable ops: the expression
    of :class:`_BernoulliLogLikelihood` (which explains it), and what the compiled training step
    traces (torch.func cannot trace an autograd.Function)."""
    return x * logits - logits.clamp(min=0) + torch.sigmoid(logits.abs()).log()


class _BernoulliLogLikelihood(torch.autograd.Function):
    """sum_i [x_i l_i - softplus(l_i)] over the last dimension, from logits l.

    softplus(l) = relu(l) - log sigmoid(|l|): sigmoid(|l|) lies in [0.5, 1], so the log is
    well-conditioned and never overflows. Written this way because the CPU kernels of ``log1p``
    and ``log_sigmoid`` are several times slower than those of ``sigmoid`` and ``log``. The
    gradient is the familiar x - sigmoid(l) (and l for x); it is built from differentiable ops,
    so second derivatives are right too.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        # bernoulli_pixel_log_likelihood's sum, in place on one buffer: no autograd here, and two
        # passes and four (k, D) temporaries fewer: 7 % of the k = 5000 estimate (docs/speed.md)
        pixels = torch.sigmoid(logits.abs()).log_()
        return pixels.sub_(logits.clamp(min=0)).addcmul_(x, logits).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> _Grads:
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = grad * (x - torch.sigmoid(logits)) if ctx.needs_input_grad[0] else None
        grad_x = grad * logits if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


class _Softplus(torch.autograd.Function):
    """softplus(y) = log(1 + e^y) = relu(y) - log sigmoid(|y|), with the gradient sigmoid(y).

    The same identity as :class:`_BernoulliLogLikelihood`, for the same reason: PyTorch's CPU
    ``softplus`` kernel costs ~1.8 ms on a 100 x 560 batch, ``sigmoid`` and ``log`` ~0.4 ms. It bounds
    the Gaussian decoder's log-variance on every training step.
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        return y.clamp(min=0) - torch.sigmoid(y.abs()).log()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * torch.sigmoid(y)


class SigmoidTanh(torch.nn.Module):
    """tanh(y) = 2 sigmoid(2y) - 1, for inference copies (:func:`onednn_inference_copy`): on a CPU,
    ATen's ``tanh`` kernel is about 9x slower per element than its ``sigmoid`` (docs/speed.md). Within
    2e-7 of the exact tanh in float32 (``torch.tanh``: 3e-8). No gradients: inference only."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(2 * y).mul_(2).sub_(1)


def softplus(y: torch.Tensor) -> torch.Tensor:
    """log(1 + e^y), elementwise, stable for any y; equals ``torch.nn.functional.softplus``."""
    return _Softplus.apply(y)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_i x_i log y_i + (1 - x_i) log(1 - y_i), y = sigmoid(logits) (eq. 11).

    Summed over the last dimension. For grey-level x in [0, 1] (``binarize="none"``) this is the
    cross-entropy the paper and most implementations optimise; it is a true log-probability only
    for binary x.
    """
    x = x.expand_as(logits)
    return _BernoulliLogLikelihood.apply(logits, x)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(logvar)) summed over the last dimension, 1/2 log 2 pi included."""
    return -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar)).sum(-1)


def factorised_log_likelihood(
    x_fit: torch.Tensor, x_eval: torch.Tensor, decoder: str, min_logvar: float = -6.0
) -> torch.Tensor:
    """log p(x) per row of ``x_eval`` under the best model that ignores z: independent pixels in the
    decoder's family, fitted to ``x_fit`` by maximum likelihood.

    A decoder whose output does not depend on z, with q(z|x) = p(z), has KL = 0 and a lower bound
    (eq. 3) equal to this log-likelihood, so no such model's bound on ``x_fit`` is higher. It is the
    plateau a model sits on while its latent code carries no information.

    * ``"bernoulli"``: sum_i x_i log y_i + (1 - x_i) log(1 - y_i) with y_i = (sum_n x_ni + 1) /
      (N + 2), the mean of pixel i with Laplace's add-one smoothing: a pixel that is always 0 in
      ``x_fit`` (MNIST's corners) would otherwise give log 0 = -inf on any test image that inks it.
    * ``"gaussian"``: mean and variance of pixel i, the log-variance held at or above
      ``min_logvar`` as the decoder's is (:class:`vae_utils.model.GaussianDecoder`).
    """
    check_choice("decoder", decoder, ("bernoulli", "gaussian"))
    x = x_eval.double()
    if decoder == "bernoulli":
        y = (x_fit.double().sum(0) + 1) / (len(x_fit) + 2)
        return (x * torch.log(y) + (1 - x) * torch.log1p(-y)).sum(-1).to(x_eval.dtype)
    mean = x_fit.double().mean(0)
    variance = x_fit.double().var(0, unbiased=False)
    logvar = torch.log(variance).clamp_min(min_logvar)
    return gaussian_log_density(x, mean, logvar).to(x_eval.dtype)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log p(z) for the prior N(0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) in closed form (paper App. B), per latent dimension.

    -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2). Returns the (..., N_z) terms; sum
    them over the last dimension for the KL of the whole latent vector.
    """
    return 0.5 * (mu.pow(2) + torch.exp(logvar) - 1.0 - logvar)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (paper section 2.4): (L, ..., N_z) with L = n_samples.

    sigma = exp(log sigma^2 / 2) is a standard deviation; multiplying eps by sigma^2 instead would
    give z the variance sigma^4.
    """
    eps = torch.randn((n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


class ELBO(NamedTuple):
    """Per-datapoint terms, each of shape (B,): ``elbo = recon - kl``.

    recon: the Monte-Carlo estimate of E_q[log p(x|z)], averaged over the L samples.
    kl: KL(q(z|x) || p(z)), analytic (estimator B) or the sampled log q(z|x) - log p(z)
        (estimator A).
    """

    elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor

    def to_frame(self) -> pd.DataFrame:
        """The terms as a DataFrame (float64 columns elbo, recon, kl), one row per datapoint."""
        return pd.DataFrame({name: t.detach().double().cpu().numpy() for name, t in self._asdict().items()})


def elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    n_samples: int = 1,
    kl: str = "analytic",
    generator: torch.Generator | None = None,
) -> ELBO:
    """The SGVB estimate of the lower bound L(theta, phi; x) for each datapoint in ``x`` (B, D).

    ``kl="analytic"``: estimator B (eq. 7, 10): -KL(q(z|x) || p(z)) in closed form plus
    1/L sum_l log p(x|z_l). ``kl="mc"``: estimator A (eq. 6): 1/L sum_l [log p(x, z_l) -
    log q(z_l|x)], split here into the same two terms.
    """
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar, n_samples, generator)
    recon = model.decoder.log_prob(x, z).mean(0)
    if kl == "analytic":
        kl_term = kl_standard_normal(mu, logvar).sum(-1)
    elif kl == "mc":
        log_q = gaussian_log_density(z, mu, logvar)
        kl_term = (log_q - standard_normal_log_density(z)).mean(0)
    else:
        raise ValueError(f"kl = {kl!r} is invalid: allowed 'analytic' or 'mc'")
    return ELBO(recon - kl_term, recon, kl_term)


@torch.no_grad()
def per_datapoint_elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    n_samples: int = 1,
    kl: str = "analytic",
    seed: int = 0,
    batch_size: int = 1000,
) -> ELBO:
    """:func:`elbo` for every row of ``x`` (N, D), in batches, without gradients: (N,) terms.

    z is *sampled* (a deterministic z = mu would not be the ELBO), from a generator seeded with
    ``seed``, so that the same model and data always give the same numbers. A float32 model on a
    CPU multiplies with oneDNN (:func:`onednn_inference_copy`).
    """
    model = onednn_inference_copy(model, x)
    generator = torch.Generator(x.device).manual_seed(seed)
    parts = [
        elbo(model, x[start : start + batch_size], n_samples, kl, generator)
        for start in range(0, len(x), batch_size)
    ]
    return ELBO(*(torch.cat(terms) for terms in zip(*parts, strict=True)))


def evaluate(
    model: LatentVariableModel,
    x: torch.Tensor,
    n_samples: int = 1,
    kl: str = "analytic",
    seed: int = 0,
    batch_size: int = 1000,
) -> dict[str, float]:
    """The ELBO and its terms averaged over all of ``x``, nats per datapoint, as floats
    (the means of :func:`per_datapoint_elbo`, summed in float64)."""
    terms = per_datapoint_elbo(model, x, n_samples, kl, seed, batch_size)
    return {name: values.double().mean().item() for name, values in terms._asdict().items()}


@torch.no_grad()
def log_weights(
    model: LatentVariableModel, x: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x): shape (k, B)."""
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar, k, generator)
    return model.decoder.log_prob(x, z) + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)


def onednn_inference_copy(model: LatentVariableModel, x: torch.Tensor) -> LatentVariableModel:
    """For float32 inference on a CPU: a copy of ``model`` whose linear layers multiply with oneDNN
    (``torch.utils.mkldnn.to_mkldnn``) instead of torch's BLAS, and whose ``nn.Tanh`` layers are
    :class:`SigmoidTanh`. PyTorch's x86 wheels send float32 matmuls to MKL, which keeps to AVX2 on AMD
    CPUs; oneDNN's kernels use AVX-512 there: 2.2x the matmul rate, 1.4x the k = 5000 estimate on an
    AMD EPYC, and the tanh about 1.1x more (docs/speed.md). The same numbers to float rounding; no
    gradients. ``model`` itself when ``x`` is not float32 on a CPU, oneDNN is missing, ``model`` is
    not an ``nn.Module`` or it has no ``nn.Linear`` left (a copy made by this function: making one
    costs about 7 ms, most of it TorchScript's, so a caller may make one and pass it on)."""
    usable = x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
    if not (usable and isinstance(model, torch.nn.Module)):
        return model
    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        return model
    with warnings.catch_warnings():  # its modules are built on the deprecated torch.jit.script_method
        warnings.simplefilter("ignore", FutureWarning)
        from torch.utils import mkldnn

        fast = mkldnn.to_mkldnn(copy.deepcopy(model))  # it converts modules in place
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Tanh:
                setattr(module, name, SigmoidTanh())
    return fast


@torch.no_grad()
def importance_weighted_log_likelihood(
    model: LatentVariableModel,
    x: torch.Tensor,
    k: int = 5000,
    seed: int = 0,
    max_elements: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log k (Burda et al. 2015, eq. 8).

    Returns the (N,) per-datapoint estimates. In expectation it is a lower bound on log p(x) that
    rises with k towards it; k = 1 is the ELBO (estimator A). The k samples are drawn in chunks so
    that no intermediate tensor exceeds ``max_elements`` numbers, and combined with a running
    logsumexp. The default, 2^21 on a CPU (fastest there: the chunk stays in cache; k = 5000 on
    MNIST's 10,000 test images then takes 2.5 minutes on 2 AVX-512 cores) and 2^26 on a GPU, keeps
    memory to tens or hundreds of MB. A float32 model on a CPU multiplies with oneDNN
    (:func:`onednn_inference_copy`).
    """
    model = onednn_inference_copy(model, x)
    generator = torch.Generator(x.device).manual_seed(seed)
    if max_elements is None:
        max_elements = 1 << 21 if x.device.type == "cpu" else 1 << 26
    batch = max(1, min(len(x), max_elements // (k * x.shape[1])))
    chunk = max(1, min(k, max_elements // (batch * x.shape[1])))
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    starts = range(0, len(x), batch)
    for start in progress_bar(starts, progress, desc=f"log p(x), k={k}", unit="batch"):
        xb = x[start : start + batch]
        running = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=x.device)
        for done in range(0, k, chunk):
            w = log_weights(model, xb, min(chunk, k - done), generator).double()
            running = torch.logaddexp(running, torch.logsumexp(w, dim=0))
        out[start : start + len(xb)] = running - math.log(k)
    return out


@torch.no_grad()
def posterior_statistics(
    model: LatentVariableModel, x: torch.Tensor, batch_size: int = 1000
) -> dict[str, torch.Tensor]:
    """The posterior means ``mu`` = E_q[z|x] (N, N_z) and, per latent dimension, the average
    ``kl`` = KL(q(z_d|x) || p(z_d)) over ``x`` and the ``activity`` Var_x(E_q[z_d|x]). A unit is
    ``active`` when its activity exceeds 0.01 (Burda et al. 2015).

    Also the aggregate posterior q(z_d) = 1/N sum_n q(z_d|x_n), the codes of all of ``x`` together:
    its ``aggregate_mean`` and ``aggregate_var`` (the mixture's exact moments, Var_n mu + E_n sigma^2)
    and ``aggregate_kl``, the KL from the prior N(0, 1) of the Gaussian with those moments. The ELBO's
    KL term pulls each q(z|x) towards p(z) separately, not their mixture; where the mixture is off
    the prior, draws z ~ p(z) land where the decoder saw no code."""
    mus, kls, variances = [], [], []
    for start in range(0, len(x), batch_size):
        mu, logvar = model.encode(x[start : start + batch_size])
        mus.append(mu)
        kls.append(kl_standard_normal(mu, logvar))
        variances.append(torch.exp(logvar))
    mu = torch.cat(mus)
    activity = mu.var(0)
    mean, var = mu.mean(0), mu.var(0, unbiased=False) + torch.cat(variances).mean(0)
    return {
        "mu": mu,
        "kl": torch.cat(kls).mean(0),
        "activity": activity,
        "active": activity > 0.01,
        "aggregate_mean": mean,
        "aggregate_var": var,
        "aggregate_kl": kl_standard_normal(mean, torch.log(var)),
    }
