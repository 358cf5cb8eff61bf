"""Training: minibatch SGVB (paper Algorithm 1) or wake-sleep, with checkpoints and resumption.

:func:`train` runs either algorithm on the same networks and saves the run as
:mod:`vae_utils.runfiles` describes. Around the loop it offers the paper's protocol as options:
a recorded step-size pilot (:func:`choose_step_size`), log-spaced evaluation for long runs
(:func:`evaluation_due`), early stopping on the best test ELBO, and Burda et al.'s step-size
schedule (:func:`scheduled_lr`).
"""

from __future__ import annotations

import dataclasses
import math
import time

import pandas as pd
import torch

from vae_utils.compiled_step import compiled_train_step
from vae_utils.config import BURDA_EPOCHS, BURDA_STAGES, TrainConfig
from vae_utils.data import Data, batches, load_config_data
from vae_utils.loss import (
    elbo,
    evaluate,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    kl_standard_normal,
    reparameterize,
)
from vae_utils.model import VAE
from vae_utils.progress import interactive, progress_bar
from vae_utils.runfiles import (
    TB_DIR,
    Run,
    atomic_write_text,
    load_run,
    lock_run_dir,
    prepare_run_dir,
    save_checkpoint,
)
from vae_utils.tensorboard_log import IMAGES_PER_DECADE, TensorBoardLog, image_grids

#: Without an evaluation for this long, a run saves ``last.pt`` anyway (long log-spaced runs).
CHECKPOINT_SECONDS = 300.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""


def _training_split(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------- schedules


def burda_stage(epoch: int, epochs: int) -> int:
    """The stage i = 0..7 of Burda et al.'s schedule that (1-based) ``epoch`` falls in.

    Stage i is 3^i of 3,280 epochs; a run of ``epochs`` < 3,280 shrinks every stage in proportion
    (stage boundaries at the rounded cumulative fractions), keeping at least one epoch per stage.
    """
    cumulative = [sum(3**j for j in range(i + 1)) for i in range(BURDA_STAGES)]
    bounds = [max(i + 1, round(c * epochs / BURDA_EPOCHS)) for i, c in enumerate(cumulative)]
    for i in range(BURDA_STAGES - 2, -1, -1):  # strictly increasing, last = epochs
        bounds[i] = min(bounds[i], bounds[i + 1] - 1)
    return next((i for i, bound in enumerate(bounds) if epoch <= bound), BURDA_STAGES - 1)


def scheduled_lr(config: TrainConfig, epoch: int, lr: float) -> float:
    """The step size of (1-based) ``epoch``: ``lr`` itself, or lr * 10^(-i/7) in Burda's stage i."""
    if config.lr_schedule == "burda":
        return lr * 10 ** (-burda_stage(epoch, config.epochs) / 7)
    return lr


def evaluation_due(samples: int, last_samples: int, per_decade: int | None) -> bool:
    """Whether a point 10^(j/n) of the log-spaced evaluation grid lies in (last_samples, samples];
    always True when ``per_decade`` is None (evaluate every epoch)."""
    if per_decade is None:
        return True

    def index(s: int) -> int:  # the last grid point at or below s
        return -1 if s <= 0 else math.floor(per_decade * math.log10(s) + 1e-9)

    return index(samples) > index(last_samples)


# ----------------------------------------------------------------------------- one step


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the minibatch ``x``: SGVB on -ELBO (``algorithm="aevb"``, Algorithm 1)
    or a wake and a sleep phase (``"wake_sleep"``). Returns (the minibatch ELBO per datapoint, the
    loss stepped on), detached and left on the device; for wake-sleep the loss is the sum of the
    wake and sleep losses, which the ELBO does not contain.

    With ``config.compile`` (AEVB with Adam on a CPU) the step is :func:`compiled_train_step`."""
    if config.compile and config.algorithm == "aevb" and x.device.type == "cpu":
        return compiled_train_step(model, optimizer, x, config, generator)
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

    Returns a (n_batches, 2) tensor left on the device (nothing here waits for it, so the caller
    checks it once per epoch): column 0 the minibatch ELBOs, column 1 the losses stepped on.
    """
    x_train, _ = _training_split(data)
    n_batches = math.ceil(len(x_train) / config.batch_size)
    out = torch.empty(n_batches, 2, device=x_train.device, dtype=x_train.dtype)
    epoch_batches = batches(x_train, config.batch_size, generator, config.binarize == "dynamic")
    for i, x in enumerate(progress_bar(epoch_batches, progress, desc, "batch", n_batches)):
        out[i, 0], out[i, 1] = train_step(model, optimizer, x, config, generator)
    return out


# ----------------------------------------------------------------------------- the step-size pilot


def choose_step_size(
    config: TrainConfig, data: Data, device: torch.device, progress: bool = True
) -> tuple[float, pd.DataFrame]:
    """The paper's step-size choice (section 5) made a recorded procedure.

    For each of ``config.lr_candidates``: the run's initialisation (same seed), then
    ``config.pilot_samples`` training samples of the run's own algorithm, then the ELBO on the
    (up to 10,000) training images the history evaluates, with fixed noise. The candidate with the
    best training-set ELBO wins (a NaN never does). Returns (chosen lr, the table of the pilot).
    """
    x_train, x_train_eval = _training_split(data)
    rows = []
    steps = math.ceil(config.pilot_samples / config.batch_size)
    for lr in config.lr_candidates or [config.lr]:
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        model = VAE.from_config(config, data.dim).to(device)
        optimizer = make_optimizer(model, config, device, scheduled_lr(config, 1, lr))
        generator = torch.Generator(device).manual_seed(config.seed)
        losses: list[torch.Tensor] = []
        while len(losses) < steps:  # as many passes as the pilot needs, the last one partial
            for x in batches(x_train, config.batch_size, generator, config.binarize == "dynamic"):
                losses.append(train_step(model, optimizer, x, config, generator)[1])
                if len(losses) == steps:
                    break
        finite = bool(torch.isfinite(torch.stack(losses)).all())
        model.eval()
        value = (
            evaluate(model, x_train_eval, config.n_samples, config.kl, seed=config.seed + 1)["elbo"]
            if finite
            else math.nan
        )
        rows.append(
            {
                "lr": lr,
                "samples": steps * config.batch_size,
                "train_elbo": value,
                "seconds": time.perf_counter() - started,
            }
        )
        if progress:
            print(f"step-size pilot: lr {lr:g}, {steps} steps -> train ELBO {value:.2f}", flush=True)
    table = pd.DataFrame(rows)
    finite = table["train_elbo"].where(table["train_elbo"].map(math.isfinite))
    if finite.isna().all():
        raise TrainingDiverged(
            f"every step size in lr_candidates = {config.lr_candidates} diverged "
            "in the pilot: try smaller ones"
        )
    chosen = float(table.loc[finite.idxmax(), "lr"])
    table["chosen"] = table["lr"] == chosen
    return chosen, table


def _pilot(config: TrainConfig, data: Data, device: torch.device, progress: bool) -> float:
    """The step size of the run: config.lr, or the pilot's choice (read back from lr_pilot.csv when
    an earlier attempt already made it)."""
    if config.lr_candidates is None:
        return config.lr
    path = config.path / "lr_pilot.csv"
    if path.is_file():
        table = pd.read_csv(path)
    else:
        _, table = choose_step_size(config, data, device, progress)
        atomic_write_text(path, table.to_csv(index=False))
    chosen = float(table.loc[table["chosen"], "lr"].iloc[0])
    if progress:
        print(f"step size {chosen:g} chosen from {config.lr_candidates} (lr_pilot.csv)", flush=True)
    return chosen


# ----------------------------------------------------------------------------- the run


def _eval_row(model: VAE, data: Data, config: TrainConfig) -> dict:
    """Train and test ELBO with fixed evaluation noise (the same at every evaluation)."""
    row = {}
    model.eval()
    for split, x in (("train", _training_split(data)[1]), ("test", data.x_test)):
        values = evaluate(model, x, config.n_samples, config.kl, seed=config.seed + 1)
        row.update({f"{split}_{k}": v for k, v in values.items()})
    row["test_log_px"] = math.nan
    if config.eval_iw_samples is not None:
        row["test_log_px"] = (
            importance_weighted_log_likelihood(
                model, data.x_test, config.eval_iw_samples, seed=config.seed + 1, progress=False
            )
            .mean()
            .item()
        )
    model.train()
    return row


def _format_row(row: dict, config: TrainConfig, best: bool) -> str:
    where = (
        f"epoch {row['epoch']:>3}/{config.epochs}"
        if config.eval_per_decade is None
        else f"epoch {row['epoch']:>5}/{config.epochs}, {row['samples']:.3g} samples"
    )
    return (
        f"{where} | train ELBO {row['train_elbo']:9.2f} | "
        f"test ELBO {row['test_elbo']:9.2f} (recon {row['test_recon']:9.2f}, "
        f"KL {row['test_kl']:6.2f}){' *' if best else '  '} [{row['seconds']:.1f} s]"
    )


def train(
    config: TrainConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    data: Data | None = None,
) -> Run:
    """Train a VAE as ``config`` says, save it under ``config.run_dir`` and return the best model.

    Each epoch runs ``config.algorithm`` over the shuffled training set. After every epoch (or,
    with ``eval_per_decade``, after the epochs that reach the next log-spaced sample count, and
    after the last) it evaluates the ELBO on the test set and on up to 10,000 training images,
    appends a row to the history and writes ``last.pt`` (and ``best.pt`` when the test ELBO beats
    the best so far). Training stops after ``config.epochs`` epochs, or after ``config.patience``
    evaluations in a row without a better test ELBO; the model returned, and kept in ``best.pt``,
    is the best one. With ``lr_candidates`` a step-size pilot runs first (:func:`choose_step_size`).
    With ``config.tensorboard`` (the default) each evaluation is also written, and flushed, as
    TensorBoard events in ``run_dir/tb`` (:mod:`vae_utils.tensorboard_log`; docs/live.md).

    An existing run directory raises ``FileExistsError`` unless ``resume`` (continue from
    ``last.pt``, giving the same history as an uninterrupted run on the same machine) or
    ``overwrite`` is set. A NaN or infinite loss raises :class:`TrainingDiverged` naming the epoch
    and batch, and leaves the last good checkpoint in place. While another process trains in the
    run directory, :class:`vae_utils.runfiles.RunLocked` is raised at once, naming it, and nothing
    there is touched (:func:`vae_utils.runfiles.lock_run_dir`).

    ``progress``: a tqdm bar in a terminal, plain per-evaluation lines otherwise; False is silent.
    ``data`` skips loading when the caller already holds the dataset.
    """
    config.validate()  # again: fields may have been changed since construction
    if overwrite and resume:
        raise ValueError("train(overwrite=True, resume=True): choose one")
    if data is not None:
        _training_split(data)  # test-only data fails here, before the run directory is touched
    device = resolve_device(config.device)
    with (
        lock_run_dir(config.path) as lock,  # before anything is written or deleted there
        TensorBoardLog(config.path / TB_DIR, config.tensorboard) as tb,  # opened at the 1st evaluation
    ):
        if progress and lock.previous:
            held = lock.previous
            print(
                f"took over the lock of {config.path}: its holder, process {held.get('pid')} on host "
                f"{held.get('host')}, started {held.get('started')}, had died",
                flush=True,
            )
        return _train_locked(config, overwrite, resume, progress, data, device, tb)


@dataclasses.dataclass
class TrainState:
    """Where a run stands: saved in every checkpoint (as a dict, ``state``) and restored on resume."""

    lr: float  # the step size the pilot chose, or config.lr (Burda's schedule scales it per epoch)
    epoch: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # one row per evaluation
    best_elbo: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # evaluations in a row without a better test ELBO (early stopping)
    finished: bool = False
    seconds: float = 0.0  # training and evaluation time so far
    last_eval_samples: int = 0
    objective_sum: float = 0.0  # minibatch ELBOs since the last evaluation
    objective_count: int = 0


def _train_locked(
    config: TrainConfig,
    overwrite: bool,
    resume: bool,
    progress: bool,
    data: Data | None,
    device: torch.device,
    tb: TensorBoardLog,
) -> Run:
    """:func:`train` once it holds the run directory's lock; ``tb`` writes the evaluations' events."""
    checkpoint = prepare_run_dir(config, overwrite, resume)
    if data is None:
        data = load_config_data(config, device)
    lr = _pilot(config, data, device, progress) if checkpoint is None else checkpoint["state"]["lr"]
    torch.manual_seed(config.seed)
    model = VAE.from_config(config, data.dim).to(device)
    optimizer = make_optimizer(model, config, device, lr)
    data_gen = torch.Generator(device).manual_seed(config.seed)
    state = TrainState(lr=lr)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        data_gen.set_state(checkpoint["rng"].to(torch.uint8))
        state = TrainState(**checkpoint["state"])
        if progress and not state.finished:
            print(f"resuming {config.path} after epoch {state.epoch}", flush=True)

    def save(is_best: bool) -> float:
        save_checkpoint(config.path, model, optimizer, data_gen, dataclasses.asdict(state), is_best)
        return time.perf_counter()

    n_train = len(_training_split(data)[0])
    saved_at = time.perf_counter()
    while not state.finished:
        epoch = state.epoch + 1
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(config, epoch, lr)
        out = train_epoch(
            model, optimizer, data, config, data_gen, progress and interactive(), f"epoch {epoch}"
        )
        _check_divergence(out, epoch, state, config)
        samples = epoch * n_train
        state.objective_sum += out[:, 0].double().sum().item()
        state.objective_count += len(out)
        state.epoch = epoch
        last = epoch >= config.epochs
        if not (last or evaluation_due(samples, state.last_eval_samples, config.eval_per_decade)):
            state.seconds += time.perf_counter() - started
            if time.perf_counter() - saved_at > CHECKPOINT_SECONDS:  # an interruption loses little
                saved_at = save(is_best=False)
            continue
        previous_samples = state.last_eval_samples
        row, is_best, stop_early = _evaluate(model, data, config, state, samples, last, started)
        if tb.enabled:  # before the checkpoint: a crash in between is purged by the resume
            images = state.finished or evaluation_due(samples, previous_samples, IMAGES_PER_DECADE)
            grids = image_grids(model, data, config.seed) if images else None
            tb.write(row, optimizer.param_groups[0]["lr"], previous_samples, grids)
        saved_at = save(is_best)
        if progress:
            print(_format_row(row, config, is_best), flush=True)
            if stop_early:
                print(
                    f"early stop: no better test ELBO for {config.patience} evaluations; keeping "
                    f"epoch {state.best_epoch} (test ELBO {state.best_elbo:.2f})",
                    flush=True,
                )
    return load_run(config.path, device=device)


def _check_divergence(out: torch.Tensor, epoch: int, state: TrainState, config: TrainConfig) -> None:
    """Raise :class:`TrainingDiverged` when a minibatch ELBO or loss of the epoch (``out``, from
    :func:`train_epoch`) is not finite, naming the batch and the checkpoint kept: one host sync per
    epoch, not per step."""
    finite = torch.isfinite(out).all(1)
    if bool(finite.all()):
        return
    bad = int((~finite).nonzero()[0])
    raise TrainingDiverged(
        f"the loss became {out[bad, 1].item()} (minibatch ELBO {out[bad, 0].item()}) at "
        f"epoch {epoch}, batch {bad + 1} of {len(out)}: training stopped. "
        + (
            f"The last good checkpoint (epoch {state.epoch}) is kept in {config.path}. "
            if state.history
            else f"No evaluation finished, so {config.path} holds no checkpoint. "
        )
        + "Try a smaller lr or, for the Gaussian decoder, a higher min_logvar."
    )


def _evaluate(
    model: VAE, data: Data, config: TrainConfig, state: TrainState, samples: int, last: bool, started: float
) -> tuple[dict, bool, bool]:
    """Evaluate after the epoch ``state.epoch`` (started at ``started``), append the history row and
    update the best model and the early stop; returns (the row, whether it is the best so far,
    whether training stops early)."""
    row = {
        "epoch": state.epoch,
        "samples": samples,
        **_eval_row(model, data, config),
        "minibatch_elbo": state.objective_sum / state.objective_count,
    }
    state.objective_sum, state.objective_count, state.last_eval_samples = 0.0, 0, samples
    state.seconds += time.perf_counter() - started
    row["seconds"] = state.seconds
    is_best = row["test_elbo"] > state.best_elbo
    if is_best:
        state.best_elbo, state.best_epoch, state.bad_epochs = row["test_elbo"], state.epoch, 0
    else:
        state.bad_epochs += 1
    state.history.append(row)
    stop_early = config.patience is not None and state.bad_epochs >= config.patience
    state.finished = last or stop_early
    return row, is_best, stop_early
