"""loss.py against independent references: torch.distributions for every log density and KL,
Monte-Carlo averages for the estimators, and small hand-built models for the importance-weighted
bound and the posterior statistics. Everything here runs on small tensors built in the test."""

import copy
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import vae_utils.loss as loss
import vae_utils.progress
from vae_utils.loss import (
    ELBO,
    LOG_2PI,
    bernoulli_log_likelihood,
    elbo,
    evaluate,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    kl_standard_normal,
    log_weights,
    posterior_statistics,
    reparameterize,
    standard_normal_log_density,
)
from vae_utils.model import VAE

LOGITS = [-200.0, -50.0, -20.0, -5.0, -1.0, 0.0, 0.5, 3.0, 20.0, 50.0, 200.0]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- KL


def _posterior_params(dtype=torch.float64):
    g = _gen(0)
    mu = torch.randn(4, 3, generator=g, dtype=dtype) * 1.5
    logvar = torch.randn(4, 3, generator=g, dtype=dtype) * 1.5
    return mu, logvar


def test_kl_matches_torch_distributions():
    """kl_standard_normal returns the per-dimension KL(N(mu, sigma^2) || N(0, 1)) of App. B, equal
    to torch.distributions.kl_divergence to float64 precision, also for extreme log-variances;
    it is zero exactly at mu = 0, logvar = 0."""
    mu, logvar = _posterior_params()
    mu = torch.cat([mu, torch.tensor([[0.0, 5.0, -3.0]], dtype=torch.float64)])
    logvar = torch.cat([logvar, torch.tensor([[0.0, -20.0, 10.0]], dtype=torch.float64)])
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    ours = kl_standard_normal(mu, logvar)
    assert ours.shape == mu.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert (ours >= 0).all()
    assert kl_standard_normal(torch.zeros(2), torch.zeros(2)).abs().max().item() == 0.0


def test_kl_matches_monte_carlo_estimate():
    """The analytic KL equals E_q[log q(z) - log p(z)] estimated from 200,000 samples of q per
    dimension (log densities from torch.distributions), within 5 Monte-Carlo standard errors."""
    mu, logvar = _posterior_params()
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, *mu.shape, generator=_gen(1), dtype=torch.float64)
    terms = q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)
    mc, se = terms.mean(0), terms.std(0) / math.sqrt(len(terms))
    err = (kl_standard_normal(mu, logvar) - mc).abs()
    assert (err < 5 * se).all(), (err / se).max()


# ----------------------------------------------------------------------------- log densities


def test_gaussian_log_density_matches_torch_distributions():
    """gaussian_log_density is the full log N(x; mean, diag exp(logvar)) summed over the last
    dimension (the 1/2 log 2 pi terms included), with broadcasting of x (L, B, D) against
    mean/logvar (B, D), and log-variances from -20 to 20."""
    g = _gen(2)
    x = torch.randn(5, 4, 6, generator=g, dtype=torch.float64)
    mean = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logvar = torch.linspace(-20, 20, 24, dtype=torch.float64).reshape(4, 6)
    ref = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum(-1)
    ours = gaussian_log_density(x, mean, logvar)
    assert ours.shape == (5, 4)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-9)
    # the constant is there: log N(0; 0, 1) = -1/2 log 2 pi per dimension
    assert gaussian_log_density(torch.zeros(3), torch.zeros(3), torch.zeros(3)).item() == pytest.approx(
        -1.5 * math.log(2 * math.pi)
    )


def test_standard_normal_log_density_matches_torch_distributions():
    """log p(z) under the prior N(0, I), summed over the latent dimensions."""
    z = torch.randn(7, 3, generator=_gen(3), dtype=torch.float64) * 3
    torch.testing.assert_close(
        standard_normal_log_density(z), Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_log_likelihood_matches_torch_distributions(dtype):
    """Per pixel (last dimension of size 1) and summed, bernoulli_log_likelihood equals
    Bernoulli(logits=l).log_prob(x), for binary and grey x and logits up to +-200; e.g. x=0 at
    l=200 gives exactly -200 nats. The naive sigmoid-then-log formula is -inf/NaN there."""
    logits = torch.tensor(LOGITS, dtype=dtype)
    for value in (0.0, 1.0, 0.3):
        x = torch.full_like(logits, value)
        ref = Bernoulli(logits=logits, validate_args=False).log_prob(x)
        ours = bernoulli_log_likelihood(logits.unsqueeze(-1), x.unsqueeze(-1))
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(bernoulli_log_likelihood(logits, x), ref.sum(), rtol=1e-6, atol=1e-5)
    x0 = torch.zeros(1, dtype=dtype)
    assert bernoulli_log_likelihood(torch.tensor([200.0], dtype=dtype), x0).item() == -200.0
    assert bernoulli_log_likelihood(torch.tensor([-200.0], dtype=dtype), x0).item() == 0.0
    y = torch.sigmoid(logits)
    naive = x0 * torch.log(y) + (1 - x0) * torch.log(1 - y)
    assert not torch.isfinite(naive).all()  # what working on logits avoids


def test_bernoulli_log_likelihood_broadcasts_x_over_samples():
    """Logits (L, B, D) against data (B, D): x is broadcast over the L samples of z, giving (L, B)."""
    g = _gen(4)
    logits = torch.randn(3, 2, 5, generator=g) * 4
    x = torch.rand(2, 5, generator=g)
    ours = bernoulli_log_likelihood(logits, x)
    assert ours.shape == (3, 2)
    ref = Bernoulli(logits=logits, validate_args=False).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(ours, ref)


def test_bernoulli_log_likelihood_forward_leaves_its_inputs_alone_and_sums_the_pixel_terms():
    """The autograd Function's forward works in place on a buffer of its own: logits and x come out
    unchanged (x broadcast over samples), and the sum equals bernoulli_pixel_log_likelihood's (the
    expression the compiled step traces) to float32 rounding."""
    from vae_utils.loss import bernoulli_pixel_log_likelihood

    g = _gen(5)
    logits = torch.randn(40, 3, 784, generator=g) * 8
    x = torch.rand(3, 784, generator=g)
    before = logits.clone(), x.clone()
    ours = bernoulli_log_likelihood(logits, x)
    assert torch.equal(logits, before[0]) and torch.equal(x, before[1])
    reference = bernoulli_pixel_log_likelihood(logits.double(), x.double()).sum(-1)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-4)


def test_sigmoid_tanh_is_tanh_to_float32_rounding():
    """SigmoidTanh, the inference copies' tanh, is within 2e-7 of the exact tanh everywhere,
    including tiny, large and infinite arguments (saturating at exactly -1 and 1), and keeps NaN."""
    from vae_utils.loss import SigmoidTanh

    y = torch.cat([torch.linspace(-30, 30, 600_001), torch.tensor([0.0, 1e-30, -1e-30, 1e-8, 90.0, -90.0])])
    torch.testing.assert_close(SigmoidTanh()(y).double(), torch.tanh(y.double()), rtol=0, atol=2e-7)
    ends = SigmoidTanh()(torch.tensor([math.inf, -math.inf, math.nan]))
    assert ends[0] == 1 and ends[1] == -1 and ends[2].isnan()


def test_bernoulli_gradient_gradcheck_float64():
    """The custom autograd Function's backward (x - sigmoid(l) for l, l for x) passes
    torch.autograd.gradcheck in float64, for logits up to +-30, grey x, and x broadcast over a
    leading sample dimension (so x's gradient is summed over it)."""
    g = _gen(5)
    logits = (torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 10).clamp(-30, 30)
    logits[0, 0, :2] = torch.tensor([30.0, -30.0], dtype=torch.float64)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(bernoulli_log_likelihood, (logits.requires_grad_(), x.requires_grad_()))


@pytest.mark.parametrize("value", [0.0, 1.0, 0.3])
def test_bernoulli_gradient_matches_autograd_at_extreme_logits(value):
    """At logits up to +-200 (float32) the gradient w.r.t. logits and x equals autograd through
    torch.distributions.Bernoulli(logits=...): finite and exactly x - sigmoid(l) up to rounding."""
    logits = torch.tensor(LOGITS, requires_grad=True)
    x = torch.full((len(LOGITS),), value, requires_grad=True)
    weights = torch.linspace(0.5, 2.0, len(LOGITS))  # a non-trivial upstream gradient
    (bernoulli_log_likelihood(logits.unsqueeze(-1), x.unsqueeze(-1)) * weights).sum().backward()
    ours_l, ours_x = logits.grad.clone(), x.grad.clone()
    logits.grad = x.grad = None
    (Bernoulli(logits=logits, validate_args=False).log_prob(x) * weights).sum().backward()
    assert torch.isfinite(ours_l).all() and torch.isfinite(ours_x).all()
    torch.testing.assert_close(ours_l, logits.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours_x, x.grad)


def test_bernoulli_double_backward_is_correct():
    """Second derivatives through bernoulli_log_likelihood (Hessian-vector products, gradient
    penalties) must be right: gradgradcheck in float64 for both inputs. (Note that
    ``once_differentiable`` would not turn this into an error: the missing path runs to the
    logits, not through the marked outputs, so it stays silently zero.)"""
    logits = torch.randn(3, 4, generator=_gen(6), dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 4, generator=_gen(7), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(bernoulli_log_likelihood, (logits, x), raise_exception=False)


# ----------------------------------------------------------------------------- reparameterisation


def test_reparameterize_has_mean_mu_and_variance_sigma_squared():
    """z = mu + sigma * eps with sigma = exp(logvar / 2): 200,000 samples have mean mu and variance
    sigma^2 = exp(logvar) (with the review's sigma^2 * eps typo the variance would be sigma^4:
    16 and 1/16 here instead of 4 and 1/4). Shape (L, B, N_z)."""
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    logvar = torch.log(torch.tensor([[4.0, 0.25]], dtype=torch.float64))
    z = reparameterize(mu, logvar, 200_000, _gen(8))
    assert z.shape == (200_000, 1, 2) and z.dtype == torch.float64
    var = torch.exp(logvar)[0]
    torch.testing.assert_close(z.mean(0)[0], mu[0], atol=float(5 * (var.max() / 200_000) ** 0.5), rtol=0)
    torch.testing.assert_close(z.var(0)[0], var, rtol=0.02, atol=0)
    # reproducible for one seed, different for another
    one, same, other = (reparameterize(mu, logvar, 3, _gen(s)) for s in (1, 1, 2))
    assert torch.equal(one, same) and not torch.equal(one, other)


def test_reparameterised_gradient_matches_analytic_gradient():
    """For f(z) = z^2, E_q[f] = mu^2 + sigma^2, so dE/dmu = 2 mu and dE/dlogvar = sigma^2. The
    pathwise (reparameterised) Monte-Carlo gradient from 100,000 samples matches both."""
    mu = torch.tensor([0.7, -1.5], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([0.4, -1.0], dtype=torch.float64, requires_grad=True)
    z = reparameterize(mu, logvar, 100_000, _gen(9))
    z.pow(2).mean(0).sum().backward()
    torch.testing.assert_close(mu.grad, 2 * mu.detach(), atol=0.03, rtol=0)
    torch.testing.assert_close(logvar.grad, logvar.detach().exp(), rtol=0.03, atol=0)


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_elbo_gradients_are_finite_and_nonzero(decoder, kl):
    """-ELBO.backward() gives finite, non-zero gradients for every encoder and decoder parameter;
    the reconstruction term alone still reaches every encoder parameter (only possible through
    z = mu + sigma * eps: a z sampled outside the graph would leave them at zero)."""
    torch.manual_seed(0)
    model = VAE(12, 10, 3, decoder=decoder)
    x = torch.rand(8, 12, generator=_gen(10))
    (-elbo(model, x, n_samples=2, kl=kl, generator=_gen(11)).elbo.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    model.zero_grad()
    (-elbo(model, x, kl=kl, generator=_gen(11)).recon.mean()).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- ELBO


def _small_model(decoder="bernoulli"):
    torch.manual_seed(0)
    model = VAE(10, 16, 2, decoder=decoder).double()
    x = torch.rand(4, 10, generator=_gen(12), dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_elbo_shapes_and_decomposition(kl, decoder):
    """ELBO terms are per datapoint (B,) whatever L is, and elbo == recon - kl exactly; the
    analytic KL term is sum_j KL_j of the encoder's q and does not depend on the samples."""
    model, x = _small_model(decoder)
    for n in (1, 5):
        out = elbo(model, x, n_samples=n, kl=kl, generator=_gen(13))
        assert isinstance(out, ELBO)
        assert out.elbo.shape == out.recon.shape == out.kl.shape == (4,)
        assert torch.equal(out.elbo, out.recon - out.kl)
    if kl == "analytic":
        mu, logvar = model.encode(x)
        torch.testing.assert_close(out.kl, kl_standard_normal(mu, logvar).sum(-1))
    with pytest.raises(ValueError, match="kl = 'exact'"):
        elbo(model, x, kl="exact")


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
def test_elbo_estimators_agree_with_reference_in_expectation(decoder):
    """With L = 20,000 samples per datapoint, estimator A (kl='mc') and estimator B
    (kl='analytic') agree with each other and with a reference ELBO computed independently via
    torch.distributions (E_q[sum over pixels log p(x|z)] - KL), within 5 standard errors. This also
    fixes the scale: log densities are summed over pixels, not averaged."""
    model, x = _small_model(decoder)
    L = 20_000
    a = elbo(model, x, n_samples=L, kl="mc", generator=_gen(14))
    b = elbo(model, x, n_samples=L, kl="analytic", generator=_gen(15))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        q = Normal(mu, torch.exp(0.5 * logvar))
        z = mu + torch.exp(0.5 * logvar) * torch.randn(L, *mu.shape, generator=_gen(16), dtype=mu.dtype)
        if decoder == "bernoulli":
            log_px = Bernoulli(logits=model.decoder(z), validate_args=False).log_prob(x).sum(-1)
        else:
            mean, lv = model.decoder(z)
            log_px = Normal(mean, torch.exp(0.5 * lv)).log_prob(x).sum(-1)
        log_w = log_px + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        ref = log_px.mean(0) - kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        se = (log_w.std(0) / math.sqrt(L)).detach()
    for est in (a, b):
        assert (est.elbo.detach() - ref).abs().max() < 5 * math.sqrt(2) * se.max()
    assert ((a.elbo - b.elbo).detach().abs() < 5 * math.sqrt(2) * se).all()
    assert ((a.kl - b.kl).detach().abs() < 5 * math.sqrt(2) * se).all()
    # A's KL is a sample average of log q - log p: it may be negative for one sample, not on average
    assert (a.kl > 0).all()


def test_evaluate_is_seeded_average_of_elbo():
    """evaluate() averages the ELBO terms over all of x (nats per datapoint), with sampled z from a
    generator seeded by ``seed``: the same seed gives the same numbers, another seed a slightly
    different one, batching does not change the expectation, and elbo == recon - kl."""
    model, _ = _small_model()
    x = torch.rand(300, 10, generator=_gen(17), dtype=torch.float64)
    r1 = evaluate(model, x, seed=3)
    assert set(r1) == {"elbo", "recon", "kl"}
    assert r1 == evaluate(model, x, seed=3)
    assert r1 != evaluate(model, x, seed=4)
    assert r1["elbo"] == pytest.approx(r1["recon"] - r1["kl"], abs=1e-9)
    with torch.no_grad():
        per_point = elbo(model, x, n_samples=2000, generator=_gen(18)).elbo
    assert r1["elbo"] == pytest.approx(per_point.mean().item(), abs=0.05)
    assert evaluate(model, x, seed=3, batch_size=7)["elbo"] == pytest.approx(r1["elbo"], abs=0.05)
    mu, logvar = model.encode(x)
    assert r1["kl"] == pytest.approx(kl_standard_normal(mu, logvar).sum(-1).mean().item(), rel=1e-9)


# ----------------------------------------------------------------------------- importance weighting


@pytest.fixture(scope="module")
def iw_setup():
    """A 20-pixel Bernoulli VAE whose decoder depends strongly on z (weights x3) and whose q is
    too narrow (log-variance bias -1.5), so that the importance-weighted bound visibly tightens
    with k; 300 binary datapoints."""
    torch.manual_seed(0)
    model = VAE(20, 32, 2).double()
    with torch.no_grad():
        model.decoder.net[0].weight.mul_(3)
        model.decoder.net[2].weight.mul_(3)
        model.encoder.net[2].bias[2:] = -1.5
    x = torch.bernoulli(torch.full((300, 20), 0.3, dtype=torch.float64), generator=_gen(19))
    estimates = {
        k: importance_weighted_log_likelihood(model, x, k=k, seed=1, progress=False) for k in (1, 10, 100)
    }
    return model, x, estimates


def test_iwae_rises_with_k_and_bounds_elbo(iw_setup):
    """Averaged over 300 datapoints, log p(x) estimates with k = 1, 10, 100 rise with k, each step
    by more than 3 standard errors of the paired differences, and the k = 100 estimate is above
    the ELBO (estimator B, L = 100). Each estimate is (N,) float64."""
    model, x, est = iw_setup
    for v in est.values():
        assert v.shape == (300,) and v.dtype == torch.float64 and torch.isfinite(v).all()
    for lo, hi in ((1, 10), (10, 100)):
        d = est[hi] - est[lo]
        assert d.mean() > 3 * d.std() / math.sqrt(len(d)), (lo, hi, d.mean())
    elbo_b = evaluate(model, x, n_samples=100, kl="analytic", seed=5)["elbo"]
    assert est[100].mean().item() > elbo_b + 0.5


def test_iwae_k1_is_estimator_a_in_expectation(iw_setup):
    """With k = 1 the estimate is one log-weight log p(x,z) - log q(z|x): over 4,000 independent
    draws for one datapoint its mean equals estimator A's ELBO (L = 4,000, another seed) within
    5 standard errors; over the 300 datapoints it matches evaluate(kl='mc')."""
    model, x, est = iw_setup
    xs = x[:1].expand(4000, -1)
    draws = importance_weighted_log_likelihood(model, xs, k=1, seed=7, progress=False)
    a = elbo(model, x[:1], n_samples=4000, kl="mc", generator=_gen(20)).elbo.item()
    se = draws.std().item() / math.sqrt(4000)
    assert abs(draws.mean().item() - a) < 5 * math.sqrt(2) * se
    ev = evaluate(model, x, n_samples=200, kl="mc", seed=9)["elbo"]
    d = est[1] - ev
    assert abs(d.mean().item()) < 5 * est[1].std().item() / math.sqrt(len(d))


@pytest.mark.parametrize("max_elements", [40, 200, 1 << 24])
def test_iwae_chunking_combines_exactly(monkeypatch, max_elements):
    """The chunked running logsumexp gives exactly logsumexp_j log w_j - log k, whatever the batch
    and chunk sizes (max_elements=40: one datapoint at a time, chunks of 8 + 5 samples; 200:
    batches of 3, 3, 1; default: one pass). log_weights is replaced by a deterministic stand-in
    that numbers each datapoint's samples, so every chunking sees the same k weights per
    datapoint."""
    k, n, d = 13, 7, 5
    x = torch.zeros(n, d, dtype=torch.float64)
    x[:, 0] = torch.arange(n, dtype=torch.float64)
    drawn = {i: 0 for i in range(n)}
    calls = []

    def fake_log_weights(model, xb, count, generator=None):
        calls.append((len(xb), count))
        out = torch.empty(count, len(xb), dtype=torch.float64)
        for b, row in enumerate(xb):
            i = int(row[0])
            j = torch.arange(drawn[i], drawn[i] + count, dtype=torch.float64)
            out[:, b] = 3 * torch.sin(7.0 * i + j) - 2.0 * i
            drawn[i] += count
        return out

    monkeypatch.setattr(loss, "log_weights", fake_log_weights)
    got = importance_weighted_log_likelihood(None, x, k=k, max_elements=max_elements, progress=False)
    assert all(v == k for v in drawn.values())  # every datapoint got exactly k samples
    j = torch.arange(k, dtype=torch.float64)
    expected = torch.stack(
        [torch.logsumexp(3 * torch.sin(7.0 * i + j) - 2.0 * i, 0) - math.log(k) for i in range(n)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert max(b * c * d for b, c in calls) <= max(max_elements, k * d)
    if max_elements == 40:
        assert calls[:2] == [(1, 8), (1, 5)]
    elif max_elements == 200:
        assert [b for b, _ in calls] == [3, 3, 1]


def test_iwae_chunked_and_unchunked_agree_within_monte_carlo_error(iw_setup):
    """On the real model, chunking draws the samples in another order, so for the same seed the
    numbers are not identical; they agree within Monte-Carlo error (mean paired difference under
    4 standard errors), and the same seed and chunking reproduces them exactly."""
    model, x, est = iw_setup
    x = x[:100]
    chunked = importance_weighted_log_likelihood(model, x, k=100, seed=1, max_elements=600, progress=False)
    assert torch.equal(
        chunked, importance_weighted_log_likelihood(model, x, k=100, seed=1, max_elements=600, progress=False)
    )
    d = chunked - est[100][:100]
    assert abs(d.mean().item()) < 4 * d.std().item() / math.sqrt(len(d)) + 1e-12
    assert d.abs().max() < 3.0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this torch build")
def test_a_float32_estimate_on_a_cpu_multiplies_with_onednn_to_the_same_numbers(iw_setup, monkeypatch):
    """A float32 model's linear layers run on oneDNN in a copy, its tanh as SigmoidTanh: the model
    keeps its nn.Linear and nn.Tanh layers, the estimate equals the one through torch's BLAS and
    torch.tanh to float rounding and repeats exactly; a float64 model, and a copy already made, are
    used as they are."""
    from vae_utils import loss

    model64, x64, _ = iw_setup
    model, x = copy.deepcopy(model64).float(), x64[:50].float()
    fast = loss.onednn_inference_copy(model, x)
    assert fast is not model and type(fast.decoder.net[0]).__name__ == "MkldnnLinear"
    assert type(fast.decoder.net[1]) is loss.SigmoidTanh and type(fast.encoder.net[1]) is loss.SigmoidTanh
    assert all(type(m) is torch.nn.Linear for m in model.modules() if "Linear" in type(m).__name__)
    assert type(model.decoder.net[1]) is torch.nn.Tanh
    assert loss.onednn_inference_copy(model64, x64) is model64
    assert loss.onednn_inference_copy(fast, x) is fast
    got = importance_weighted_log_likelihood(model, x, k=50, seed=1, progress=False)
    assert torch.equal(got, importance_weighted_log_likelihood(model, x, k=50, seed=1, progress=False))
    monkeypatch.setattr(loss, "onednn_inference_copy", lambda m, _: m)
    blas = importance_weighted_log_likelihood(model, x, k=50, seed=1, progress=False)
    torch.testing.assert_close(got, blas, rtol=1e-5, atol=1e-5)


def test_iwae_progress_is_printed_when_not_interactive(iw_setup, capsys, monkeypatch):
    """With progress=True and no terminal (as under papermill/nbval/pytest), plain progress lines
    are printed so that a long k=5000 evaluation is visibly alive; progress=False prints nothing."""
    monkeypatch.setattr(vae_utils.progress, "interactive", lambda: False)
    model, x, _ = iw_setup
    importance_weighted_log_likelihood(model, x[:20], k=5, max_elements=5 * 20 * 4, progress=True)
    out = capsys.readouterr().out
    assert "log p(x), k=5" in out and "5/5 batch" in out
    importance_weighted_log_likelihood(model, x[:20], k=5, progress=False)
    assert capsys.readouterr().out == ""


def test_log_weights_definition(iw_setup):
    """log_weights returns (k, B) values log p(x|z) + log p(z) - log q(z|x) for z drawn by
    reparameterize from the same generator state (recomputed here with torch.distributions)."""
    model, x, _ = iw_setup
    w = log_weights(model, x[:6], 4, _gen(21))
    assert w.shape == (4, 6)
    mu, logvar = model.encode(x[:6])
    z = reparameterize(mu, logvar, 4, _gen(21))
    q = Normal(mu, torch.exp(0.5 * logvar))
    ref = (
        Bernoulli(logits=model.decoder(z), validate_args=False).log_prob(x[:6]).sum(-1)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - q.log_prob(z).sum(-1)
    )
    torch.testing.assert_close(w, ref.detach())


# ----------------------------------------------------------------------------- posterior statistics


def test_posterior_statistics_detects_a_constant_latent_dimension():
    """With latent dimension 1 forced constant (its mu row zeroed, bias 0.7), it has activity
    Var_x(mu_1) = 0 and is inactive, while dimensions 0 and 2 (weights x5) are active (> 0.01).
    The KL per dimension is the data average of kl_standard_normal; batching does not change
    the results."""
    torch.manual_seed(0)
    model = VAE(20, 32, 3)
    with torch.no_grad():
        head = model.encoder.net[2]
        head.weight[[0, 2]] *= 5
        head.weight[1] = 0.0
        head.bias[1] = 0.7
    x = torch.rand(200, 20, generator=_gen(22))
    stats = posterior_statistics(model, x)
    assert stats["kl"].shape == stats["activity"].shape == stats["active"].shape == (3,)
    assert stats["active"].dtype == torch.bool
    assert stats["active"].tolist() == [True, False, True]
    assert stats["activity"][1].item() == pytest.approx(0.0, abs=1e-12)
    assert (stats["activity"][[0, 2]] > 0.01).all()
    with torch.no_grad():
        mu, logvar = model.encode(x)
    torch.testing.assert_close(stats["mu"], mu)
    torch.testing.assert_close(stats["activity"], mu.var(0))
    torch.testing.assert_close(stats["kl"], kl_standard_normal(mu, logvar).mean(0))
    small = posterior_statistics(model, x, batch_size=7)
    for key in ("kl", "activity"):
        torch.testing.assert_close(small[key], stats[key])
    assert torch.equal(small["active"], stats["active"])


def test_aggregate_posterior_moments_are_the_mixtures_and_zero_kl_for_the_prior():
    """The aggregate posterior 1/N sum_n q(z|x_n): its moments match draws from the mixture; an
    encoder that returns the prior for every x has an aggregate KL of 0, one whose codes all sit at
    mean 1 with variance 1/4 has 1/2 (1 + 1/4 - 1 - log 1/4) = 0.818 nats."""
    torch.manual_seed(0)
    model = VAE(20, 32, 2)
    x = torch.rand(300, 20, generator=_gen(23))
    stats = posterior_statistics(model, x, batch_size=64)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        draws = mu + torch.exp(0.5 * logvar) * torch.randn(400, *mu.shape, generator=_gen(24))
    torch.testing.assert_close(stats["aggregate_mean"], draws.mean((0, 1)), atol=0.01, rtol=0)
    torch.testing.assert_close(stats["aggregate_var"], draws.reshape(-1, 2).var(0), atol=0.01, rtol=0.01)
    with torch.no_grad():
        head = model.encoder.net[2]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 1.0, 0.0, math.log(0.25)]))  # [mu_0, mu_1, logvar_0, logvar_1]
    stats = posterior_statistics(model, x)
    torch.testing.assert_close(stats["aggregate_mean"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(stats["aggregate_var"], torch.tensor([1.0, 0.25]))
    torch.testing.assert_close(stats["aggregate_kl"], torch.tensor([0.0, 0.5 * (0.25 - math.log(0.25))]))


def test_per_datapoint_elbo_rows_and_frame():
    """per_datapoint_elbo gives one (elbo, recon, kl) row per datapoint with elbo = recon - kl;
    its first batch equals elbo() called with a generator seeded the same way; to_frame keeps
    the values as float64 columns; evaluate is its mean."""
    model, _ = _small_model()
    x = torch.rand(20, model.data_dim, generator=_gen(23), dtype=torch.float64)
    terms = loss.per_datapoint_elbo(model, x, n_samples=2, seed=3, batch_size=8)
    assert all(t.shape == (20,) for t in terms)
    torch.testing.assert_close(terms.elbo, terms.recon - terms.kl)
    with torch.no_grad():
        first = elbo(model, x[:8], 2, "analytic", torch.Generator().manual_seed(3))
    torch.testing.assert_close(terms.elbo[:8], first.elbo)
    frame = terms.to_frame()
    assert list(frame.columns) == ["elbo", "recon", "kl"] and len(frame) == 20
    assert (frame.dtypes == "float64").all()
    assert frame["recon"].to_numpy() == pytest.approx(terms.recon.double().numpy())
    reference = evaluate(model, x, n_samples=2, seed=3, batch_size=8)
    assert frame["elbo"].mean() == pytest.approx(reference["elbo"], rel=1e-6)


# ----------------------------------------------------------------------------- the z-ignored baseline


def test_factorised_gaussian_is_the_closed_form_maximum():
    x = torch.rand(200, 6, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.2
    mean, variance = x.double().mean(0), x.double().var(0, unbiased=False)
    got = loss.factorised_log_likelihood(x, x, "gaussian", min_logvar=-20.0).double().mean()
    # at the maximum-likelihood mean and variance, the average log density is -1/2 sum (log 2 pi s^2 + 1)
    assert got.item() == pytest.approx(-0.5 * (LOG_2PI + torch.log(variance) + 1).sum().item(), rel=1e-6)
    for shift, scale in ((0.01, 1.0), (0.0, 1.2), (0.0, 0.8)):  # moving either parameter lowers it
        other = gaussian_log_density(x.double(), mean + shift, torch.log(variance * scale)).mean()
        assert other < got


def test_factorised_gaussian_holds_the_log_variance_at_the_decoders_floor():
    x = torch.full((10, 3), 0.5)  # zero variance: unbounded without the floor
    got = loss.factorised_log_likelihood(x, x, "gaussian", min_logvar=-6.0)
    assert got[0].item() == pytest.approx(3 * -0.5 * (LOG_2PI - 6.0), rel=1e-6)


def test_factorised_bernoulli_uses_add_one_smoothing():
    x_fit = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # pixel 2 never on
    y = torch.tensor([3.0 / 5.0, 1.0 / 5.0])  # (sum + 1) / (N + 2)
    x_eval = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = (x_eval * y.log() + (1 - x_eval) * (1 - y).log()).sum(-1)
    got = loss.factorised_log_likelihood(x_fit, x_eval, "bernoulli")
    assert torch.allclose(got, expected)
    assert torch.isfinite(got).all()  # a test image inking a pixel the training set never inked


def test_factorised_log_likelihood_names_the_decoders_it_has():
    with pytest.raises(ValueError, match="decoder = 'continuous_bernoulli'.*'bernoulli', 'gaussian'"):
        loss.factorised_log_likelihood(torch.rand(3, 2), torch.rand(3, 2), "continuous_bernoulli")
