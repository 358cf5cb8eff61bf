"""Monte Carlo EM, Figure 3's third algorithm (App. E): no encoder; a persistent posterior sample z
for every training point, moved by one HMC transition per iteration (10 leapfrog steps, the step
size tuned toward 90 % acceptance), then 5 updates of the decoder on log p(x, z | theta) with that
sample. Its cost is counted as "training samples evaluated": every datapoint at which log p(x, z) or
its gradient is computed, HMC included (docs/methods.md compares the count with the paper's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from vae_utils.hmc import ValueAndGrad, adapt_step_size, hmc_transition
from vae_utils.loss import Decoder, standard_normal_log_density
from vae_utils.marginal_likelihood import posterior_log_density

#: App. E: "10 HMC leapfrog steps ... followed by 5 weight updates steps using the acquired sample".
LEAPFROG_STEPS = 10
M_STEPS = 5
#: The HMC step size an MCEM run starts from, before its adaptation (anglepy's default).
INITIAL_STEP_SIZE = 0.01
#: Rows of z moved at once by the E-step: bounds memory, changes no number (the chains are
#: independent and each chunk draws its noise from the same generator in a fixed order).
E_STEP_CHUNK = 10_000


@dataclasses.dataclass
class MCEMState:
    """What MCEM carries from one iteration to the next, saved in every checkpoint (as a dict)."""

    z: torch.Tensor  # (N_train, N_z): the persistent posterior sample, one row per training point
    step_size: float  # the HMC step size, adapted after every transition
    evaluations: int = 0  # datapoints at which log p(x, z) or its gradient was computed so far
    acceptance: float = math.nan  # the last transition's acceptance rate

    @classmethod
    def start(
        cls,
        n_train: int,
        latent_dim: int,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device,
    ) -> MCEMState:
        """z drawn from the prior p(z) = N(0, I): the chains start where the model's belief does."""
        z = torch.randn(n_train, latent_dim, generator=generator, dtype=dtype, device=device)
        return cls(z, INITIAL_STEP_SIZE)


def e_step(
    decoder: Decoder,
    x_train: torch.Tensor,
    state: MCEMState,
    generator: torch.Generator,
    n_leapfrog: int = LEAPFROG_STEPS,
    chunk: int = E_STEP_CHUNK,
    value_and_grad: Callable[[torch.Tensor], ValueAndGrad] | None = None,
) -> float:
    """One HMC transition of every training point's z under the current decoder, then the step size
    adapted toward 90 % acceptance from this transition's rate. Counts N (n_leapfrog + 1)
    evaluations (the gradient at the start, then one per leapfrog step). Returns the rate.
    ``value_and_grad(x)``, when given, makes the (log p(x, z), gradient) function of a chunk of
    x (the compiled step's :func:`vae_utils.compiled_step.posterior_value_and_grad`)."""
    accepted = 0
    with torch.no_grad():
        for start in range(0, len(x_train), chunk):
            rows = slice(start, start + chunk)
            x = x_train[rows]
            out = hmc_transition(
                posterior_log_density(decoder, x),
                state.z[rows],
                state.step_size,
                n_leapfrog,
                generator,
                value_and_grad=None if value_and_grad is None else value_and_grad(x),
            )
            state.z[rows] = out.z
            accepted += int(out.accepted.sum())
    state.evaluations += len(x_train) * (n_leapfrog + 1)
    state.acceptance = accepted / len(x_train)
    state.step_size = adapt_step_size(state.step_size, state.acceptance)
    return state.acceptance


def m_step(
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    state: MCEMState,
    batch_size: int,
    generator: torch.Generator,
    n_updates: int = M_STEPS,
) -> torch.Tensor:
    """``n_updates`` optimizer steps of the decoder, each on a minibatch of training points drawn
    without replacement with their current z: the loss is -1/M sum log p(x|z, theta) (log p(z)
    does not depend on theta; the weight prior is the optimizer's weight decay, as for the other
    algorithms). Returns each update's mean log p(x, z) per datapoint, detached: (n_updates,)."""
    values = torch.empty(n_updates, dtype=x_train.dtype, device=x_train.device)
    for i in range(n_updates):
        idx = torch.randperm(len(x_train), generator=generator, device=x_train.device)[:batch_size]
        z = state.z[idx]
        log_px_z = decoder.log_prob(x_train[idx], z).mean()
        optimizer.zero_grad(set_to_none=True)
        (-log_px_z).backward()
        optimizer.step()
        values[i] = log_px_z.detach() + standard_normal_log_density(z).mean()
    state.evaluations += n_updates * min(batch_size, len(x_train))
    return values


def mcem_epoch(
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    state: MCEMState,
    batch_size: int,
    generator: torch.Generator,
    value_and_grad: Callable[[torch.Tensor], ValueAndGrad] | None = None,
) -> torch.Tensor:
    """One MCEM "epoch": one iteration, an E-step that visits every training point once and the
    M-step's updates, in the form of :func:`vae_utils.steps.train_epoch`'s result: an (updates, 2)
    tensor whose column 0 holds each update's mean log p(x, z) (the objective), column 1 its
    negative. At N = 50,000 an iteration evaluates 550,500 datapoints, so Figure 3 can evaluate
    between iterations (a pass of the M-step alone would take 100 of them). ``value_and_grad``: as
    for :func:`e_step`."""
    e_step(decoder, x_train, state, generator, value_and_grad=value_and_grad)
    values = m_step(decoder, optimizer, x_train, state, batch_size, generator)
    return torch.stack([values, -values], dim=1)


def samples_per_epoch(n_train: int, batch_size: int) -> int:
    """Training samples evaluated by one MCEM epoch (:func:`mcem_epoch`): N (10 + 1) in the E-step,
    5 min(M, N) in the M-step."""
    return n_train * (LEAPFROG_STEPS + 1) + M_STEPS * min(batch_size, n_train)
