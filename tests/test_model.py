"""The VAE of model.py: shapes, the Gaussian decoder's smooth log-variance floor, the paper's
initialisation, and decode() (the mean) against sample_x() (a draw)."""

import math

import pytest
import torch

from vae_utils.config import TrainConfig
from vae_utils.model import VAE, BernoulliDecoder, GaussianDecoder, GaussianEncoder, paper_init_

D, H, Z, B = 12, 16, 3, 5


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_output_shapes(decoder, activation):
    """encode gives (mu, logvar) of (B, N_z); decode / sample_x / reconstruct give (B, D) for a batch
    and (L, B, D) for L samples of z per datapoint; sample_prior gives (n, N_z)."""
    torch.manual_seed(0)
    model = VAE(D, H, Z, decoder=decoder, activation=activation)
    x = torch.rand(B, D)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (B, Z)
    z = torch.randn(4, B, Z)
    assert model.decode(z).shape == (4, B, D)
    assert model.sample_x(z).shape == (4, B, D)
    assert model.decoder.log_prob(x, z).shape == (4, B)
    assert model.reconstruct(x).shape == (B, D)
    assert model.sample_prior(7).shape == (7, Z)
    if decoder == "gaussian":
        mean, lv = model.decoder(z)
        assert mean.shape == lv.shape == (4, B, D)
    else:
        assert model.decoder(z).shape == (4, B, D)


def test_activation_is_used():
    """activation='relu' puts a ReLU in both MLPs, 'tanh' a Tanh (the paper's)."""
    assert isinstance(VAE(D, H, Z, activation="relu").encoder.net[1], torch.nn.ReLU)
    assert isinstance(VAE(D, H, Z, activation="relu").decoder.net[1], torch.nn.ReLU)
    assert isinstance(VAE(D, H, Z).encoder.net[1], torch.nn.Tanh)


def _gaussian_decoder_with_raw(raw: torch.Tensor, min_logvar: float, sigmoid_mean=False):
    """A GaussianDecoder whose pre-activation log-variance equals ``raw`` for any z (zero weights,
    the bias set to raw) and whose pre-activation mean is ``raw`` too."""
    dec = GaussianDecoder(Z, H, len(raw), min_logvar=min_logvar, sigmoid_mean=sigmoid_mean)
    with torch.no_grad():
        last = dec.net[2]
        last.weight.zero_()
        last.bias.copy_(torch.cat([raw, raw]))
    return dec


def test_gaussian_logvar_floor_is_smooth_and_never_crossed():
    """log sigma^2 = m + softplus(a - m): for hugely negative pre-activations a it stays >= m (and
    finite, so the likelihood of constant pixels stays bounded), at a = m it is m + log 2, and far
    above m it equals a."""
    m = -6.0
    raw = torch.tensor([-1e30, -1e6, -50.0, m, m + 5.0, 0.0, 3.0, 40.0, 1e4])
    dec = _gaussian_decoder_with_raw(raw, m)
    _, logvar = dec(torch.randn(10, Z))
    assert torch.isfinite(logvar).all()
    assert (logvar >= m).all()
    torch.testing.assert_close(logvar[0, :3], torch.full((3,), m))
    assert logvar[0, 3].item() == pytest.approx(m + math.log(2), abs=1e-5)
    assert logvar[0, 4].item() == pytest.approx(m + math.log1p(math.exp(5.0)), abs=1e-5)
    torch.testing.assert_close(logvar[0, 5:], raw[5:], atol=1e-2, rtol=0)  # a - m >= 6: ~a
    torch.testing.assert_close(logvar[0, 7:], raw[7:])  # far above: equal to float precision
    # the per-pixel log density is bounded above by -1/2 (log 2 pi + m) even for x == mean
    x = dec(torch.zeros(1, Z))[0]
    bound = -0.5 * (math.log(2 * math.pi) + m) * len(raw)
    assert dec.log_prob(x, torch.zeros(1, Z)).item() <= bound + 1e-3


@pytest.mark.parametrize("decoder", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_pixel_log_prob_is_what_log_prob_sums(decoder):
    """pixel_log_prob gives each pixel's log p(x_i|z), (L, B, D); their sum is log_prob, and no
    pixel exceeds max_pixel_log_prob (0 for the Bernoulli, -1/2 (log 2 pi + min_logvar) for the
    Gaussian, unbounded for the continuous Bernoulli)."""
    torch.manual_seed(0)
    model = VAE(D, H, Z, decoder=decoder)
    x = torch.cat([torch.zeros(B, 2), torch.ones(B, 2), torch.rand(B, D - 4)], dim=1)
    if decoder == "bernoulli":
        x = x.round()
    z = torch.randn(4, B, Z)
    pixels = model.decoder.pixel_log_prob(x, z)
    assert pixels.shape == (4, B, D)
    torch.testing.assert_close(pixels.sum(-1), model.decoder.log_prob(x, z))
    assert (pixels <= model.decoder.max_pixel_log_prob).all()
    most = {
        "bernoulli": 0.0,
        "continuous_bernoulli": math.inf,
        "gaussian": -0.5 * (math.log(2 * math.pi) - 6),
    }
    assert model.decoder.max_pixel_log_prob == pytest.approx(most[decoder])


@pytest.mark.parametrize("decoder", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_under_bfloat16_autocast_the_likelihood_is_computed_in_float32(decoder):
    """The network's output is bfloat16 under autocast; log_prob takes it to float32 before the
    elementwise log densities and their sum over pixels, so the result is float32 and equals the
    float32 likelihood of the rounded output (in bfloat16 each of the D terms would be rounded)."""
    torch.manual_seed(0)
    model = VAE(D, H, Z, decoder=decoder)
    x = torch.rand(B, D).round() if decoder == "bernoulli" else torch.rand(B, D)
    z = torch.randn(3, B, Z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.decoder(z)
        value = model.decoder.log_prob(x, z)
    params = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
    assert {o.dtype for o in (out if isinstance(out, tuple) else (out,))} == {torch.bfloat16}
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, model.decoder.log_density(params, x), rtol=0, atol=0)


def test_gaussian_logvar_floor_follows_min_logvar():
    """A different min_logvar moves the floor with it."""
    dec = _gaussian_decoder_with_raw(torch.tensor([-1e4, 100.0]), min_logvar=-2.5)
    _, logvar = dec(torch.zeros(1, Z))
    assert logvar[0, 0].item() == pytest.approx(-2.5)
    assert logvar[0, 1].item() == pytest.approx(100.0)


def test_sigmoid_mean_lies_in_unit_interval():
    """With sigmoid_mean the Gaussian decoder's mean is sigmoid(pre-activation), in (0, 1) even for
    huge pre-activations (float32 rounds sigmoid(+-40) to 1 / ~0, but never outside [0, 1]);
    without it the mean is the raw linear output."""
    raw = torch.tensor([-40.0, -3.0, 0.0, 2.0, 40.0])
    mean, _ = _gaussian_decoder_with_raw(raw, -6.0, sigmoid_mean=True)(torch.zeros(2, Z))
    assert ((mean >= 0) & (mean <= 1)).all()
    torch.testing.assert_close(mean[0], torch.sigmoid(raw))
    assert ((mean[0, 1:4] > 0) & (mean[0, 1:4] < 1)).all()
    mean_raw, _ = _gaussian_decoder_with_raw(raw, -6.0, sigmoid_mean=False)(torch.zeros(2, Z))
    torch.testing.assert_close(mean_raw[0], raw)
    torch.manual_seed(0)
    model = VAE(D, H, Z, decoder="gaussian", sigmoid_mean=True)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(50)  # saturate
        out = model.decode(torch.randn(100, Z) * 10)
    assert ((out >= 0) & (out <= 1)).all()


def test_paper_init_std_is_0_01():
    """init='paper' draws every parameter, biases included, from N(0, 0.01^2): sample mean ~0 and
    sample std ~0.01 over all (~25k) parameters, and no parameter left at PyTorch's default."""
    torch.manual_seed(0)
    model = VAE(784, 16, 2, init="paper")
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert len(values) > 20_000
    assert abs(values.mean().item()) < 5 * 0.01 / math.sqrt(len(values))
    assert values.std().item() == pytest.approx(0.01, rel=0.03)
    for name, p in model.named_parameters():
        assert p.detach().std().item() == pytest.approx(0.01, rel=0.5), name
    # PyTorch's default for the 784->16 layer is U(-1/28, 1/28): std 0.0206, clearly different
    default = VAE(784, 16, 2).encoder.net[0].weight.std().item()
    assert default == pytest.approx(1 / 28 / math.sqrt(3), rel=0.05)


def test_paper_init_helper_and_from_config():
    """paper_init_ with another std, and VAE.from_config passing every model field through."""
    torch.manual_seed(0)
    enc = GaussianEncoder(50, 40, 2)
    paper_init_(enc, std=0.5)
    w = torch.cat([p.detach().flatten() for p in enc.parameters()])
    assert w.std().item() == pytest.approx(0.5, rel=0.05)
    c = TrainConfig(
        decoder="gaussian",
        hidden_dim=9,
        latent_dim=4,
        activation="relu",
        init="paper",
        min_logvar=-3.0,
        sigmoid_mean=True,
    )
    m = VAE.from_config(c, 20)
    assert isinstance(m.decoder, GaussianDecoder)
    assert (m.decoder.min_logvar, m.decoder.sigmoid_mean) == (-3.0, True)
    assert m.encoder.net[0].weight.shape == (9, 20) and m.encoder.net[2].weight.shape == (8, 9)
    assert m.decoder.net[2].weight.shape == (40, 9)
    assert isinstance(m.encoder.net[1], torch.nn.ReLU)
    assert m.decoder.net[0].weight.std().item() < 0.03


def test_bad_constructor_arguments():
    """VAE() itself refuses an unknown decoder or init with a ValueError naming it."""
    with pytest.raises(ValueError, match="decoder = 'poisson'"):
        VAE(D, H, Z, decoder="poisson")
    with pytest.raises(ValueError, match="init = 'zeros'"):
        VAE(D, H, Z, init="zeros")


def test_bernoulli_decode_is_sigmoid_of_logits_and_sample_x_is_a_draw():
    """decode() is the Bernoulli mean sigmoid(logits), in [0, 1]; sample_x() draws binary pixels
    whose frequency over many draws matches the mean, so it differs from decode()."""
    torch.manual_seed(0)
    model = VAE(D, H, Z)
    z = torch.randn(2, Z)
    with torch.no_grad():
        mean = model.decode(z)
        torch.testing.assert_close(mean, torch.sigmoid(model.decoder(z)))
        assert isinstance(model.decoder, BernoulliDecoder)
        draws = model.sample_x(z.expand(20_000, 2, Z), torch.Generator().manual_seed(1))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(draws[0], mean)
    torch.testing.assert_close(draws.mean(0), mean, atol=0.015, rtol=0)


def test_gaussian_decode_is_mean_and_sample_x_has_decoder_variance():
    """For the Gaussian decoder decode() is mu (not a draw); sample_x() = mu + sigma * eps, so its
    sample mean is mu and its sample variance is exp(logvar)."""
    torch.manual_seed(0)
    model = VAE(D, H, Z, decoder="gaussian", min_logvar=-3.0)
    z = torch.randn(1, Z)
    with torch.no_grad():
        mu, logvar = model.decoder(z)
        torch.testing.assert_close(model.decode(z), mu)
        draws = model.sample_x(z.expand(40_000, Z), torch.Generator().manual_seed(2))
    assert not torch.allclose(draws[0], mu[0])
    var = logvar.exp()[0]
    torch.testing.assert_close(draws.mean(0), mu[0], atol=float(5 * (var.max() / 40_000) ** 0.5), rtol=0)
    torch.testing.assert_close(draws.var(0), var, rtol=0.05, atol=0)


def test_reconstruct_uses_posterior_mean():
    """reconstruct(x) = decode(mu(x)): deterministic, the same twice."""
    torch.manual_seed(0)
    model = VAE(D, H, Z)
    x = torch.rand(4, D)
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), model.decode(model.encode(x)[0]))
        torch.testing.assert_close(model.reconstruct(x), model.reconstruct(x))


def test_sample_prior_is_standard_normal_and_seeded():
    """sample_prior draws N(0, I) (mean 0, variance 1) and a generator makes it reproducible."""
    model = VAE(D, H, Z)
    z = model.sample_prior(50_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.zeros(Z), atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), torch.ones(Z), atol=0.03, rtol=0)
    torch.testing.assert_close(
        model.sample_prior(3, torch.Generator().manual_seed(5)),
        model.sample_prior(3, torch.Generator().manual_seed(5)),
    )


# ----------------------------------------------------------------------------- depth and decoders


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_hidden_layers_sets_the_depth_of_both_networks(layers):
    """hidden_layers deterministic tanh layers of hidden_dim units in the encoder and in the decoder
    (Burda et al.'s VAE: 2 x 200), and the parameter count that follows."""
    model = VAE.from_config(TrainConfig(hidden_dim=20, latent_dim=3, hidden_layers=layers), 10)
    for net in (model.encoder.net, model.decoder.net):
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        tanh = [m for m in net if isinstance(m, torch.nn.Tanh)]
        assert len(linear) == layers + 1 and len(tanh) == layers
        assert all(m.out_features == 20 for m in linear[:-1])
    hidden = (layers - 1) * (20 * 20 + 20)
    expected = (10 * 20 + 20 + hidden + 20 * 6 + 6) + (3 * 20 + 20 + hidden + 20 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.encode(torch.rand(4, 10))[0].shape == (4, 3)


def test_gaussian_decoder_bound_uses_an_exact_softplus():
    """The bounded log-variance m + softplus(a - m) is computed with loss.softplus, which equals
    torch's softplus (and its gradient, sigmoid) to float32 rounding, for large |a| too."""
    from vae_utils.loss import softplus

    a = torch.cat([torch.linspace(-60, 60, 241), torch.tensor([0.0, 1e-6, -1e-6])]).requires_grad_()
    ours = softplus(a)
    theirs = torch.nn.functional.softplus(a)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6)
    (grad,) = torch.autograd.grad(ours.sum(), a)
    assert torch.allclose(grad, torch.sigmoid(a), atol=1e-7)
    decoder = GaussianDecoder(2, 8, 5, min_logvar=-6.0)
    _, logvar = decoder(torch.randn(100, 2) * 50)
    assert (logvar > -6.0).all()


@pytest.mark.parametrize("decoder", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_a_float64_model_computes_in_float64_from_float32_inputs(decoder):
    """TrainConfig(dtype="float64"): every parameter is float64, and the float32 grids and images
    that analysis code makes are cast on the way in, so that nothing is computed in float32."""
    config = TrainConfig(decoder=decoder, latent_dim=3, hidden_dim=8, dtype="float64")
    model = VAE.from_config(config, 12)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    x32 = torch.rand(5, 12)
    mu, logvar = model.encode(x32)
    assert mu.dtype == logvar.dtype == torch.float64
    z = model.sample_prior(4, torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64 and model.decode(z.float()).dtype == torch.float64
    # the same weights in float32 give the same means to float32 rounding
    float32 = VAE.from_config(TrainConfig(decoder=decoder, latent_dim=3, hidden_dim=8), 12)
    float32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    torch.testing.assert_close(float32.encode(x32)[0].double(), mu, rtol=1e-5, atol=1e-6)
