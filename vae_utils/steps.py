"""One optimisation step of AEVB (Algorithm 1, estimator A or B) or of wake-sleep, and one epoch of
them over the shuffled training set; the optimizer and the device they run with. :mod:`vae_utils.mcem`
is Monte Carlo EM's counterpart; :mod:`vae_utils.training` runs either for a whole run.
"""

from __future__ import annotations

import math

import torch

from vae_utils.compiled_step import compiled_train_step
from vae_utils.config import TrainConfig
from vae_utils.data import Data, batches
from vae_utils.loss import elbo, gaussian_log_density, kl_standard_normal, reparameterize
from vae_utils.model import VAE
from vae_utils.progress import progress_bar


def training_split(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """``data.x_train`` and ``data.x_train_eval``; ``ValueError`` for data loaded with ``train=False``."""
    if data.x_train is None or data.x_train_eval is None:
        raise ValueError(
            f"the {data.name!r} data holds only its test split (loaded with train=False): training "
            "needs load_dataset(..., train=True)"
        )
    return data.x_train, data.x_train_eval


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device = 'cuda' is invalid here: no CUDA device is available; allowed 'auto' or 'cpu'"
        )
    return torch.device(device)


def bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (avx512_bf16 or AMX) and oneDNN
    uses it. Without, ``autocast="bfloat16"`` slows the matrix multiplies down (docs/speed.md)."""
    units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(units and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def make_optimizer(
    model: VAE, config: TrainConfig, device: torch.device, lr: float | None = None
) -> torch.optim.Optimizer:
    """Adagrad (the paper) or Adam, fused into one kernel where PyTorch offers it on this device.

    One optimizer holds every parameter, for wake-sleep too: each parameter gets its gradient from
    one phase only (the decoder's from wake, the encoder's from sleep), so one step on the sum of
    the two losses is the two phases' steps, with the same step size and weight decay.
    """
    lr = config.lr if lr is None else lr
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(
            model.parameters(), lr=lr, weight_decay=config.weight_decay, fused=device.type == "cpu"
        )
    return torch.optim.Adam(
        model.parameters(), lr=lr, weight_decay=config.weight_decay, eps=config.adam_eps, fused=True
    )


def aevb_loss(
    model: VAE, x: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to step on, the minibatch ELBO): both -ELBO / ELBO per datapoint (estimator A or B)."""
    value = elbo(model, x, config.n_samples, config.kl, generator).elbo.mean()
    return -value, value.detach()


def wake_loss(
    model: VAE, x: torch.Tensor, n_samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The wake phase: -E_q[log p_theta(x|z)] with z ~ q_phi(z|x) and no gradient to phi.

    log p(x, z) = log p(x|z) + log p(z) and log p(z) does not depend on theta, so stepping theta on
    log p(x|z) is stepping on the joint. Also returns the minibatch ELBO of the (encoder, decoder)
    pair (estimator B), which costs one closed-form KL more: the training curve of wake-sleep.
    """
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = reparameterize(mu, logvar, n_samples, generator)
        kl = kl_standard_normal(mu, logvar).sum(-1)
    recon = model.decoder.log_prob(x, z).mean(0)
    return -recon.mean(), (recon.detach() - kl).mean()


def sleep_loss(model: VAE, n: int, generator: torch.Generator) -> torch.Tensor:
    """The sleep phase: -E[log q_phi(z|x~)] for fantasies z ~ p(z) = N(0, I), x~ ~ p_theta(x|z).

    x~ is a sample, not a mean: binary for the Bernoulli decoder, continuous for the Gaussian and the
    continuous Bernoulli ones; no gradient reaches theta. Minimising it over phi minimises
    KL(p(z|x~) || q(z|x~)) averaged over the model's own data, not the ELBO's KL(q || p(z|x)).
    """
    with torch.no_grad():
        z = model.sample_prior(n, generator)
        x = model.decoder.sample(z, generator)
    mu, logvar = model.encode(x)
    return -gaussian_log_density(z, mu, logvar).mean()


def train_step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    eager: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the minibatch ``x``: SGVB on -ELBO (``algorithm="aevb"``, Algorithm 1)
    or a wake and a sleep phase (``"wake_sleep"``). Returns (the minibatch ELBO per datapoint, the
    loss stepped on), detached and left on the device; for wake-sleep the loss is the sum of the
    wake and sleep losses, which the ELBO does not contain.

    With ``config.compile`` (on a CPU) the step is :func:`compiled_train_step`, unless ``eager``.
    With ``config.autocast="bfloat16"`` the loss and its gradients are computed under bfloat16
    autocast."""
    if config.compile and x.device.type == "cpu" and not eager:
        return compiled_train_step(model, optimizer, x, config, generator)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=config.autocast == "bfloat16"):
        if config.algorithm == "aevb":
            loss, minibatch_elbo = aevb_loss(model, x, config, generator)
        else:
            wake, minibatch_elbo = wake_loss(model, x, config.n_samples, generator)
            loss = wake + sleep_loss(model, len(x), generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return minibatch_elbo, loss.detach()


def train_epoch(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    data: Data,
    config: TrainConfig,
    generator: torch.Generator,
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    """One pass over the shuffled ``data.x_train``, one :func:`train_step` per minibatch.

    With ``config.compile``, an epoch's last minibatch, when it is smaller than the others, takes the
    eager step: as a shape of its own it would cost a second graph (tens of seconds to compile cold,
    0.3 s to load warm) to save about a millisecond once an epoch. The two steps share the
    optimizer state, so the run stays reproducible and resumes exactly.

    Returns a (n_batches, 2) tensor left on the device (nothing here waits for it, so the caller
    checks it once per epoch): column 0 the minibatch ELBOs, column 1 the losses stepped on.
    """
    x_train, _ = training_split(data)
    n_batches = math.ceil(len(x_train) / config.batch_size)
    out = torch.empty(n_batches, 2, device=x_train.device, dtype=x_train.dtype)
    epoch_batches = batches(x_train, config.batch_size, generator, config.binarize == "dynamic")
    for i, x in enumerate(progress_bar(epoch_batches, progress, desc, "batch", n_batches)):
        tail = 0 < i == n_batches - 1 and len(x) < config.batch_size
        out[i, 0], out[i, 1] = train_step(model, optimizer, x, config, generator, eager=tail)
    return out
