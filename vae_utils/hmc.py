"""Hybrid (Hamiltonian) Monte Carlo in torch with one chain per row: identity mass, kinetic energy
1/2 |v|^2, a Metropolis accept or reject for each row on its own, and one global step size adapted
toward a target acceptance rate (App. E: 90 %). Figure 3 draws from the posterior p(z|x) with it,
for the marginal-likelihood estimators and for Monte Carlo EM; docs/methods.md has the details.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

#: log p(z) + log p(x|z) for each row of z (B, N_z): a (B,) tensor, differentiable in z.
LogDensity = Callable[[torch.Tensor], torch.Tensor]
#: z -> (the log density per row, its gradient in z), both detached: what the leapfrog needs.
ValueAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: App. E: MCEM tunes its step size "such that the acceptance rate was 90%".
TARGET_ACCEPTANCE = 0.9
#: The most the step size changes in one adaptation, either way (anglepy caps it at 1.25).
MAX_STEP_FACTOR = 1.25


class Transition(NamedTuple):
    """One HMC transition of every chain: the new states, their log densities, which rows moved."""

    z: torch.Tensor  # (B, N_z)
    log_density: torch.Tensor  # (B,)
    grad: torch.Tensor  # (B, N_z): the log density's gradient at z, for the next transition
    accepted: torch.Tensor  # (B,) bool


def log_density_and_grad(log_density: LogDensity, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log density per row, its gradient in z), with no graph kept: the rows are independent, so
    the gradient of the sum is each row's own gradient."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_density(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


def leapfrog(
    log_density: LogDensity,
    z: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    eps: torch.Tensor | float,
    n_steps: int,
    value_and_grad: ValueAndGrad | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n_steps`` leapfrog steps of Hamilton's equations for H(z, v) = -log density(z) + 1/2 |v|^2
    from (z, v), ``grad`` being the log density's gradient at z and ``eps`` the step (a number, or
    one per row: (B, 1)). Returns (z, v, log density, gradient) at the end. Volume-preserving and
    reversible: from the end with -v it returns to the start; its energy error is O(eps^2).
    ``value_and_grad``, when given, computes (log density, gradient) instead of autograd on
    ``log_density`` (MCEM's compiled E-step: :func:`vae_utils.compiled_step.posterior_value_and_grad`)."""
    if value_and_grad is None:
        value_and_grad = functools.partial(log_density_and_grad, log_density)
    z, v = z.detach(), v + 0.5 * eps * grad
    for i in range(n_steps):
        z = z + eps * v
        value, grad = value_and_grad(z)
        v = v + (eps if i < n_steps - 1 else 0.5 * eps) * grad
    return z, v, value, grad


def hmc_transition(
    log_density: LogDensity,
    z: torch.Tensor,
    step_size: float,
    n_leapfrog: int,
    generator: torch.Generator,
    current: tuple[torch.Tensor, torch.Tensor] | None = None,
    value_and_grad: ValueAndGrad | None = None,
) -> Transition:
    """One HMC transition for each row of ``z`` (B, N_z), all rows at once.

    Momentum v ~ N(0, I); ``n_leapfrog`` leapfrog steps of size ``step_size`` on H(z, v) =
    -log density(z) + 1/2 |v|^2, each row's step with a random sign (the move stays reversible and
    explores both directions); then each row accepts its proposal with probability
    min(1, exp(H_before - H_after)), on its own. A proposal whose energy is not finite is rejected.
    ``current`` is (log density, gradient) at ``z`` when the caller has them (the previous
    transition's ``log_density`` and ``grad``), saving one evaluation. Costs ``n_leapfrog`` + 1
    evaluations of the log density and its gradient, or ``n_leapfrog`` with ``current``; with
    ``value_and_grad`` (see :func:`leapfrog`) each is one call of it.
    """
    if n_leapfrog < 1:
        raise ValueError(f"n_leapfrog = {n_leapfrog!r} is invalid: allowed an integer >= 1")
    if not step_size > 0 or not math.isfinite(step_size):
        raise ValueError(f"step_size = {step_size!r} is invalid: allowed a finite number > 0")
    if value_and_grad is None:
        value_and_grad = functools.partial(log_density_and_grad, log_density)
    value0, grad = current if current is not None else value_and_grad(z)
    v0 = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    sign = torch.randint(0, 2, (len(z), 1), generator=generator, device=z.device).to(z.dtype) * 2 - 1
    z_new, v, value, grad_new = leapfrog(
        log_density, z, v0, grad, step_size * sign, n_leapfrog, value_and_grad
    )
    log_ratio = (value - 0.5 * v.pow(2).sum(-1)) - (value0 - 0.5 * v0.pow(2).sum(-1))  # H_before - H_after
    u = torch.rand(len(z), generator=generator, dtype=z.dtype, device=z.device)
    accepted = torch.isfinite(log_ratio) & (u.log() < log_ratio)
    keep = accepted[:, None]
    return Transition(
        torch.where(keep, z_new, z.detach()),
        torch.where(accepted, value, value0),
        torch.where(keep, grad_new, grad),
        accepted,
    )


def adapt_step_size(
    step_size: float,
    acceptance: float,
    target: float = TARGET_ACCEPTANCE,
    max_factor: float = MAX_STEP_FACTOR,
) -> float:
    """The next step size: multiplied by exp(acceptance - target), that factor kept within
    [1 / max_factor, max_factor], so that it grows while more than ``target`` of the proposals are
    accepted and shrinks while fewer are."""
    limit = math.log(max_factor)
    return step_size * math.exp(min(limit, max(-limit, acceptance - target)))


class Chain(NamedTuple):
    """Posterior draws of every row: ``draws`` (S, B, N_z) and ``log_density`` (S, B) after each of
    S kept transitions, the step size at the end, and each kept transition's acceptance rate."""

    draws: torch.Tensor
    log_density: torch.Tensor
    step_size: float
    acceptance: torch.Tensor  # (S,)


def sample_chains(
    log_density: LogDensity,
    z0: torch.Tensor,
    n_draws: int,
    n_leapfrog: int,
    step_size: float,
    generator: torch.Generator,
    burn_in: int = 0,
    adapt: bool = True,
    target: float = TARGET_ACCEPTANCE,
) -> Chain:
    """``burn_in`` transitions from ``z0``, then ``n_draws`` kept ones, one chain per row. With
    ``adapt`` the global step size follows :func:`adapt_step_size` after every transition, the kept
    ones included (as App. E's MCEM does; an adapted chain is not exactly stationary, but at a fixed
    acceptance target the step size settles within a few transitions)."""
    z = z0.detach()
    current = log_density_and_grad(log_density, z)
    draws, values, rates = [], [], []
    for t in range(burn_in + n_draws):
        z, value, grad, accepted = hmc_transition(log_density, z, step_size, n_leapfrog, generator, current)
        current = (value, grad)
        rate = accepted.to(z.dtype).mean().item()
        if adapt:
            step_size = adapt_step_size(step_size, rate, target)
        if t >= burn_in:
            draws.append(z)
            values.append(value)
            rates.append(rate)
    return Chain(torch.stack(draws), torch.stack(values), step_size, torch.tensor(rates))
