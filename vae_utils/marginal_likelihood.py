"""The marginal likelihood log p(x) of a decoder with a small latent space (Figure 3, App. D and E):
App. D's reciprocal importance sampling from HMC draws (overestimates in expectation), importance
sampling from a proposal fitted to those draws (underestimates in expectation), and a grid integral
over z for N_z <= 3 that checks both. Every estimate is per row of x, in float64 nats; see
docs/methods.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from vae_utils.config import check_choice, check_float, check_int, fail
from vae_utils.hmc import Chain, LogDensity, sample_chains
from vae_utils.loss import LOG_2PI, Decoder, standard_normal_log_density

#: App. E: "sampling 50 values from the posterior ... using Hybrid Monte Carlo with 4 leapfrog steps".
PAPER_HMC_DRAWS = 50
PAPER_LEAPFROG_STEPS = 4
#: Without a starting point, a chain starts at the best of this many prior draws (the highest
#: log p(x, z)): from a single prior draw about 1 chain in 7 stayed in a poor mode of a trained
#: MCEM decoder's posterior, 5.4 nats low on average over 100 test images (docs/methods.md).
PRIOR_STARTS = 200
#: A grid costs points_per_dim ** N_z decoder evaluations per row: affordable up to N_z = 3.
MAX_GRID_LATENT_DIM = 3
#: The most numbers in one chunk of decoder outputs (or of KDE distances): 32 MB in float64.
MAX_ELEMENTS = 1 << 22
DENSITIES = ("auto", "kde", "diagonal")
FAMILIES = ("gaussian", "student_t")


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != expected:
        fail(f"{name}.shape", tuple(tensor.shape), f"{expected}: {meaning}")


def _check_data(x: torch.Tensor) -> tuple[int, int]:
    if x.dim() != 2:
        fail("x.shape", tuple(x.shape), "(B, D): one datapoint per row")
    return x.shape[0], x.shape[1]


def _check_draws(draws: torch.Tensor, batch: int | None = None) -> tuple[int, int, int]:
    if draws.dim() != 3 or (batch is not None and draws.shape[1] != batch):
        rows = "B" if batch is None else str(batch)
        fail(
            "draws.shape", tuple(draws.shape), f"(S, {rows}, N_z): S posterior draws for each of {rows} rows"
        )
    return draws.shape[0], draws.shape[1], draws.shape[2]


def _logmeanexp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def _moments(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean (B, N_z) and covariance (B, N_z, N_z), divisor n - 1, of points (n, B, N_z)."""
    mean = points.mean(0)
    centred = (points - mean).permute(1, 2, 0)  # (B, N_z, n)
    return mean, centred @ centred.transpose(1, 2) / (len(points) - 1)


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factors of (B, N_z, N_z) covariances; a row whose covariance is singular (a chain
    that never moved) gets a tiny jitter, so it still gives a (very narrow) density, not an error."""
    tril, info = torch.linalg.cholesky_ex(cov)
    if bool((info > 0).any()):
        scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-6)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        jittered = cov + 1e-10 * scale[:, None, None] * eye
        tril = torch.where((info > 0)[:, None, None], torch.linalg.cholesky(jittered), tril)
    return tril


def _log_det(tril: torch.Tensor) -> torch.Tensor:
    return tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def posterior_log_density(decoder: Decoder, x: torch.Tensor) -> LogDensity:
    """z (B, N_z) -> log p(z) + log p(x|z) per row (B,): the unnormalised log posterior log p(x, z)
    of each row of ``x`` (B, D), differentiable in z, for :func:`vae_utils.hmc.sample_chains`."""
    batch, _ = _check_data(x)

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or len(z) != batch:
            fail("z.shape", tuple(z.shape), f"({batch}, N_z): one latent vector per row of x")
        return decoder.log_prob(x, z) + standard_normal_log_density(z)

    return log_joint


def kde_log_density(fit: torch.Tensor, points: torch.Tensor, factor: float | None = None) -> torch.Tensor:
    """log q(points) (n, B) under a Gaussian KDE of ``fit`` (m, B, N_z), one KDE per row, as
    scipy.stats.gaussian_kde: kernel covariance factor^2 Cov(fit) (full, divisor m - 1), with Scott's
    factor m^(-1 / (N_z + 4)) unless ``factor`` is given."""
    m, batch, d = _check_draws(fit)
    _check_draws(points, batch)
    factor = m ** (-1.0 / (d + 4)) if factor is None else factor
    check_float("factor", factor, 0.0, strict=True)
    _, cov = _moments(fit.double())
    tril = _cholesky(cov * factor**2)
    # Whiten both sets once: the kernel N(z; z_i, L L^T) is then a standard normal of L^-1 (z - z_i).
    white_fit = torch.linalg.solve_triangular(tril, fit.double().permute(1, 2, 0), upper=False)
    white = torch.linalg.solve_triangular(tril, points.double().permute(1, 2, 0), upper=False)
    n = points.shape[0]
    block = max(1, MAX_ELEMENTS // (n * m * d))
    out = []
    for start in range(0, batch, block):
        diff = white[start : start + block, :, :, None] - white_fit[start : start + block, :, None, :]
        out.append(_logmeanexp(-0.5 * diff.pow(2).sum(1), dim=-1))  # (block, n)
    const = 0.5 * d * LOG_2PI + _log_det(tril)
    return torch.cat(out).T - const


def diagonal_gaussian_log_density(fit: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """log q(points) (n, B) under N(mean, diag std^2) of ``fit`` (m, B, N_z) per row, std with
    divisor m as anglepy's (its fallback when there are fewer than 4 draws per latent dimension)."""
    _, batch, _ = _check_draws(fit)
    _check_draws(points, batch)
    fit, points = fit.double(), points.double()
    mean, var = fit.mean(0), fit.var(0, unbiased=False)
    var = torch.where(var > 0, var, 1e-10 * var.mean(-1, keepdim=True).clamp_min(1e-6))
    return -0.5 * (LOG_2PI + var.log() + (points - mean).pow(2) / var).sum(-1)


def reciprocal_importance_log_px(
    draws: torch.Tensor, log_joint: torch.Tensor, density: str = "auto", factor: float | None = None
) -> torch.Tensor:
    """App. D's estimate of log p(x) (Gelfand & Dey 1994) from S posterior draws per row.

    ``draws`` (S, B, N_z) from p(z|x) (an HMC chain) and ``log_joint`` (S, B) = log p(x, z) at them.
    As anglepy: the first S // 2 draws fit a density q(z) per row, a Gaussian KDE
    (:func:`kde_log_density`) where there are at least 4 of them per latent dimension and N_z > 1,
    else a diagonal Gaussian (``density="auto"``; ``"kde"`` or ``"diagonal"`` force one); the other
    draws z_l give 1/p(x) ~= 1/L sum_l q(z_l) / p(x, z_l), returned as -logmeanexp_l [log q(z_l) -
    log p(x, z_l)], (B,) float64. ``factor``: the KDE's bandwidth factor, Scott's by default (anglepy's
    default instead picks the best of Scott's x e^((i - 5) / 2), i < 10, by held-out likelihood).

    For independent exact draws that average is unbiased for 1/p(x), so by Jensen the estimate
    *overestimates* log p(x) in expectation; its variance is finite only if integral q^2 / p(z|x) dz
    is, i.e. when q has lighter tails than the posterior. Correlated MCMC draws add variance, and a bias when
    the two halves are not close to independent; a chain that misses a mode holding a fraction m of
    the posterior's mass *underestimates*, by about -log(1 - m).
    """
    n, batch, d = _check_draws(draws)
    _check_shape("log_joint", log_joint, (n, batch), "log p(x, z) at each of draws (S, B, N_z)")
    check_int("S (draws per row)", n, 4)
    check_choice("density", density, DENSITIES)
    n_fit = n // 2
    fit, points = draws[:n_fit], draws[n_fit:]
    if density == "kde" or (density == "auto" and d > 1 and n_fit >= 4 * d):
        log_q = kde_log_density(fit, points, factor)
    else:
        log_q = diagonal_gaussian_log_density(fit, points)
    return -_logmeanexp(log_q - log_joint[n_fit:].double(), dim=0)


def fitted_proposal_log_px(
    decoder: Decoder,
    x: torch.Tensor,
    draws: torch.Tensor,
    k: int,
    generator: torch.Generator,
    family: str = "student_t",
    dof: int = 5,
) -> torch.Tensor:
    """Importance sampling, log p(x) ~= logmeanexp_k [log p(x, z_k) - log r(z_k)], z_k ~ r, with a
    proposal r fitted to each row's posterior ``draws`` (S, B, N_z): the proposal for a model with
    no encoder (MCEM). ``"gaussian"``: N(mean, Cov) of the draws; ``"student_t"``: a multivariate t
    with that location and scale matrix and ``dof`` (an integer) degrees of freedom, for heavier
    tails than the posterior's. The average over z_k is unbiased for p(x), so the estimate
    *underestimates* log p(x) in expectation (a stochastic lower bound, as Burda et al.'s eq. 8)
    and tends to it as k grows. The k samples go in chunks of at most :data:`MAX_ELEMENTS`
    decoder outputs. Returns (B,) float64.
    """
    batch, data_dim = _check_data(x)
    _, _, d = _check_draws(draws, batch)
    check_int("k", k, 1)
    check_choice("family", family, FAMILIES)
    check_int("dof", dof, 1)
    mean, cov = _moments(draws.detach().double())
    tril = _cholesky(cov)
    log_det = _log_det(tril)
    const = math.lgamma((dof + d) / 2) - math.lgamma(dof / 2) - 0.5 * d * math.log(dof * math.pi)
    chunk = max(1, MAX_ELEMENTS // (batch * data_dim))
    running = torch.full((batch,), -math.inf, dtype=torch.float64, device=x.device)
    for done in range(0, k, chunk):
        shape = (min(chunk, k - done), batch, d)
        y = torch.randn(shape, generator=generator, dtype=torch.float64, device=x.device)
        if family == "student_t":  # y = eps / sqrt(chi2_dof / dof); chi2 as a sum of dof squared normals
            chi2 = torch.randn((*shape[:2], dof), generator=generator, dtype=torch.float64, device=x.device)
            y = y / (chi2.pow(2).sum(-1, keepdim=True) / dof).sqrt()
            log_r = const - log_det - 0.5 * (dof + d) * torch.log1p(y.pow(2).sum(-1) / dof)
        else:
            log_r = -0.5 * (d * LOG_2PI + y.pow(2).sum(-1)) - log_det
        z = mean + (tril @ y.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            log_w = decoder.log_prob(x, z.to(x.dtype)).double() + standard_normal_log_density(z) - log_r
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
    return running - math.log(k)


def grid_log_px(
    decoder: Decoder,
    x: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    points_per_dim: int,
    width: float = 8.0,
) -> torch.Tensor:
    """log p(x) = log integral p(x|z) p(z) dz by the midpoint rule on a regular grid, per row.

    Row b's grid has ``points_per_dim`` cells per latent dimension on center_b +- width * scale_b
    (``center``, ``scale`` (B, N_z): e.g. the posterior mean and standard deviation from q(z|x) or
    from HMC draws); log p(x) ~= logsumexp_cells [log p(x|z_c) + log p(z_c)] + log(cell volume),
    in float64 (the decoder sees z in x's dtype). For a smooth integrand that is negligible at the
    box's edge the rule converges faster than any power of the spacing; :func:`grid_convergence`
    shows it. Costs points_per_dim^N_z decoder evaluations per row, so N_z <= 3 only. Returns (B,).
    """
    batch, data_dim = _check_data(x)
    if center.dim() != 2 or len(center) != batch:
        fail("center.shape", tuple(center.shape), f"({batch}, N_z): one centre per row of x")
    d = center.shape[1]
    if d > MAX_GRID_LATENT_DIM:
        fail("N_z", d, f"1, 2 or {MAX_GRID_LATENT_DIM} (a grid costs points_per_dim ** N_z evaluations)")
    _check_shape("scale", scale, (batch, d), "one scale per row of x and latent dimension, like center")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        low, high = scale.min().item(), scale.max().item()
        raise ValueError(f"scale = a tensor in [{low:g}, {high:g}] is invalid: allowed finite entries > 0")
    check_int("points_per_dim", points_per_dim, 1)
    check_float("width", width, 0.0, strict=True)
    spacing = 2 * width / points_per_dim
    nodes_1d = -width + spacing * (torch.arange(points_per_dim, dtype=torch.float64, device=x.device) + 0.5)
    nodes = torch.cartesian_prod(*[nodes_1d] * d).reshape(-1, d)  # (n^d, N_z)
    center, scale = center.double(), scale.double()
    chunk = max(1, MAX_ELEMENTS // (batch * data_dim))
    running = torch.full((batch,), -math.inf, dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, len(nodes), chunk):
            z = (center + scale * nodes[start : start + chunk, None, :]).to(x.dtype)  # (c, B, N_z)
            log_joint = decoder.log_prob(x, z).double() + standard_normal_log_density(z.double())
            running = torch.logaddexp(running, torch.logsumexp(log_joint, dim=0))
    return running + d * math.log(spacing) + scale.log().sum(-1)


class GridConvergence(NamedTuple):
    """:func:`grid_log_px` at ``points_per_dim`` (``coarse``) and at twice as many points, half the
    spacing (``fine``), (B,) each. Report ``fine``; |fine - coarse| bounds its error generously, as
    the error falls much faster than the spacing. The box's truncation error is not in it: compare
    a wider ``width`` for that."""

    coarse: torch.Tensor
    fine: torch.Tensor

    @property
    def difference(self) -> torch.Tensor:
        return (self.fine - self.coarse).abs()


def grid_convergence(
    decoder: Decoder,
    x: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    points_per_dim: int,
    width: float = 8.0,
) -> GridConvergence:
    """The grid integral and its own accuracy: :func:`grid_log_px` at ``points_per_dim`` and at
    2 * ``points_per_dim`` on the same box (2^N_z times the cost)."""
    coarse = grid_log_px(decoder, x, center, scale, points_per_dim, width)
    return GridConvergence(coarse, grid_log_px(decoder, x, center, scale, 2 * points_per_dim, width))


class HMCEstimate(NamedTuple):
    """App. D's estimate ``log_px`` (B,) float64 and the HMC ``chain`` that it came from."""

    log_px: torch.Tensor
    chain: Chain


def best_prior_draw(
    decoder: Decoder, x: torch.Tensor, latent_dim: int, generator: torch.Generator, n: int = PRIOR_STARTS
) -> torch.Tensor:
    """For each row of x, the one of ``n`` draws z ~ p(z) with the highest log p(x, z): a start for
    a chain when there is no encoder, nearer the posterior's main mode than a single prior draw."""
    batch, _ = _check_data(x)
    check_int("n", n, 1)
    best = torch.empty((batch, latent_dim), dtype=x.dtype, device=x.device)
    best_value = torch.full((batch,), -math.inf, dtype=x.dtype, device=x.device)
    log_joint = posterior_log_density(decoder, x)
    with torch.no_grad():
        for _ in range(n):
            z = torch.randn((batch, latent_dim), generator=generator, dtype=x.dtype, device=x.device)
            value = log_joint(z)
            better = value > best_value
            best[better], best_value[better] = z[better], value[better]
    return best


def hmc_log_px(
    decoder: Decoder,
    x: torch.Tensor,
    generator: torch.Generator,
    z0: torch.Tensor | None = None,
    latent_dim: int | None = None,
    n_draws: int = PAPER_HMC_DRAWS,
    n_leapfrog: int = PAPER_LEAPFROG_STEPS,
    burn_in: int = 100,
    step_size: float = 0.1,
    thin: int = 1,
    density: str = "auto",
) -> HMCEstimate:
    """App. E's protocol: ``n_draws`` posterior draws per row by HMC (:func:`vae_utils.hmc.sample_chains`
    on :func:`posterior_log_density`, ``n_leapfrog`` leapfrog steps, the step size adapted toward
    90 % acceptance) after ``burn_in`` transitions, then :func:`reciprocal_importance_log_px`.

    The defaults are the paper's 50 draws and 4 leapfrog steps; the paper states no burn-in, and 100
    transitions (ours) let the step size settle from any start (it changes by 1.25x at most each).
    ``z0`` (B, N_z) starts the chains (e.g. q(z|x)'s mean); without it each starts at the best of
    :data:`PRIOR_STARTS` draws of p(z) in ``latent_dim`` dimensions (:func:`best_prior_draw`).
    ``thin`` keeps every thin-th transition (1: all, as the paper). With 50 draws one datapoint's
    estimate is noisy (on a 3-D linear Gaussian: sd 0.5 nats, +0.02 to +0.07 on average;
    tests/test_marginal_likelihood.py), but Figure 3 plots means over 1000.
    """
    batch, _ = _check_data(x)
    check_int("thin", thin, 1)
    if z0 is None:
        if latent_dim is None:
            fail("latent_dim", latent_dim, "an integer >= 1 when z0 is None (the chains' dimension)")
        check_int("latent_dim", latent_dim, 1)
        z0 = best_prior_draw(decoder, x, latent_dim, generator)
    elif z0.dim() != 2 or len(z0) != batch:
        fail("z0.shape", tuple(z0.shape), f"({batch}, N_z): one starting point per row of x")
    log_joint = posterior_log_density(decoder, x)
    chain = sample_chains(log_joint, z0, n_draws * thin, n_leapfrog, step_size, generator, burn_in=burn_in)
    if thin > 1:
        keep = slice(thin - 1, None, thin)
        chain = chain._replace(
            draws=chain.draws[keep], log_density=chain.log_density[keep], acceptance=chain.acceptance[keep]
        )
    return HMCEstimate(reciprocal_importance_log_px(chain.draws, chain.log_density, density), chain)
