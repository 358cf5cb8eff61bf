"""The compiled training step: AEVB or wake-sleep with any decoder (Bernoulli, continuous Bernoulli,
Gaussian), and Adam or Adagrad, as one graph (forward, backward and update; torch.func traced by
torch.compile into inductor's C++ kernels), 1.1-1.8x faster on a CPU (docs/speed.md). Checkpoints are
interchangeable with the eager step's (:func:`vae_utils.steps.train_step`), and results agree to
float rounding. Each step is compiled ahead of time once per machine and shape, and kept beside
inductor's cache, so that a process loads it instead of tracing it again. Monte Carlo EM's E-step
compiles its HMC evaluations (:func:`posterior_value_and_grad`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import platform
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from vae_utils import continuous_bernoulli, loss
from vae_utils.config import TrainConfig
from vae_utils.continuous_bernoulli import (
    continuous_bernoulli_inverse_cdf,
    continuous_bernoulli_log_likelihood_traced,
)
from vae_utils.hmc import ValueAndGrad
from vae_utils.loss import (
    bernoulli_pixel_log_likelihood,
    gaussian_log_density,
    kl_standard_normal,
    standard_normal_log_density,
)
from vae_utils.model import VAE
from vae_utils.runfiles import atomic_write_bytes

#: Graphs one process may compile with ``torch.compile`` for one function (one per model shape,
#: batch size and option set): MCEM's E-step, and the training step when it cannot be compiled
#: ahead of time (each ahead-of-time step is a function of its own). Dynamo's default of 8 would let
#: a sweep worker or a notebook that trains several shapes fall back to the eager step after the
#: 8th, with only a log warning; past this limit the step raises instead.
RECOMPILE_LIMIT = 256

#: Inductor's options for every compiled function here: C++ for the wrapper as for the kernels (less
#: per-call overhead than its Python wrapper), and no precompiled header. With one, every process ran
#: the C++ preprocessor over torch's headers to check it, 0.2 s even when the compiled code came from
#: the cache; without, a cold compile takes about 1 s longer (docs/speed.md).
INDUCTOR_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {
    "cpp_wrapper": True,
    "cpp_cache_precompile_headers": False,
}


def _mlp_apply(params: list[torch.Tensor], h: torch.Tensor, activation: str) -> torch.Tensor:
    """:func:`vae_utils.model.mlp` evaluated from its parameters [W0, b0, W1, b1, ...]."""
    n = len(params) // 2
    for i in range(n):
        h = torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])
        if i < n - 1:
            h = torch.tanh(h) if activation == "tanh" else torch.relu(h)
    return h


class Spec(NamedTuple):
    """What the step's graph is specialised on, besides the shapes: passed to it as one constant."""

    activation: str
    kl: str
    algorithm: str  # "aevb" or "wake_sleep"
    decoder: str  # "bernoulli", "continuous_bernoulli" or "gaussian"
    min_logvar: float
    sigmoid_mean: bool
    bfloat16: bool  # forward and backward under torch.autocast to bfloat16 (TrainConfig.autocast)

    @classmethod
    def of(cls, config: TrainConfig) -> Spec:
        c = config
        return cls(
            c.activation, c.kl, c.algorithm, c.decoder, c.min_logvar, c.sigmoid_mean, c.autocast == "bfloat16"
        )


def _decode(
    params: list[torch.Tensor], z: torch.Tensor, spec: Spec
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The decoder's output from its parameters: (continuous) Bernoulli logits, or the Gaussian's
    (mu, log sigma^2) as :class:`vae_utils.model.GaussianDecoder` computes them, its softplus bound
    written as softplus(y) = -log Bernoulli(0; sigmoid(y)) in plain ops."""
    out = _mlp_apply(params, z, spec.activation)
    if spec.decoder != "gaussian":
        return out
    mu, raw = out.chunk(2, dim=-1)
    if spec.sigmoid_mean:
        mu = torch.sigmoid(mu)
    shifted = raw - spec.min_logvar
    return mu, spec.min_logvar - bernoulli_pixel_log_likelihood(shifted, torch.zeros_like(shifted))


def _log_prob(
    out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, spec: Spec
) -> torch.Tensor:
    """log p(x|z) summed over pixels, from :func:`_decode`'s output."""
    if isinstance(out, tuple):
        return gaussian_log_density(x, *out)
    if spec.decoder == "continuous_bernoulli":
        return continuous_bernoulli_log_likelihood_traced(out, x)
    return bernoulli_pixel_log_likelihood(out, x).sum(-1)


def _losses(
    params: list[torch.Tensor], n_enc: int, x: torch.Tensor, noise: tuple[torch.Tensor, ...], spec: Spec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to step on, the minibatch ELBO) of the VAE from its parameters (the encoder's, then
    the decoder's) and the step's noise, as :mod:`vae_utils.steps` computes them, in plain ops
    (torch.func cannot trace loss.py's autograd.Functions; inductor fuses them).

    AEVB: noise = (eps (L, B, N_z),), the loss is -ELBO. Wake-sleep: noise = (eps, z ~ p(z) (B, N_z),
    the fantasies' pixel noise (B, D)); the loss is the wake loss -E_q[log p(x|z)] (no gradient to
    the encoder) plus the sleep loss -log q(z|x~) (none to the decoder) of the fantasy x~: [u < y]
    for the Bernoulli decoder (u uniform), the inverse CDF at u for the continuous Bernoulli, mu +
    sigma e for the Gaussian (e normal)."""
    enc, dec = params[:n_enc], params[n_enc:]
    mu, logvar = _mlp_apply(enc, x, spec.activation).chunk(2, dim=-1)
    if spec.algorithm == "wake_sleep":
        mu, logvar = mu.detach(), logvar.detach()
    eps = noise[0]
    z = mu + torch.exp(0.5 * logvar) * eps
    recon = _log_prob(_decode(dec, z, spec), x, spec).mean(0)
    if spec.algorithm == "wake_sleep":
        elbo = (recon - kl_standard_normal(mu, logvar).sum(-1)).mean()
        z_prior, pixel_noise = noise[1], noise[2]
        out = _decode([p.detach() for p in dec], z_prior, spec)
        if isinstance(out, tuple):
            fantasy = out[0] + torch.exp(0.5 * out[1]) * pixel_noise
        elif spec.decoder == "continuous_bernoulli":
            fantasy = continuous_bernoulli_inverse_cdf(out, pixel_noise)
        else:
            fantasy = (pixel_noise < torch.sigmoid(out)).to(x.dtype)
        mu_s, logvar_s = _mlp_apply(enc, fantasy, spec.activation).chunk(2, dim=-1)
        loss = -recon.mean() - gaussian_log_density(z_prior, mu_s, logvar_s).mean()
        return loss, elbo.detach()
    if spec.kl == "analytic":
        kl_term = kl_standard_normal(mu, logvar).sum(-1)
    else:
        kl_term = (gaussian_log_density(z, mu, logvar) - standard_normal_log_density(z)).mean(0)
    loss = (kl_term - recon).mean()
    return loss, -loss.detach()


def _gradients(
    params: list[torch.Tensor], n_enc: int, x: torch.Tensor, noise: tuple[torch.Tensor, ...], spec: Spec
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The gradients of :func:`_losses`' loss with respect to ``params``, and (loss, ELBO); under
    bfloat16 autocast when ``spec.bfloat16`` (the gradients still come out float32)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.bfloat16):
        return torch.func.grad_and_value(_losses, has_aux=True)(params, n_enc, x, noise, spec)


def adam_step(
    params: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    coefs: torch.Tensor,
    x: torch.Tensor,
    noise: tuple[torch.Tensor, ...],
    n_enc: int,
    spec: Spec,
    beta1: float,
    beta2: float,
    adam_eps: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and torch.optim.Adam's update (in place); returns (ELBO, loss)."""
    grads, (loss, elbo) = _gradients(params, n_enc, x, noise, spec)
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
    return elbo, loss.detach()


def adagrad_step(
    params: list[torch.Tensor],
    sums: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: torch.Tensor,
    x: torch.Tensor,
    noise: tuple[torch.Tensor, ...],
    n_enc: int,
    spec: Spec,
    adagrad_eps: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and torch.optim.Adagrad's update (in place, lr_decay 0, the paper's
    optimizer): sum += g^2, p -= lr g / (sqrt(sum) + eps); returns (ELBO, loss)."""
    grads, (loss, elbo) = _gradients(params, n_enc, x, noise, spec)
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        for p, g, total in zip(params, grads, sums, strict=True):
            if weight_decay:
                g = g + weight_decay * p
            total.addcmul_(g, g)
            p.sub_(lr * g / (total.sqrt() + adagrad_eps))
    return elbo, loss.detach()


def log_joint_and_grad(
    params: list[torch.Tensor], x: torch.Tensor, z: torch.Tensor, spec: Spec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z) + log p(z) per row, its gradient in z), detached, from the decoder's parameters:
    :func:`vae_utils.marginal_likelihood.posterior_log_density` and its gradient in plain ops."""

    def total(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = _log_prob(_decode(params, z, spec), x, spec) + standard_normal_log_density(z)
        return value.sum(), value.detach()

    grad, (_, value) = torch.func.grad_and_value(total, has_aux=True)(z)
    return value, grad


def _compile(function: Callable) -> Any:
    """``torch.compile`` as every function here is compiled: one whole graph (an error rather than a
    graph break), static shapes, :data:`INDUCTOR_OPTIONS`."""
    return torch.compile(function, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)


#: What this process compiled with torch.compile: the training step per optimizer, where it could
#: not be compiled ahead of time (:func:`_step_for`), and the E-step's evaluation ("hmc"), each on
#: its first use.
_compiled: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


#: Dynamo's config patch that raises the recompile limit, made on first use (building one costs
#: 20 us a step; making it at import would import torch._dynamo with vae_utils), and whether this
#: process has called a compiled function yet.
_recompile_limit: contextlib.AbstractContextManager | None = None
_compiler_loaded = False


def _no_cuda_runtime_notice(record: logging.LogRecord) -> bool:
    """A logging filter that drops torch's "No CUDA runtime is found, using CUDA_HOME=..." notice,
    which inductor's first C++ build prints where a CUDA toolkit is installed without a GPU: these
    steps compile for the CPU only, and it would stand in notebook 02's output."""
    return not record.getMessage().startswith("No CUDA runtime is found")


@contextlib.contextmanager
def _calling_compiled() -> Iterator[None]:
    """Around every call of a compiled function: dynamo's recompile limit raised to
    :data:`RECOMPILE_LIMIT`, with an error past it.

    The process's first call imports and runs torch's compiler stack: afterwards about 460,000
    long-lived Python objects are tracked (torch's own included). Python's cyclic collector is paused
    during that call (it would walk them several times as they appear), so everything the call made
    is in the youngest generation: collecting that one frees the compilation's garbage (0.045 s; a
    full collection found 10 objects more in 0.19 s), and ``gc.freeze()`` moves every survivor to the
    permanent generation, so that later full collections, and the one at interpreter exit, skip them
    (about 1.5 s of a short training process, docs/speed.md). Everything alive then stays exempt
    from cyclic collection (``gc.unfreeze()`` undoes it); reference counting still frees it. From
    that call on, torch's notice that no CUDA runtime was found is filtered out
    (:func:`_no_cuda_runtime_notice`)."""
    global _recompile_limit, _compiler_loaded
    if _recompile_limit is None:
        _recompile_limit = torch._dynamo.config.patch(
            recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True
        )
    if _compiler_loaded:
        with _recompile_limit:
            yield
        return
    logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_runtime_notice)
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _recompile_limit:
            yield
    finally:
        _compiler_loaded = True
        if enabled:
            gc.enable()
        gc.collect(0)
        gc.freeze()


def compiled_train_step(
    model: VAE,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    step: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step` for AEVB or wake-sleep with any decoder and Adam or Adagrad, as one
    compiled graph.

    ``step`` is the compiled :func:`adam_step` or :func:`adagrad_step` to call; by default the one
    for these shapes and options from the ahead-of-time cache (:func:`aot_cache_path`), compiled
    there with inductor's C++ wrapper on first use (the benchmark passes others).

    The same arguments, return value and random numbers, drawn from ``generator`` in the eager
    step's order (eps as :func:`vae_utils.loss.reparameterize` draws it; for wake-sleep then the
    prior draws and the uniforms of the fantasies' pixels); it updates the parameters
    and ``optimizer``'s own state (Adam: step, exp_avg, exp_avg_sq; Adagrad: step, sum), so
    checkpoints are interchangeable with the eager step's. Results agree with the eager step's to
    float rounding (~1e-7), are reproducible run to run and resume exactly. The first call of a
    process loads the step (about 1 s), or compiles it once per machine (up to a minute with
    inductor's cache cold); so does each new model shape or batch size.
    """
    kind = "adagrad" if isinstance(optimizer, torch.optim.Adagrad) else "adam"
    (group,) = optimizer.param_groups
    encoder = list(model.encoder.parameters())
    params = encoder + list(model.decoder.parameters())
    states = []
    for p in params:
        state = optimizer.state[p]
        if not state:  # torch.optim.Adam's lazy initialisation (fused=True: a float32 step tensor)
            state["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states.append(state)

    def draw(*shape: int, uniform: bool = False) -> torch.Tensor:
        sample = torch.rand if uniform else torch.randn
        return sample(shape, generator=generator, device=x.device, dtype=x.dtype)

    noise: tuple[torch.Tensor, ...] = (draw(config.n_samples, len(x), model.latent_dim),)
    if config.algorithm == "wake_sleep":  # then the prior draws, then each fantasy pixel's noise
        prior = draw(len(x), model.latent_dim)
        noise += (prior, draw(*x.shape, uniform=config.decoder != "gaussian"))
    common = (x, noise, len(encoder), Spec.of(config))
    if kind == "adagrad":
        lr = torch.tensor(group["lr"], dtype=x.dtype)  # a tensor: a new lr needs no new graph
        sums, counts = [s["sum"] for s in states], [s["step"] for s in states]
        args: tuple = (params, sums, counts, lr, *common, group["eps"], group["weight_decay"])
    else:
        t = states[0]["step"].item() + 1  # the step about to be taken (a CPU tensor: no sync)
        beta1, beta2 = group["betas"]
        coefs = torch.tensor([group["lr"] / (1 - beta1**t), math.sqrt(1 - beta2**t)], dtype=x.dtype)
        moments = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states])
        counts = [s["step"] for s in states]
        args = (params, *moments, counts, coefs, *common, beta1, beta2, group["eps"], group["weight_decay"])
    with _calling_compiled():  # loading or compiling the step included
        if step is None:  # the shapes and constants, quicker to gather than _signature (~15 us a step)
            scalars = tuple(a for a in args if isinstance(a, int | float | Spec))
            step = _step_for((kind, x.dtype, tuple(v.shape for v in (x, *noise, *params)), scalars), args)
        return step(*args)


def _signature(args: Any) -> Any:
    """What a compiled step is specialised on: each tensor's shape, stride and dtype (the steps take
    CPU tensors only), every other argument's value."""
    if isinstance(args, torch.Tensor):
        return args.shape, args.stride(), args.dtype
    if isinstance(args, list | tuple) and not isinstance(args, Spec):
        return tuple(_signature(a) for a in args)
    return args


#: The steps this process has loaded or compiled, by optimizer, dtype, shapes and constants.
_steps: dict[tuple, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {}


def _step_for(key: tuple, args: tuple) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The compiled :func:`adam_step` or :func:`adagrad_step` (``key[0]``) for ``args``: loaded
    from the ahead-of-time cache (:func:`_ahead_of_time`), else compiled in this process by
    ``torch.compile`` (with a warning that says why). Its guards check ``args`` at every call."""
    kind = key[0]
    if key not in _steps:
        function = adagrad_step if kind == "adagrad" else adam_step
        try:
            _steps[key] = _ahead_of_time(function, args)
        except Exception as error:  # an experimental API: any failure leaves the in-process compile
            warnings.warn(
                f"the compiled {kind} step could not be compiled ahead of time ({type(error).__name__}: "
                f"{error}); compiling it in this process instead",
                RuntimeWarning,
                stacklevel=3,
            )
            if kind not in _compiled:
                _compiled[kind] = _compile(function)
            _steps[key] = _compiled[kind]
    return _steps[key]


def aot_cache_path(function: Callable, args: tuple) -> Path:
    """Where :func:`_ahead_of_time` keeps ``function`` compiled for ``args``: a folder beside
    inductor's own cache (``TORCHINDUCTOR_CACHE_DIR``), one file per digest of everything the
    compiled code depends on: torch's and Python's versions, the instruction set torch's kernels and
    inductor's use (``ATEN_CPU_CAPABILITY`` included), the CPU's flags, the thread count (inductor's
    loops are specialised on it), inductor's configuration and options, this package's traced
    sources, and the arguments' :func:`_signature`."""
    from torch._inductor import config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    sources = [
        Path(str(m.__file__)).read_bytes() for m in (sys.modules[__name__], loss, continuous_bernoulli)
    ]
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    key = repr(
        (
            torch.__version__,
            sys.version,
            platform.machine(),
            torch.backends.cpu.get_cpu_capability(),
            next((line for line in lines if line.startswith("flags")), ""),
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
            sorted(inductor_config.save_config_portable().items()),
            INDUCTOR_OPTIONS,
            function.__name__,
            _signature(args),
        )
    )
    digest = hashlib.sha256(key.encode() + b"".join(sources)).hexdigest()[:32]
    return Path(cache_dir()) / "vae_utils_steps" / f"{function.__name__}-{digest}.bin"


def _ahead_of_time(function: Callable, args: tuple) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``function`` compiled for ``args`` with ``torch.compile(...).aot_compile`` and kept on disk
    (:func:`aot_cache_path`), or loaded from there: the same inductor code as ``torch.compile``'s,
    without tracing the step again in each process (0.5 s of a warm start, docs/speed.md). A file
    that cannot be loaded, or whose guards reject ``args``, is compiled and written again."""
    from torch._inductor import config as inductor_config

    path = aot_cache_path(function, args)
    compiled: Any  # torch's AOTCompiledFunction, which has no public type
    if path.is_file():
        try:  # loaded under the options it was compiled with (0.13 s less: no precompiled header)
            with path.open("rb") as file, inductor_config.patch(INDUCTOR_OPTIONS):
                compiled = torch.compiler.load_compiled_function(file)
            if compiled.guard_check(*args):
                return compiled
        except Exception:  # written by another torch, or cut short: made again below
            pass
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = _compile(function).aot_compile((args, {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not save_compiled_function, whose temporary file stays private (0600) after the rename: with the
    # umask's permissions, like inductor's own files, the users of a shared cache folder can load it.
    atomic_write_bytes(path, type(compiled).serialize(compiled).serialized_data)
    return compiled


def posterior_value_and_grad(
    decoder: torch.nn.Module, config: TrainConfig
) -> Callable[[torch.Tensor], ValueAndGrad]:
    """For MCEM's E-step (:func:`vae_utils.mcem.e_step`): x -> (z -> (log p(x, z) per row, its
    gradient in z)) under ``decoder``'s current parameters, as one compiled graph (forward and
    backward of the decoder, the log-likelihood fused into its loops). The same numbers as autograd
    on :func:`vae_utils.marginal_likelihood.posterior_log_density` to float rounding; each HMC
    transition still draws its noise and accepts or rejects eagerly (:func:`vae_utils.hmc.hmc_transition`),
    so a last-bit difference can flip an acceptance: a compiled MCEM run matches the eager one in
    distribution, is reproducible and resumes exactly."""
    if "hmc" not in _compiled:
        _compiled["hmc"] = _compile(log_joint_and_grad)
    compiled, spec, params = _compiled["hmc"], Spec.of(config), list(decoder.parameters())

    def of_chunk(x: torch.Tensor) -> ValueAndGrad:
        def value_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with _calling_compiled():
                return compiled(params, x, z.detach(), spec)

        return value_and_grad

    return of_chunk
