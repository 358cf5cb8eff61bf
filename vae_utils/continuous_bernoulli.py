"""The continuous Bernoulli (Loaiza-Ganem & Cunningham, NeurIPS 2019, arXiv:1907.06845), from
logits: its log density and normaliser (exact for any logit), its mean, and samples by the inverse
CDF. :class:`vae_utils.model.ContinuousBernoulliDecoder` is built on it.
"""

from __future__ import annotations

from typing import Any

import torch

_Grads = tuple[torch.Tensor | None, torch.Tensor | None]

# p(x|lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x), a density on x in [0, 1], with the
# paper's normaliser C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2. With
# lambda = sigmoid(l), 1 - 2 lambda = -tanh(l/2) and artanh(1 - 2 lambda) = -l/2, so
# C = l / tanh(l/2), even in l, 2 at l = 0. It is the exponential family p(x|l) = exp(x l - A(l)),
#     A(l) = log int_0^1 e^(l x) dx = log((e^l - 1) / l) = softplus(l) - log C(l),
# whose derivative is the mean, A'(l) = E[x] = 1 / (1 - e^-l) - 1 / l; so d log p / dl = x - E[x]
# and d log C / dl = sigmoid(l) - E[x].
#
# Everything is computed from l, never from a clamped lambda: that keeps it right for |l| beyond
# ~36 in float64 (~16 in float32), where torch.distributions.ContinuousBernoulli clamps lambda to
# [eps, 1 - eps] and its log density and mean go wrong. With a = |l|:
#     log C = log(a / tanh(a/2)),   A(l) - relu(l) = -log(sigmoid(a) a / tanh(a/2)).
# Each factor is relatively exact (~1 ulp) for every a > 0, tiny or huge (tanh(a/2) is exactly 1
# for large a, where log C = log a to within e^-a), so these need no series near l = 0: they are
# within ~2 ulp of a high-precision reference for all l. At l = 0 (the 0/0 of the formulas), a is
# shifted by sqrt(tiny) (1e-19 in float32, 1e-154 in float64), where tanh(a/2) = a/2 exactly; the
# shift moves the results by 1e-19 at most. The log density, log C and the mean, evaluated on
# every training step, avoid expm1 and log1p (on a CPU their kernels are 5-7x slower than those of
# tanh, sigmoid, exp and log) and torch.where and bool masks (each costs 5-15 arithmetic kernels).
# Logits must be finite (+-inf give NaN, as 0 * inf does).
# Only the mean cancels near 0 (1 / (1 - e^-l) - 1 / l, absolute error ~2 eps / l^2 as written
# below), so it switches to its Taylor series there; the gradients go through the mean.

# E[x] = 1/2 + sum_k c_k l^(2k-1), c_k = B_2k / (2k)! (Bernoulli numbers B_n, from
# 1 / (e^l - 1) = sum_n B_n l^(n-1) / n!), convergent for |l| < 2 pi; the tests check the
# coefficients below against the Bernoulli numbers. Python's int / int is correctly rounded.
_CB_MEAN_TAYLOR = (
    1 / 12,
    -1 / 720,
    1 / 30240,
    -1 / 1209600,
    1 / 47900160,
    -691 / 1307674368000,
    1 / 74724249600,
    -3617 / 10670622842880000,
    43867 / 5109094217170944000,
    -174611 / 802857662698291200000,
    77683 / 14101100039391805440000,
)


def _cb_mean_series(dtype: torch.dtype) -> tuple[int, float]:
    """(n, t): :func:`continuous_bernoulli_mean` sums n terms of its series where |l| <= t.

    t is where the term c_m l^(2m-1) after the first m terms reaches ``eps``, capped at 2, with m
    the fewest terms that put t at 1 or beyond (the direct formula's error, ~2 eps / l^2, is then
    a few ulp at most). One more term is summed, n = m + 1, so that the series' derivative (the
    variance, in second derivatives) is within a few ulp at t too, not (2m + 1) / t ulp off.
    float32: 5 terms, t = 1.21; float64: 10 terms, t = 1.00.
    """
    eps = torch.finfo(dtype).eps
    for m in range(1, len(_CB_MEAN_TAYLOR) - 1):
        t = (eps / abs(_CB_MEAN_TAYLOR[m])) ** (1 / (2 * m + 1))
        if t >= 1.0:
            break
    return m + 1, min(t, 2.0)


def _cb_const(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] of the continuous Bernoulli CB(lambda = sigmoid(logits)), elementwise, differentiable.

    lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)) in the paper's parameter (Loaiza-Ganem &
    Cunningham 2019); in the logit l it is 1 / (1 - e^-l) - 1 / l, computed as
    sigmoid(l) / (2 sigmoid(l) - 1) - 1 / l. It is *not* lambda: it lies between 1/2 and lambda.
    For |l| <= t the series 1/2 + l/12 - l^3/720 + l^5/30240 - ... is used instead (5 terms for
    |l| <= 1.21 in float32, 10 for |l| <= 1.00 in float64; :func:`_cb_mean_series`), exactly 1/2
    at l = 0. Within a few ulp of the exact value everywhere; 1 - 1/l as l -> +inf, 1/|l| (-> 0) as
    l -> -inf.

    Each branch only sees inputs where it is finite (the direct formula is fed |l| >= t, the
    series |l| <= t), so the gradient is finite everywhere, at l = 0 included.
    """
    n_terms, t = _cb_mean_series(logits.dtype)
    a = logits.abs()
    # No torch.where, heaviside or bool mask (on a CPU each costs as much as ten arithmetic
    # kernels): the series' weight sign(t - |l|) + 1, clamped to 1, is exactly 1 where |l| <= t
    # and 0 elsewhere, and lerp returns one branch exactly at those weights. Each branch is fed a
    # safe stand-in where it is not used.
    series_weight = torch.sign(torch.rsub(a.detach(), t)).add_(1).clamp_(max=1)
    direct_l = torch.copysign(a.clamp(min=t), logits)  # l where |l| > t, else +-t
    sig = torch.sigmoid(direct_l)
    direct = sig / (2 * sig - 1) - direct_l.reciprocal()
    series_l = logits * series_weight  # l where |l| <= t, else 0
    s = series_l * series_l
    *coefs, last = (_cb_const(c, logits) for c in _CB_MEAN_TAYLOR[:n_terms])
    poly = last  # Horner in s = l^2, one fused multiply-add kernel per term
    for c in reversed(coefs):
        poly = torch.addcmul(c, poly, s)
    series = torch.addcmul(_cb_const(0.5, logits), poly, series_l)
    return torch.lerp(direct, series, series_weight)


def _cb_abs_shifted(logits: torch.Tensor) -> torch.Tensor:
    """|l| + sqrt(tiny): never 0, and tanh(a/2) = a/2 exactly at l = 0 (see the section comment)."""
    return logits.abs().add_(torch.finfo(logits.dtype).tiny ** 0.5)


def _cb_log_likelihood_value(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i [x_i l_i - A(l_i)] over the last dimension, not differentiated (see the section comment)."""
    a = _cb_abs_shifted(logits)
    # x l - A(l) = -([relu(l) - x l] - log(sigmoid(a) a / tanh(a/2))); the bracket first, so that it
    # is exactly 0 for x = 1, l > 0 and for x = 0, l < 0, however large |l| is.
    log_term = torch.tanh(a * 0.5).reciprocal_().mul_(a).mul_(torch.sigmoid(a)).log_()
    return torch.addcmul(logits.clamp(min=0), x, logits, value=-1).sub_(log_term).sum(-1).neg_()


class _ContinuousBernoulliLogLikelihood(torch.autograd.Function):
    """sum_i [x_i l_i - A(l_i)] over the last dimension; the gradient is x - E[x] (and l for x)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        return _cb_log_likelihood_value(logits, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> _Grads:
        logits, x = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        needs_logits, needs_x = ctx.needs_input_grad
        grad_logits = grad * (x - continuous_bernoulli_mean(logits)) if needs_logits else None
        grad_x = grad * logits if needs_x else None
        return grad_logits, grad_x


class _ContinuousBernoulliLogNorm(torch.autograd.Function):
    """log C(l) = log(a / tanh(a/2)), a = |l|, elementwise; the gradient is sigmoid(l) - E[x]."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits)
        a = _cb_abs_shifted(logits)
        return torch.tanh(a * 0.5).reciprocal_().mul_(a).log_()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (logits,) = ctx.saved_tensors
        return grad * (torch.sigmoid(logits) - continuous_bernoulli_mean(logits))


def continuous_bernoulli_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda), lambda = sigmoid(logits), elementwise: the continuous Bernoulli's log
    normaliser C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda), C(1/2) = 2 (the normaliser in
    Loaiza-Ganem & Cunningham's definition of the density, NeurIPS 2019).

    In the logit l, C = l / tanh(l/2), computed as log(a / tanh(a/2)), a = |l|, with no clamping of
    lambda: within ~2 ulp of the exact value for every l (log 2 at l = 0, log 2 + l^2/12 -
    7 l^4/1440 + ... near it, log|l| + 2 e^-|l| for large |l|). Differentiable: the gradient,
    sigmoid(l) - E[x], is finite everywhere and 0 at l = 0.
    """
    return _ContinuousBernoulliLogNorm.apply(logits)


def continuous_bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_i log C(lambda_i) + x_i log lambda_i + (1 - x_i) log(1 - lambda_i),
    lambda = sigmoid(logits), summed over the last dimension: the continuous Bernoulli
    (Loaiza-Ganem & Cunningham 2019, C(lambda) as in :func:`continuous_bernoulli_log_norm`), x in
    [0, 1] broadcast to the logits' shape.

    A normalised density on [0, 1]^D: its nats are comparable with the Gaussian decoder's log
    density of the same data, *not* with the grey-level Bernoulli cross-entropy
    (:func:`bernoulli_log_likelihood`, not a density of grey-level x). It can be positive.

    Computed per pixel as x l - A(l), A(l) = log((e^l - 1) / l), in one fused pass, exact (~2 ulp)
    for any l, l = 0 and |l| in the hundreds included. The gradient, x - E[x]
    (:func:`continuous_bernoulli_mean`), is built from differentiable ops, so second derivatives
    work too.
    """
    x = x.expand_as(logits)
    return _ContinuousBernoulliLogLikelihood.apply(logits, x)


def continuous_bernoulli_log_likelihood_traced(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`continuous_bernoulli_log_likelihood`'s value and its gradient in the logits, x - E[x],
    written in plain ops that ``torch.func`` and ``torch.compile`` trace (they cannot trace an
    ``autograd.Function``): the value is computed detached and the gradient enters as
    (l - stop_gradient(l)) (x - E[x]), which adds exactly 0 to the value. First derivatives in the
    logits only: no gradient in x and no second derivatives. For :mod:`vae_utils.compiled_step`.
    """
    x = x.expand_as(logits)
    fixed = logits.detach()
    slope = x - continuous_bernoulli_mean(fixed)
    return _cb_log_likelihood_value(fixed, x) + ((logits - fixed) * slope).sum(-1)


@torch.no_grad()
def continuous_bernoulli_sample(
    logits: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x ~ CB(sigmoid(logits)) elementwise: :func:`continuous_bernoulli_inverse_cdf` of one uniform
    draw per element from ``generator``; detached (no gradient)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    return continuous_bernoulli_inverse_cdf(logits, u)


def continuous_bernoulli_inverse_cdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """F^-1(u) of CB(sigmoid(logits)) elementwise, u in [0, 1]: a sample for a uniform u.

    The CDF is F(x) = (e^(l x) - 1) / (e^l - 1), so F^-1(u) = log1p(u expm1(l)) / l, and u at
    l = 0. Evaluated for a = -|l| <= 0, where nothing overflows, and reflected for l > 0
    (X ~ CB(l) iff 1 - X ~ CB(-l)), with u -> 1 - u so that x stays the monotone F_l^-1(u):
    log1p(v expm1(a)) / a for |a| < 1 and log(w + v e^a) / a beyond, w = 1 - v taken from the
    uniform draw itself (u or 1 - u, never 1 - (1 - u)) so that it is exact near v = 1. Within a
    few ulp for any l. Written for clarity (expm1, log1p, torch.where): about 2 ms for 100 x 784
    on one CPU core eagerly; ``torch.compile`` fuses it into one kernel.
    """
    positive = logits > 0
    a = -logits.abs()
    v, w = torch.where(positive, 1 - u, u), torch.where(positive, u, 1 - u)
    near = torch.log1p(v * torch.expm1(a)) / a
    far = torch.log(torch.addcmul(w, v, torch.exp(a))) / a
    y = torch.where(a > -1, torch.where(a == 0, v, near), far)
    return torch.where(positive, 1 - y, y).clamp_(0, 1)
