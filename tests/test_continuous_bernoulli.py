"""vae_utils.continuous_bernoulli (Loaiza-Ganem & Cunningham, NeurIPS 2019) against
independent references: the paper's own lambda-form of C(lambda), the mean and the log density,
evaluated in decimal arithmetic with 60+ significant digits; torch.distributions.ContinuousBernoulli
where it is accurate (|logit| <= 30 in float64: it clamps lambda and goes wrong beyond ~36);
quadrature of the density; autograd's gradcheck; for the sampler, the decimal inverse CDF of its
uniform draws, Monte-Carlo means and a Kolmogorov-Smirnov distance."""

import math
from decimal import Decimal, localcontext
from fractions import Fraction
from functools import cache

import pytest
import torch
from torch.distributions import ContinuousBernoulli

import vae_utils.continuous_bernoulli as cb
from vae_utils.continuous_bernoulli import (
    continuous_bernoulli_log_likelihood,
    continuous_bernoulli_log_likelihood_traced,
    continuous_bernoulli_log_norm,
    continuous_bernoulli_mean,
    continuous_bernoulli_sample,
)
from vae_utils.loss import bernoulli_log_likelihood

F32, F64 = torch.float32, torch.float64
LAMBDA_1E6 = math.log(1e-6 / (1 - 1e-6))  # the logit of lambda = 1e-6: -13.8155...
# |l| <= 4e-3 is inside torch's Taylor region (lambda in (0.499, 0.501)); 5e-324 is subnormal
SMALL = [0.0, 5e-324, 1e-300, 1e-12, 1e-5, 1e-3, 4e-3]
MODERATE = [0.1, 0.5, 1.0, 2.0, 5.0, -LAMBDA_1E6, 20.0, 30.0]
LARGE = [36.0, 37.0, 50.0, 100.0, 100.5, 700.0, 1e4, 1e5]  # torch.distributions is wrong here
XS = (0.0, 0.25, 0.7, 0.999, 1.0)


def _around_series_thresholds():
    """The switch between the mean's series and its direct formula, and the floats either side."""
    out = []
    for dtype in (F32, F64):
        t = torch.tensor(cb._cb_mean_series(dtype)[1], dtype=dtype)
        for v in (
            t,
            torch.nextafter(t, torch.tensor(0.0, dtype=dtype)),
            torch.nextafter(t, torch.tensor(9.0, dtype=dtype)),
        ):
            out.append(float(v))
    return out


def _grid():
    magnitudes = SMALL + MODERATE + LARGE + _around_series_thresholds()
    dense = torch.linspace(-2.5, 2.5, 101, dtype=F64).tolist()
    return sorted(set(magnitudes + [-v for v in magnitudes] + dense))


GRID = _grid()


@cache
def reference(logit: float, xs: tuple = ()) -> tuple:
    """(log C, E[x], log p(x) for x in xs) at the exact value of ``logit``, from the paper's
    lambda-form in decimal arithmetic, with 60 significant digits left after the cancellations
    in 1 - lambda and in lambda - 1/2:

        C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda),
        E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)),
        log p(x) = log C + x log lambda + (1 - x) log(1 - lambda).

    Beyond |l| = 100 (where lambda would need |l| / 2.3 digits) the same quantities in the logit,
    where nothing cancels: C = a (1 + e^-a) / (1 - e^-a), E[x] = 1 / (1 - e^-l) - 1 / l,
    log p(x) = x l - relu(l) - log(1 - e^-a) + log a, a = |l|.
    """
    with localcontext() as ctx:
        big = abs(logit) > 100
        digits = 0 if big or logit == 0 else max(abs(logit) / 2.3, -2 * math.log10(abs(logit)))
        ctx.prec = 60 + int(digits)
        lg = Decimal(logit)  # exact
        if lg == 0:
            log_c, mean, lam = Decimal(2).ln(), Decimal("0.5"), Decimal("0.5")
        elif big:
            a = abs(lg)
            e = (-a).exp()
            log_c = (a * (1 + e) / (1 - e)).ln()
            mean = 1 / (1 - (-lg).exp()) - 1 / lg
        else:
            lam = 1 / (1 + (-lg).exp())
            z = 1 - 2 * lam
            atanh = ((1 + z) / (1 - z)).ln() / 2
            log_c = (2 * atanh / z).ln()
            mean = lam / (2 * lam - 1) + 1 / (2 * atanh)
        out = [float(log_c), float(mean)]
        for x in xs:
            x = Decimal(x)
            if big:
                a = abs(lg)
                out.append(float(x * lg - max(lg, 0) - (1 - (-a).exp()).ln() + a.ln()))
            else:
                out.append(float(log_c + x * lam.ln() + (1 - x) * (1 - lam).ln()))
        return tuple(out)


def _ref_tensors(logits: torch.Tensor, xs=XS):
    rows = [reference(v, tuple(xs)) for v in logits.double().tolist()]
    ref = torch.tensor(rows, dtype=F64)
    return ref[:, 0], ref[:, 1], ref[:, 2:]


def _log_lik_per_x(logits: torch.Tensor, xs=XS) -> torch.Tensor:
    """(L, len(xs)): log p(x_j | l_i), one pixel each (last dimension of size 1)."""
    x = torch.tensor(xs, dtype=logits.dtype)
    per_x = logits[:, None, None].expand(-1, len(xs), 1)
    return continuous_bernoulli_log_likelihood(per_x, x[:, None])


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", [F64, F32])
def test_log_norm_and_mean_match_high_precision_reference(dtype):
    """log C and E[x] are within a few ulp (relative) of the paper's formulas evaluated with 60
    digits, for every logit on the grid: exactly 0, subnormal, inside torch's Taylor region, on
    and either side of the mean's series threshold, and |l| from 36 to 1e5, where lambda would
    round to 0 or 1 (and torch.distributions, which clamps lambda, is wrong)."""
    eps = torch.finfo(dtype).eps
    logits = torch.tensor(GRID, dtype=dtype)
    ref_log_c, ref_mean, _ = _ref_tensors(logits)  # at the logits' exact (rounded) values
    log_c = continuous_bernoulli_log_norm(logits).double()
    mean = continuous_bernoulli_mean(logits).double()
    assert torch.isfinite(log_c).all() and torch.isfinite(mean).all()
    torch.testing.assert_close(log_c, ref_log_c, rtol=4 * eps, atol=0)
    torch.testing.assert_close(mean, ref_mean, rtol=8 * eps, atol=0)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_log_likelihood_matches_high_precision_reference(dtype):
    """log p(x|l) = log C + x log lambda + (1 - x) log(1 - lambda) for grey and binary x, within
    4 eps (|x l| + |l| + |log p|): the conditioning of x l - A(l) in x and l."""
    eps = torch.finfo(dtype).eps
    logits = torch.tensor(GRID, dtype=dtype)
    _, _, ref = _ref_tensors(logits)
    ours = _log_lik_per_x(logits).double()
    x = torch.tensor(XS, dtype=dtype).double()
    scale = (logits.double().abs()[:, None] * (1 + x) + ref.abs()).clamp(min=1)
    assert torch.isfinite(ours).all()
    assert ((ours - ref).abs() / scale).max() <= 4 * eps


@pytest.mark.parametrize("dtype", [F64, F32])
def test_log_likelihood_of_binary_x_is_relatively_exact(dtype):
    """For x = 0 or 1 nothing of x l - A(l) is conditioned on |l|: log p is within a few ulp of
    |log p| itself (here log|l| + ..., ~11 at |l| = 1e5), not of |l|."""
    eps = torch.finfo(dtype).eps
    logits = torch.tensor(GRID, dtype=dtype)
    _, _, ref = _ref_tensors(logits, xs=(0.0, 1.0))
    ours = _log_lik_per_x(logits, xs=(0.0, 1.0)).double()
    assert ((ours - ref).abs() / ref.abs().clamp(min=1)).max() <= 4 * eps


def test_exact_values_at_lambda_one_half():
    """At l = 0 (lambda = 1/2, where the formulas read 0/0) the density is uniform: C = 2,
    E[x] = 1/2 exactly, log p(x) = 0, in both precisions and for -0.0 too."""
    for dtype in (F32, F64):
        zeros = torch.tensor([0.0, -0.0], dtype=dtype)
        assert continuous_bernoulli_mean(zeros).tolist() == [0.5, 0.5]
        log_2 = float(torch.tensor(math.log(2), dtype=dtype))
        assert continuous_bernoulli_log_norm(zeros).tolist() == [log_2, log_2]
        x = torch.tensor([0.3, 1.0], dtype=dtype)
        assert continuous_bernoulli_log_likelihood(zeros, x).item() == 0.0


def test_float32_agrees_with_float64():
    """At the same (float32) logits, float32 results equal float64 ones to a relative 1e-6, from
    l = 0 to |l| = 1e5; log p to 1e-6 of (|x l| + |l| + |log p|)."""
    torch.manual_seed(0)
    logits32 = torch.cat([torch.tensor(GRID, dtype=F32), torch.randn(500) * 5, torch.randn(500) * 200])
    logits64 = logits32.double()
    for fn in (continuous_bernoulli_log_norm, continuous_bernoulli_mean):
        torch.testing.assert_close(fn(logits32).double(), fn(logits64), rtol=1e-6, atol=0)
    ll32, ll64 = _log_lik_per_x(logits32).double(), _log_lik_per_x(logits64)
    scale = (logits64.abs()[:, None] * (1 + torch.tensor(XS, dtype=F64)) + ll64.abs()).clamp(min=1)
    assert ((ll32 - ll64).abs() / scale).max() <= 1e-6


@pytest.mark.parametrize("low, high, atol", [(0.0, 10.0, 1e-12), (10.0, 30.0, 1e-4)])
def test_matches_torch_distributions_where_torch_is_right(low, high, atol):
    """log p(x|l) and E[x] equal torch.distributions.ContinuousBernoulli(logits=l) in float64,
    including l = 0 and |l| < 4e-3 (torch's Taylor branch); to 1e-12 for |l| <= 10 and, beyond,
    to torch's own error (it rounds lambda: 2e-9 at |l| = 20, 3e-5 at 30)."""
    logits = torch.tensor([v for v in GRID if low <= abs(v) <= high], dtype=F64)
    x = torch.tensor(XS, dtype=F64)
    torch_lp = ContinuousBernoulli(logits=logits[:, None]).log_prob(x.expand(len(logits), -1))
    torch.testing.assert_close(_log_lik_per_x(logits), torch_lp, rtol=0, atol=atol)
    torch.testing.assert_close(
        continuous_bernoulli_mean(logits), ContinuousBernoulli(logits=logits).mean, rtol=0, atol=atol
    )


def test_log_likelihood_sums_the_last_dimension_and_broadcasts_x():
    """(..., D) logits and x broadcast to them, like bernoulli_log_likelihood: the sum over D of
    torch.distributions' log_prob; equal to the Bernoulli cross-entropy plus the summed log C;
    the gradient with respect to x is l."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 4, 50, generator=g, dtype=F64) * 4).requires_grad_()
    x = torch.rand(4, 50, generator=g, dtype=F64).requires_grad_()
    ours = continuous_bernoulli_log_likelihood(logits, x)
    assert ours.shape == (3, 4)
    ref = ContinuousBernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-11)
    torch.testing.assert_close(
        ours,
        bernoulli_log_likelihood(logits, x) + continuous_bernoulli_log_norm(logits).sum(-1),
        rtol=0,
        atol=1e-11,
    )
    grad_l, grad_x = torch.autograd.grad(ours.sum(), (logits, x))
    ref_l, ref_x = torch.autograd.grad(ref.sum(), (logits, x))
    torch.testing.assert_close(grad_l, ref_l, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_x, ref_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_x, logits.detach().sum(0), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- quadrature

LOGITS_TO_INTEGRATE = [0.0, LAMBDA_1E6, -LAMBDA_1E6, 0.3, -4.0, 200.0, -700.0]


def _quadrature_grid():
    """[0, 1], uniform (step 5e-6) plus geometric towards both ends, where the density of a large
    |l| lives (within ~1/|l| of 0 or 1)."""
    edge = torch.logspace(-15, 0, 20001, dtype=F64)
    x = torch.cat([torch.linspace(0, 1, 200001, dtype=F64), edge, 1 - edge])
    return torch.unique(x.clamp(0, 1))


@pytest.mark.parametrize("logit", LOGITS_TO_INTEGRATE)
def test_density_integrates_to_one_and_has_the_stated_mean(logit):
    """int_0^1 p(x) dx = 1 and int_0^1 x p(x) dx = E[x] (trapezoid rule), for lambda = 1/2,
    1e-6, 1 - 1e-6, and for l = 200 and -700, where lambda is 1 or 0 in floating point."""
    x = _quadrature_grid()
    logits = torch.full((len(x), 1), logit, dtype=F64)
    density = continuous_bernoulli_log_likelihood(logits, x[:, None]).exp()
    assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=2e-6)
    mean = continuous_bernoulli_mean(torch.tensor(logit, dtype=F64)).item()
    assert torch.trapezoid(x * density, x).item() == pytest.approx(mean, rel=2e-6)


# ----------------------------------------------------------------------------- the mean


def test_mean_limits_symmetry_and_order():
    """E[x] -> 1 as l -> +inf and -> 0 as l -> -inf (as 1 - 1/l and 1/|l|); E_{-l} = 1 - E_l;
    it increases with l and lies between 1/2 and lambda."""
    for dtype in (F32, F64):
        big = torch.tensor([1e30, -1e30, 1e5, -1e5], dtype=dtype)
        mean = continuous_bernoulli_mean(big)
        expected = torch.tensor([1.0, 1e-30, 1 - 1e-5, 1e-5], dtype=F64)
        torch.testing.assert_close(mean.double(), expected, rtol=2 * torch.finfo(dtype).eps, atol=0)
    logits = torch.linspace(-60, 60, 240001, dtype=F64)
    mean = continuous_bernoulli_mean(logits)
    assert (mean.diff() > 0).all()
    torch.testing.assert_close(continuous_bernoulli_mean(-logits), 1 - mean, rtol=0, atol=8 * 2.0**-52)
    lam = torch.sigmoid(logits)
    assert ((mean - 0.5) * (lam - mean) >= 0).all()


def test_mean_series_coefficients_are_bernoulli_numbers():
    """E[x] = 1/2 + sum_k B_2k / (2k)! l^(2k-1): the stored coefficients are those numbers,
    correctly rounded (Bernoulli numbers from their recurrence, in exact fractions)."""
    n = 2 * len(cb._CB_MEAN_TAYLOR)
    b = [Fraction(1)]
    for m in range(1, n + 1):
        b.append(-sum(math.comb(m + 1, k) * b[k] for k in range(m)) / (m + 1))
    expected = [float(b[2 * k] / math.factorial(2 * k)) for k in range(1, len(cb._CB_MEAN_TAYLOR) + 1)]
    assert list(cb._CB_MEAN_TAYLOR) == expected
    assert expected[:3] == [1 / 12, -1 / 720, 1 / 30240]


# ----------------------------------------------------------------------------- gradients


def _variance(logit: float) -> float:
    """Var[x] = d E[x] / dl = 1 / l^2 - e^l / (e^l - 1)^2 (1/12 at 0), in decimal arithmetic."""
    if logit == 0:
        return 1 / 12
    with localcontext() as ctx:
        ctx.prec = 60 + int(max(0.0, -3 * math.log10(abs(logit))))  # 1 / l^2 cancels
        lg = Decimal(logit)
        e = lg.exp()
        return float(1 / lg**2 - e / (e - 1) ** 2)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_gradients_are_finite_and_right_at_extreme_logits(dtype):
    """d log p / dl = x - E[x], d log C / dl = sigmoid(l) - E[x], d E[x] / dl = Var[x] (1/12 at 0):
    finite, first and second derivatives, at l = 0, +-0, subnormal, tiny, exactly at the series
    threshold (where the branches meet) and huge, up to the largest float; x - 1/2 and 0 at l = 0;
    Var[x] close to its decimal value."""
    finfo = torch.finfo(dtype)
    t = cb._cb_mean_series(dtype)[1]
    values = [
        0.0,
        -0.0,
        finfo.tiny / 8,
        1e-30,
        -1e-8,
        t,
        -t,
        40.0,
        -700.0,
        1e30,
        -1e30,
        finfo.max,
        -finfo.max,
    ]
    logits = torch.tensor(values, dtype=dtype, requires_grad=True)
    x = torch.full_like(logits, 0.3)
    for fn in (
        lambda lg: continuous_bernoulli_log_likelihood(lg, x),
        lambda lg: continuous_bernoulli_log_norm(lg).sum(),
        lambda lg: continuous_bernoulli_mean(lg).sum(),
    ):
        (grad,) = torch.autograd.grad(fn(logits), logits, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), logits)
        assert torch.isfinite(grad).all() and torch.isfinite(second).all()
    (grad_ll,) = torch.autograd.grad(continuous_bernoulli_log_likelihood(logits, x), logits)
    (grad_c,) = torch.autograd.grad(continuous_bernoulli_log_norm(logits).sum(), logits)
    (grad_mean,) = torch.autograd.grad(continuous_bernoulli_mean(logits).sum(), logits)
    mean = continuous_bernoulli_mean(logits.detach())
    torch.testing.assert_close(grad_ll, x - mean)
    torch.testing.assert_close(grad_c, torch.sigmoid(logits.detach()) - mean)
    moderate = slice(0, 9)  # up to -700: Var[x] = 1 / l^2 - e^l / (e^l - 1)^2, in decimal
    variance = torch.tensor([_variance(v) for v in values[moderate]], dtype=F64)
    # the direct formula's derivative cancels, ~30 ulp near |l| = 1; sigmoid's derivative near
    # |l| = 30 is only absolutely exact (1 - sigmoid(l) is rounded)
    torch.testing.assert_close(
        grad_mean[moderate].double(), variance, rtol=64 * finfo.eps, atol=4 * finfo.eps
    )
    assert grad_ll[:2].tolist() == [pytest.approx(-0.2, abs=finfo.eps)] * 2
    assert grad_c[:2].tolist() == [0.0, 0.0]
    assert grad_mean[:2].tolist() == [pytest.approx(1 / 12, rel=finfo.eps)] * 2


@pytest.mark.parametrize("dtype", [F64, F32])
def test_traced_log_likelihood_has_the_same_value_and_gradient(dtype):
    """The compiled step's plain-op log density equals the autograd.Function's bit for bit, value and
    gradient x - E[x], from l = 0 to 1e4, through autograd and through torch.func.grad (which cannot
    trace the Function), batched as the step calls it ((L, B, D) logits, (B, D) x)."""
    logits = torch.tensor(SMALL + MODERATE + LARGE, dtype=dtype)
    logits = torch.stack([logits, -logits]).unsqueeze(1).repeat(1, 3, 1)  # L = 2, B = 3
    x = torch.rand(logits.shape[1:], generator=torch.Generator().manual_seed(0), dtype=dtype)
    x[0], x[1] = 0.0, 1.0
    leaf = logits.clone().requires_grad_()
    value = continuous_bernoulli_log_likelihood(leaf, x)
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    traced_leaf = logits.clone().requires_grad_()
    traced = continuous_bernoulli_log_likelihood_traced(traced_leaf, x)
    (traced_grad,) = torch.autograd.grad(traced.sum(), traced_leaf)
    func_grad, func_value = torch.func.grad_and_value(
        lambda lg: continuous_bernoulli_log_likelihood_traced(lg, x).sum()
    )(logits)
    assert torch.equal(traced, value.detach()) and torch.equal(func_value, value.sum())
    assert torch.equal(traced_grad, grad) and torch.equal(func_grad, grad)
    assert torch.isfinite(grad).all()


GRADCHECK_LOGITS = [
    [-40.0, -3.0, -1.0, -0.2, 1e-3, 0.7, 1.001092, 2.5, 30.0],
    [0.0, 1e-8, -1e-5, 0.5, -0.999, 1.2135, 1.22, -5.0, 8.0],
]


def test_gradcheck_float64():
    """Analytic first and second derivatives equal finite differences (torch.autograd.gradcheck,
    gradgradcheck) for the log-likelihood (in l and x), log C and the mean, at l = 0 and with
    finite differences that straddle the mean's float64 series threshold (1.0010922)."""
    logits = torch.tensor(GRADCHECK_LOGITS, dtype=F64, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(logits.shape, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(continuous_bernoulli_log_likelihood, (logits, x))
    assert torch.autograd.gradgradcheck(continuous_bernoulli_log_likelihood, (logits, x))
    for fn in (continuous_bernoulli_log_norm, continuous_bernoulli_mean):
        assert torch.autograd.gradcheck(fn, (logits,))
        assert torch.autograd.gradgradcheck(fn, (logits,))


# ----------------------------------------------------------------------------- samples

SAMPLE_LOGITS = [-1e4, -50.0, -3.0, -0.5, 0.0, 1e-6, 0.5, 3.0, 50.0, 1e4]


def _cdf(logit: float, x: torch.Tensor) -> torch.Tensor:
    """F(x) = (e^(l x) - 1) / (e^l - 1), evaluated without overflow, in float64."""
    x = x.double()
    if logit == 0:
        return x
    if logit < 0:
        return torch.expm1(logit * x) / math.expm1(logit)
    return torch.exp(logit * (x - 1)) * torch.expm1(-logit * x) / math.expm1(-logit)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_samples_follow_the_distribution(dtype):
    """20,000 draws per logit lie in [0, 1]; their mean is E[x] within 4 standard errors; their
    Kolmogorov-Smirnov distance to the CDF is below the 0.1% critical value 1.95 / sqrt(n);
    the same generator seed gives the same draws."""
    n = 20000
    logits = torch.tensor(SAMPLE_LOGITS, dtype=dtype).repeat(n, 1)
    samples = continuous_bernoulli_sample(logits, torch.Generator().manual_seed(0))
    assert samples.dtype == dtype and samples.shape == logits.shape and not samples.requires_grad
    assert ((samples >= 0) & (samples <= 1)).all()
    again = continuous_bernoulli_sample(logits, torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, again, rtol=0, atol=0)
    mean = continuous_bernoulli_mean(logits[0]).double()
    se = samples.double().std(0) / math.sqrt(n)
    assert ((samples.double().mean(0) - mean).abs() <= 4 * se).all()
    for j, logit in enumerate(SAMPLE_LOGITS):
        sorted_x, _ = samples[:, j].sort()
        cdf = _cdf(logit, sorted_x)
        ranks = torch.arange(1, n + 1, dtype=F64)
        ks = torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max().item()
        assert ks < 1.95 / math.sqrt(n), (logit, ks)


def _inverse_cdf(logit: float, u: float) -> float:
    """F^-1(u) = log(1 + u (e^l - 1)) / l (u at l = 0), in decimal arithmetic."""
    if logit == 0:
        return u
    with localcontext() as ctx:
        ctx.prec = 60 + int(max(0.0, -math.log10(abs(logit))))
        lg, u = Decimal(logit), Decimal(u)
        return float((1 + u * (lg.exp() - 1)).ln() / lg)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_samples_are_the_inverse_cdf_of_the_generators_uniforms(dtype):
    """x = F^-1(u) for u = torch.rand(logits.shape, generator=...) (the monotone coupling the
    docstring states), within a few ulp of its decimal value, for |l| from 0 to 1e4, including
    u near 0 and 1 (where 1 - u must not be rounded)."""
    eps = torch.finfo(dtype).eps
    logits = torch.tensor(SAMPLE_LOGITS + [-1.0, 1.0, 1.5, -1.5, 20.0], dtype=dtype).repeat(500, 1)
    samples = continuous_bernoulli_sample(logits, torch.Generator().manual_seed(3))
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    ref = torch.tensor(
        [
            _inverse_cdf(lg, v)
            for lg, v in zip(logits.double().flatten().tolist(), u.double().flatten().tolist(), strict=True)
        ],
        dtype=F64,
    ).reshape(logits.shape)
    assert (samples.double() - ref).abs().max() <= 4 * eps


def test_samples_need_no_gradient_and_accept_no_generator():
    logits = torch.zeros(2, 3, requires_grad=True)
    samples = continuous_bernoulli_sample(logits)
    assert samples.shape == (2, 3) and not samples.requires_grad
