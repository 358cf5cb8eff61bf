"""A training run: :func:`train` runs AEVB, wake-sleep (:mod:`vae_utils.steps`) or Monte Carlo EM
(:mod:`vae_utils.mcem`) and saves it as :mod:`vae_utils.runfiles` describes, with the paper's
protocol as options: a recorded step-size pilot, log-spaced evaluation, early stopping, Burda et
al.'s schedule, and exact resumption. docs/methods.md has the details.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import pandas as pd
import torch

from vae_utils.compiled_step import posterior_value_and_grad
from vae_utils.config import BURDA_EPOCHS, BURDA_STAGES, TrainConfig
from vae_utils.data import Data, batches, load_config_data
from vae_utils.loss import evaluate, importance_weighted_log_likelihood, onednn_inference_copy
from vae_utils.marginal_likelihood import fitted_proposal_log_px, hmc_log_px
from vae_utils.mcem import MCEMState, mcem_epoch
from vae_utils.model import VAE
from vae_utils.progress import interactive
from vae_utils.runfiles import (
    TB_DIR,
    Run,
    atomic_write_text,
    load_run,
    lock_run_dir,
    prepare_run_dir,
    save_checkpoint,
)
from vae_utils.steps import (
    bfloat16_units,
    make_optimizer,
    resolve_device,
    train_epoch,
    train_step,
    training_split,
)
from vae_utils.tensorboard_log import IMAGES_PER_DECADE, RECONSTRUCTIONS_TAG, TensorBoardLog, image_grids

#: Importance samples per image for ``eval_marginal``'s second estimate (a Student-t fitted to the
#: HMC draws as the proposal): enough for a few hundredths of a nat on a 3-D posterior.
EVAL_PROPOSAL_SAMPLES = 200
#: Without an evaluation for this long, a run saves ``last.pt`` anyway (long log-spaced runs).
CHECKPOINT_SECONDS = 300.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps the last good checkpoint."""


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


def evaluation_due(samples: int, last_samples: int, per_decade: int | None, every: int | None = None) -> bool:
    """Whether a point of the evaluation grid lies in (last_samples, samples]: 10^(j/n) for
    ``per_decade`` = n, the multiples of ``every``, or every epoch when both are None."""
    if every is not None:
        return samples // every > last_samples // every
    if per_decade is None:
        return True

    def index(s: int) -> int:  # the last grid point at or below s
        return -1 if s <= 0 else math.floor(per_decade * math.log10(s) + 1e-9)

    return index(samples) > index(last_samples)


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
    x_train, x_train_eval = training_split(data)
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


def _eval_row(model: VAE, data: Data, config: TrainConfig, state: TrainState) -> dict:
    """Train and test ELBO with fixed evaluation noise (the same at every evaluation); with
    ``eval_iw_samples`` the test log p(x) by importance sampling; with ``eval_marginal`` Figure 3's
    two estimates on the first training and test images, App. D's from HMC draws (``_log_px_hmc``,
    high in expectation) and importance sampling from a Student-t fitted to those draws
    (``_log_px_hmc_is``, low in expectation). MCEM has no encoder: its ELBO columns are NaN."""
    row = dict.fromkeys(
        ("test_log_px", *(f"{split}_log_px_hmc{is_}" for split in ("train", "test") for is_ in ("", "_is"))),
        math.nan,
    )
    model.eval()
    if config.algorithm != "mcem":
        inference = onednn_inference_copy(model, data.x_test)  # one copy for all three
        for split, x in (("train", training_split(data)[1]), ("test", data.x_test)):
            values = evaluate(inference, x, config.n_samples, config.kl, seed=config.seed + 1)
            row.update({f"{split}_{k}": v for k, v in values.items()})
        if config.eval_iw_samples is not None:
            row["test_log_px"] = (
                importance_weighted_log_likelihood(
                    inference, data.x_test, config.eval_iw_samples, seed=config.seed + 1, progress=False
                )
                .mean()
                .item()
            )
    else:
        row.update(
            {f"{split}_{term}": math.nan for split in ("train", "test") for term in ("elbo", "recon", "kl")}
        )
    if config.eval_marginal is not None:
        for split, x in (("train", training_split(data)[0]), ("test", data.x_test)):
            x = x[: config.eval_marginal]
            if state.mcem is not None:  # the persistent sample of the training images; the prior for test
                z0 = state.mcem.z[: len(x)] if split == "train" else None
            else:
                with torch.no_grad():
                    z0 = model.encode(x)[0]
            generator = torch.Generator(x.device).manual_seed(config.seed + 2)
            estimate = hmc_log_px(model.decoder, x, generator, z0=z0, latent_dim=config.latent_dim)
            row[f"{split}_log_px_hmc"] = estimate.log_px.mean().item()
            draws = estimate.chain.draws
            bound = fitted_proposal_log_px(model.decoder, x, draws, EVAL_PROPOSAL_SAMPLES, generator)
            row[f"{split}_log_px_hmc_is"] = bound.mean().item()
    model.train()
    return row


def _format_row(row: dict, config: TrainConfig, best: bool) -> str:
    where = (
        f"epoch {row['epoch']:>3}/{config.epochs}"
        if config.eval_per_decade is None and config.eval_every is None
        else f"epoch {row['epoch']:>5}/{config.epochs}, {row['samples']:.3g} samples"
    )
    mark = " *" if best else "  "
    train_hmc, test_hmc = (row.get(f"{split}_log_px_hmc", math.nan) for split in ("train", "test"))
    hmc = f"log p(x) by HMC: train {train_hmc:9.2f}, test {test_hmc:9.2f}" if not math.isnan(test_hmc) else ""
    if config.algorithm == "mcem":
        return f"{where} | {hmc or 'no evaluation (eval_marginal=None)'}{mark} [{row['seconds']:.1f} s]"
    return (
        f"{where} | train ELBO {row['train_elbo']:9.2f} | "
        f"test ELBO {row['test_elbo']:9.2f} (recon {row['test_recon']:9.2f}, "
        f"KL {row['test_kl']:6.2f}){mark}{' | ' + hmc if hmc else ''} [{row['seconds']:.1f} s]"
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

    Each epoch runs ``config.algorithm`` over the shuffled training set. After every epoch (or, with
    ``eval_per_decade`` or ``eval_every``, after the epochs that reach the next log-spaced or evenly
    spaced sample count, and after the last) it evaluates the ELBO on the test set and on up to
    10,000 training images, appends a row to the history and writes ``last.pt`` (and ``best.pt``
    when the test ELBO beats the best so far). Training stops after ``config.epochs`` epochs, or
    after ``config.patience`` evaluations in a row without a better test ELBO; the model returned,
    and kept in ``best.pt``, is the best one. With ``lr_candidates`` a step-size pilot runs first
    (:func:`choose_step_size`).
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
        training_split(data)  # test-only data fails here, before the run directory is touched
    device = resolve_device(config.device)
    if config.autocast == "bfloat16" and device.type == "cpu" and not bfloat16_units():
        message = "autocast='bfloat16' on a CPU without bfloat16 units (avx512_bf16 or AMX) is slower"
        warnings.warn(message + " than float32, up to 25x (docs/speed.md)", stacklevel=2)
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
    best_elbo: float = -math.inf  # the best test ELBO (MCEM: the best test log p(x) by HMC)
    best_epoch: int = 0
    bad_epochs: int = 0  # evaluations in a row without a better test ELBO (early stopping)
    finished: bool = False
    seconds: float = 0.0  # training and evaluation time so far
    last_eval_samples: int = 0
    objective_sum: float = 0.0  # minibatch ELBOs since the last evaluation
    objective_count: int = 0
    mcem: MCEMState | None = None  # Monte Carlo EM's persistent sample and step size (algorithm="mcem")

    def __post_init__(self) -> None:
        if isinstance(self.mcem, dict):  # as a checkpoint holds it
            self.mcem = MCEMState(**self.mcem)


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
    x_train = training_split(data)[0]
    if config.algorithm == "mcem" and checkpoint is None:
        state.mcem = MCEMState.start(len(x_train), config.latent_dim, data_gen, x_train.dtype, device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        data_gen.set_state(checkpoint["rng"].to(torch.uint8))
        state = TrainState(**checkpoint["state"])
        if state.mcem is not None:
            state.mcem.z = state.mcem.z.to(device)
        if progress and not state.finished:
            print(f"resuming {config.path} after epoch {state.epoch}", flush=True)

    def save(is_best: bool) -> float:
        save_checkpoint(config.path, model, optimizer, data_gen, dataclasses.asdict(state), is_best)
        return time.perf_counter()

    n_train = len(x_train)
    saved_at = time.perf_counter()
    while not state.finished:
        epoch = state.epoch + 1
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(config, epoch, lr)
        if state.mcem is not None:
            compiled = config.compile and device.type == "cpu"
            value_and_grad = posterior_value_and_grad(model.decoder, config) if compiled else None
            out = mcem_epoch(
                model.decoder, optimizer, x_train, state.mcem, config.batch_size, data_gen, value_and_grad
            )
        else:
            out = train_epoch(
                model, optimizer, data, config, data_gen, progress and interactive(), f"epoch {epoch}"
            )
        _check_divergence(out, epoch, state, config)
        samples = state.mcem.evaluations if state.mcem is not None else epoch * n_train
        state.objective_sum += out[:, 0].double().sum().item()
        state.objective_count += len(out)
        state.epoch = epoch
        last = epoch >= config.epochs
        due = evaluation_due(samples, state.last_eval_samples, config.eval_per_decade, config.eval_every)
        if not (last or due):
            state.seconds += time.perf_counter() - started
            if time.perf_counter() - saved_at > CHECKPOINT_SECONDS:  # an interruption loses little
                saved_at = save(is_best=False)
            continue
        previous_samples = state.last_eval_samples
        row, is_best, stop_early = _evaluate(model, data, config, state, samples, last, started)
        if tb.enabled:  # before the checkpoint: a crash in between is purged by the resume
            images = state.finished or evaluation_due(samples, previous_samples, IMAGES_PER_DECADE)
            grids = image_grids(model, data, config.seed) if images else None
            if grids is not None and state.mcem is not None:  # no encoder: no reconstructions
                grids.pop(RECONSTRUCTIONS_TAG)
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
        **_eval_row(model, data, config, state),
        "minibatch_elbo": state.objective_sum / state.objective_count,
    }
    state.objective_sum, state.objective_count, state.last_eval_samples = 0.0, 0, samples
    state.seconds += time.perf_counter() - started
    row["seconds"] = state.seconds
    score = row.get("test_log_px_hmc", math.nan) if state.mcem is not None else row["test_elbo"]
    # MCEM without eval_marginal has no score: each evaluation's model is kept as the best. A NaN
    # score otherwise (an estimate that failed) never is: the best so far stays.
    unscored = state.mcem is not None and config.eval_marginal is None
    is_best = unscored or (not math.isnan(score) and score > state.best_elbo)
    if is_best:
        state.best_elbo, state.best_epoch, state.bad_epochs = score, state.epoch, 0
    else:
        state.bad_epochs += 1
    state.history.append(row)
    stop_early = config.patience is not None and state.bad_epochs >= config.patience
    state.finished = last or stop_early
    return row, is_best, stop_early
