"""The compiled training step: AEVB with the Bernoulli decoder and Adam or Adagrad as one graph
(forward, backward and update; torch.func traced by torch.compile into inductor's C++ kernels),
1.6-1.8x faster epochs on a CPU at small minibatches (docs/speed.md). Checkpoints are
interchangeable with the eager step's (:func:`vae_utils.steps.train_step`), and results agree to
float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vae_utils.config import TrainConfig
from vae_utils.loss import (
    bernoulli_pixel_log_likelihood,
    gaussian_log_density,
    kl_standard_normal,
    standard_normal_log_density,
)
from vae_utils.model import VAE


def _mlp_apply(params: list[torch.Tensor], h: torch.Tensor, activation: str) -> torch.Tensor:
    """:func:`vae_utils.model.mlp` evaluated from its parameters [W0, b0, W1, b1, ...]."""
    n = len(params) // 2
    for i in range(n):
        h = torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])
        if i < n - 1:
            h = torch.tanh(h) if activation == "tanh" else torch.relu(h)
    return h


def _functional_neg_elbo(
    params: list[torch.Tensor], n_enc: int, x: torch.Tensor, eps: torch.Tensor, activation: str, kl: str
) -> torch.Tensor:
    """-ELBO per datapoint of the Bernoulli VAE from its parameters (the encoder's, then the
    decoder's) and the noise eps (L, B, N_z): :func:`vae_utils.loss.elbo`'s arithmetic in plain ops, because
    torch.func cannot trace loss.py's autograd.Functions (inductor fuses them into one loop)."""
    mu, logvar = _mlp_apply(params[:n_enc], x, activation).chunk(2, dim=-1)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = _mlp_apply(params[n_enc:], z, activation)
    recon = bernoulli_pixel_log_likelihood(logits, x).sum(-1).mean(0)
    if kl == "analytic":
        kl_term = kl_standard_normal(mu, logvar).sum(-1)
    else:
        kl_term = (gaussian_log_density(z, mu, logvar) - standard_normal_log_density(z)).mean(0)
    return (kl_term - recon).mean()


def adam_step(
    params: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    coefs: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    n_enc: int,
    activation: str,
    kl: str,
    beta1: float,
    beta2: float,
    adam_eps: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and torch.optim.Adam's update (in place); returns (ELBO, loss)."""
    grads, loss = torch.func.grad_and_value(_functional_neg_elbo)(params, n_enc, x, eps, activation, kl)
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        # lr / (1 - beta1^t) and sqrt(1 - beta2^t) come in as a tensor: computed in here, inductor
        # would recompute both powers in every iteration of every update loop (2.5x slower).
        step_size, bias_correction2_sqrt = coefs[0], coefs[1]
        for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
            if weight_decay:
                g = g + weight_decay * p
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + adam_eps))
    return -loss.detach(), loss.detach()


def adagrad_step(
    params: list[torch.Tensor],
    sums: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    n_enc: int,
    activation: str,
    kl: str,
    adagrad_eps: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and torch.optim.Adagrad's update (in place, lr_decay 0, the paper's
    optimizer): sum += g^2, p -= lr g / (sqrt(sum) + eps); returns (ELBO, loss)."""
    grads, loss = torch.func.grad_and_value(_functional_neg_elbo)(params, n_enc, x, eps, activation, kl)
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        for p, g, total in zip(params, grads, sums, strict=True):
            if weight_decay:
                g = g + weight_decay * p
            total.addcmul_(g, g)
            p.sub_(lr * g / (total.sqrt() + adagrad_eps))
    return -loss.detach(), loss.detach()


#: The compiled steps, one per optimizer, each compiled once per process on its first use.
_compiled: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}
#: Graphs one process may compile for the step (one per model shape, batch size and option set: an
#: epoch's last, partial minibatch is a shape of its own). Dynamo's default of 8 would let a sweep
#: worker or a notebook that trains several shapes fall back to the eager step after the 8th, with
#: only a log warning; past this limit the step raises instead.
RECOMPILE_LIMIT = 256


def compiled_train_step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step` for AEVB with the Bernoulli decoder and Adam or Adagrad, as one compiled graph.

    ``step`` is the compiled :func:`adam_step` or :func:`adagrad_step` to call; by default one
    compiled with inductor's C++ wrapper, once per process (the benchmark passes others).

    The same arguments, return value and random numbers (one ``torch.randn`` for eps from
    ``generator``, as :func:`vae_utils.loss.reparameterize` draws it); it updates the parameters
    and ``optimizer``'s own state (Adam: step, exp_avg, exp_avg_sq; Adagrad: step, sum), so
    checkpoints are interchangeable with the eager step's. Results agree with the eager step's to
    float rounding (~1e-7), are reproducible run to run and resume exactly. The first call compiles
    (seconds with inductor's cache warm, up to a minute cold); each new model shape or batch size
    compiles once more.
    """
    kind = "adagrad" if isinstance(optimizer, torch.optim.Adagrad) else "adam"
    if step is None:
        if kind not in _compiled:
            function = adagrad_step if kind == "adagrad" else adam_step
            _compiled[kind] = torch.compile(
                function, fullgraph=True, dynamic=False, options={"cpp_wrapper": True}
            )
        step = _compiled[kind]
    (group,) = optimizer.param_groups
    params = [*model.encoder.parameters(), *model.decoder.parameters()]
    states = []
    for p in params:
        state = optimizer.state[p]
        if not state:  # torch.optim.Adam's lazy initialisation (fused=True: a float32 step tensor)
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states.append(state)
    eps = torch.randn(
        (config.n_samples, len(x), model.latent_dim), generator=generator, device=x.device, dtype=x.dtype
    )
    common = (x, eps, len(list(model.encoder.parameters())), config.activation, config.kl)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        if kind == "adagrad":
            lr = torch.tensor(group["lr"], dtype=x.dtype)  # a tensor: a new lr needs no new graph
            sums, counts = [s["sum"] for s in states], [s["step"] for s in states]
            return step(params, sums, counts, lr, *common, group["eps"], group["weight_decay"])
        t = states[0]["step"].item() + 1  # the step about to be taken (a CPU tensor: no sync)
        beta1, beta2 = group["betas"]
        coefs = torch.tensor([group["lr"] / (1 - beta1**t), math.sqrt(1 - beta2**t)], dtype=x.dtype)
        moments = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states])
        counts = [s["step"] for s in states]
        return step(
            params, *moments, counts, coefs, *common, beta1, beta2, group["eps"], group["weight_decay"]
        )
