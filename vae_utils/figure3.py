"""Notebook 08: the paper's Figure 3 (AEVB, wake-sleep and Monte Carlo EM by their estimated marginal
likelihood, for a small and a large training set), its claims checked one by one, and the two
estimators checked against a grid integral over z on the trained models (docs/methods.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

from vae_utils.analysis import load_test_data
from vae_utils.figure2 import ALGORITHM_COLOURS, ALGORITHM_LABELS
from vae_utils.loss import importance_weighted_log_likelihood
from vae_utils.marginal_likelihood import fitted_proposal_log_px, grid_convergence, hmc_log_px
from vae_utils.plotting import NATS

if TYPE_CHECKING:  # annotations only
    from vae_utils.runfiles import Run

#: The history's two estimates of log p(x) along each curve (``eval_marginal``), and how each is drawn.
ESTIMATORS = {
    "hmc": "App. D, from 50 HMC draws (high in expectation)",
    "hmc_is": "IS, Student-t fitted to those draws (low in expectation)",
}
#: Beyond this many nats apart (the mean over the images), App. D's estimate and importance sampling
#: from the same draws do not bracket log p(x): App. D has failed there (a chain that barely moved
#: gives its density q a width of nearly zero; docs/methods.md). They are usually within 0.3.
ESTIMATOR_DISAGREEMENT = 5.0
#: The y range of the paper's Figure 3 panels, read from the figure.
PAPER_FIGURE3_YRANGE = (-160.0, -100.0)
ORDER = ("aevb", "wake_sleep", "mcem")


def figure3_protocol(runs: Mapping[str, Run]) -> pd.DataFrame:
    """What each run of a Figure 3 sweep was: training-set size, algorithm, step size and where it
    came from, weight decay, epochs, training samples evaluated and evaluations of log p(x)."""
    rows = [
        {
            "N_train": r.config.train_subset,
            "algorithm": r.config.algorithm,
            "step size": r.lr,
            "chosen by": "pilot" if r.config.lr_candidates else "fixed",
            "weight decay": f"1/{round(1 / r.config.weight_decay)}" if r.config.weight_decay else "0",
            "epochs": r.epoch,
            "training samples": int(r.history["samples"].iloc[-1]),
            "evaluations": len(r.history),
        }
        for r in runs.values()
    ]
    return _ordered(pd.DataFrame(rows)).set_index(["N_train", "algorithm"])


def wall_times(runs: Mapping[str, Run]) -> str:
    """One line per run: its training samples evaluated and its wall time (training and evaluations,
    one core), kept out of the tables because it differs from machine to machine."""
    table = _ordered(
        pd.DataFrame(
            {
                "N_train": r.config.train_subset,
                "algorithm": r.config.algorithm,
                "samples": r.history["samples"].iloc[-1],
                "seconds": r.history["seconds"].iloc[-1],
            }
            for r in runs.values()
        )
    )
    return "\n".join(
        f"N_train = {size:,}, {ALGORITHM_LABELS[algorithm]}: "
        f"{samples / 1e6:.3g} M samples evaluated in {seconds / 60:.1f} min"
        for size, algorithm, samples, seconds in table[
            ["N_train", "algorithm", "samples", "seconds"]
        ].to_numpy()
    )


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    rank = table["algorithm"].map({a: i for i, a in enumerate(ORDER)})
    return table.assign(_rank=rank).sort_values(["N_train", "_rank"]).drop(columns="_rank")


def figure3_histories(points: pd.DataFrame) -> pd.DataFrame:
    """The curves of a Figure 3 sweep in long form: N_train, algorithm, samples, seconds, split
    (train/test), estimator (a key of :data:`ESTIMATORS`), log_px and failed (:func:`mark_failures`).
    ``points`` has one row per run with its ``run_dir`` and TrainConfig fields (as
    ``sweep_table.finished_points`` gives)."""
    frames = []
    for point in points.itertuples():
        history = pd.read_csv(f"{point.run_dir}/history.csv")
        for split in ("train", "test"):
            for estimator in ESTIMATORS:
                frames.append(
                    pd.DataFrame(
                        {
                            "N_train": point.train_subset,
                            "algorithm": point.algorithm,
                            "samples": history["samples"],
                            "seconds": history["seconds"],
                            "split": split,
                            "estimator": estimator,
                            "log_px": history[f"{split}_log_px_{estimator}"],
                        }
                    )
                )
    return mark_failures(pd.concat(frames, ignore_index=True))


def mark_failures(curves: pd.DataFrame) -> pd.DataFrame:
    """``curves`` with a column ``failed``: True for App. D's estimates that lie more than
    :data:`ESTIMATOR_DISAGREEMENT` nats from importance sampling on the same draws."""
    key = ["N_train", "algorithm", "samples", "split"]
    pair = curves.pivot_table(index=key, columns="estimator", values="log_px", dropna=False)
    failed = (pair["hmc"] - pair["hmc_is"]).abs() > ESTIMATOR_DISAGREEMENT
    out = curves.drop(columns="failed", errors="ignore").join(failed.rename("failed"), on=key)
    out["failed"] &= out["estimator"] == "hmc"
    return out


def estimator_failures(curves: pd.DataFrame) -> pd.DataFrame:
    """The evaluations at which App. D's estimate disagrees with importance sampling from the same
    draws by more than :data:`ESTIMATOR_DISAGREEMENT` nats (:func:`figure3_histories` marks them;
    the figure and the table leave them out): where, and both values."""
    failed = curves[curves["failed"]]
    rows = failed.merge(
        curves[curves["estimator"] == "hmc_is"][["N_train", "algorithm", "samples", "split", "log_px"]],
        on=["N_train", "algorithm", "samples", "split"],
        suffixes=("", " (IS)"),
    )
    table = rows.rename(columns={"log_px": "App. D"})[
        ["N_train", "algorithm", "split", "samples", "App. D", "log_px (IS)"]
    ].rename(columns={"log_px (IS)": "IS"})
    return _ordered(table).set_index(["N_train", "algorithm", "split", "samples"])


def _valid(curves: pd.DataFrame) -> pd.DataFrame:
    """The curves with App. D's failed evaluations as NaN: a gap in a line, not a spike."""
    return curves.assign(log_px=curves["log_px"].mask(curves["failed"]))


def plot_figure3(curves: pd.DataFrame, x: str = "samples") -> plt.Figure:
    """The paper's Figure 3: one panel per training-set size, log p(x) per datapoint against training
    samples evaluated (millions, linear; ``x="seconds"``: wall-clock minutes), one colour per
    algorithm, test solid and train dashed; App. D's estimate with dots, the importance-sampling one
    as a thin line (they bracket log p(x))."""
    if x not in ("samples", "seconds"):
        raise ValueError(f"x = {x!r} is invalid: allowed 'samples' or 'seconds'")
    scale, xlabel = (
        (1e6, "training samples evaluated (millions)")
        if x == "samples"
        else (60, "wall time (minutes, one core)")
    )
    sizes = sorted(curves["N_train"].unique())
    curves = _valid(curves)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.0), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        panel = curves[curves["N_train"] == size]
        for (algorithm, split, estimator), curve in panel.groupby(["algorithm", "split", "estimator"]):
            hmc = estimator == "hmc"
            ax.plot(
                curve[x] / scale,
                curve["log_px"],
                color=ALGORITHM_COLOURS[algorithm],
                linestyle="-" if split == "test" else "--",
                linewidth=1.5 if hmc else 0.8,
                marker="o" if hmc else None,
                markersize=3,
                alpha=1.0 if hmc else 0.7,
            )
        ax.set_title(f"$N_{{train}}$ = {size:,}", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(f"marginal log-likelihood ({NATS})", fontsize=9)
        _zoom(ax, panel)
    handles = [Line2D([], [], color=ALGORITHM_COLOURS[a], label=ALGORITHM_LABELS[a]) for a in ORDER]
    handles += [
        Line2D([], [], color="0.3", linestyle="-", label="test"),
        Line2D([], [], color="0.3", linestyle="--", label="train"),
        Line2D([], [], color="0.3", marker="o", markersize=3, label=ESTIMATORS["hmc"]),
        Line2D([], [], color="0.3", linewidth=0.8, label=ESTIMATORS["hmc_is"]),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    against = "" if x == "samples" else ", against wall time"
    fig.suptitle(f"Figure 3: estimated marginal likelihood, AEVB, wake-sleep and Monte Carlo EM{against}")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig


def _zoom(ax: plt.Axes, panel: pd.DataFrame) -> None:
    """y limits from the lowest value after the curves' first tenth to the highest, padded."""
    late = panel[panel["samples"] >= 0.1 * panel["samples"].max()]["log_px"].dropna()
    if len(late):
        low, high = late.min(), late.max()
        pad = max(1.0, 0.08 * (high - low))
        ax.set_ylim(low - pad, high + pad)


def figure3_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per panel and algorithm, at the last evaluation: train and test log p(x) by App. D, the test
    estimate by importance sampling and the bracket between the two, the train - test gap, and the
    best test value and the training samples (millions) where it was reached. App. D's failed
    evaluations (:func:`estimator_failures`) are left out."""
    rows = []
    for (size, algorithm), run in _valid(curves).groupby(["N_train", "algorithm"]):
        test, train, test_is = _curve(run, "test"), _curve(run, "train"), _curve(run, "test", "hmc_is")
        best = test.iloc[int(np.nanargmax(test["log_px"].to_numpy()))]
        rows.append(
            {
                "N_train": size,
                "algorithm": algorithm,
                "train": train["log_px"].iloc[-1],
                "test": test["log_px"].iloc[-1],
                "test (IS)": test_is["log_px"].iloc[-1],
                "bracket": test["log_px"].iloc[-1] - test_is["log_px"].iloc[-1],
                "train - test": train["log_px"].iloc[-1] - test["log_px"].iloc[-1],
                "best test": best["log_px"],
                "best at (M samples)": best["samples"] / 1e6,
                "samples (M)": test["samples"].iloc[-1] / 1e6,
            }
        )
    return _ordered(pd.DataFrame(rows)).set_index(["N_train", "algorithm"]).round(2)


def _curve(run: pd.DataFrame, split: str, estimator: str = "hmc") -> pd.DataFrame:
    """One run's curve of one split and estimator (App. D's "hmc" or "hmc_is"), in training order."""
    return run[(run["split"] == split) & (run["estimator"] == estimator)].sort_values("samples")


def _reached(curves: pd.DataFrame, size: int, algorithm: str, level: float) -> float:
    """Training samples (millions) at which ``algorithm``'s test App. D curve first reaches ``level``."""
    curves = _valid(curves)
    curve = _curve(curves[(curves["N_train"] == size) & (curves["algorithm"] == algorithm)], "test")
    hit = curve[curve["log_px"] >= level]
    return float(hit["samples"].iloc[0]) / 1e6 if len(hit) else float("nan")


def figure3_claims(table: pd.DataFrame, curves: pd.DataFrame) -> str:
    """The paper's claims about Figure 3, checked on :func:`figure3_table` (test log p(x) by App. D
    at the end of the budget; every number in nats per datapoint)."""
    lines = []
    sizes = sorted(table.index.get_level_values("N_train").unique())
    label = ALGORITHM_LABELS.get
    for size in sizes:
        panel = table.loc[size]
        ranked = panel["test"].sort_values(ascending=False)
        leader, rest = ranked.index[0], ranked.index[1:]
        behind = ", ".join(f"{label(a)} by {ranked[leader] - ranked[a]:.2f}" for a in rest)
        lines.append(
            f"N_train = {size:,}: {label(leader)} ends highest on the test set ({ranked[leader]:.2f}), "
            f"ahead of {behind or 'no other algorithm'}."
        )
        for other in (a for a in panel.index if a != "aevb" and "aevb" in panel.index):
            at = _reached(curves, size, "aevb", panel.loc[other, "test"])
            lines.append(
                f"  AEVB reached {label(other)}'s final test value after {at:.3g} M of "
                f"{panel.loc['aevb', 'samples (M)']:.3g} M samples."
                if at == at
                else f"  AEVB never reached {label(other)}'s final test value."
            )
    if {"aevb", "mcem"} <= set(table.index.get_level_values("algorithm")) and len(sizes) > 1:
        deficit = {s: table.loc[(s, "aevb"), "test"] - table.loc[(s, "mcem"), "test"] for s in sizes}
        lines.append(
            "MCEM behind AEVB (test): "
            + ", ".join(f"{d:.2f} at N_train = {s:,}" for s, d in deficit.items())
            + (
                "; it is closer on the small set, as the paper says."
                if deficit[sizes[0]] < deficit[sizes[-1]]
                else "; it is not closer on the small set, against the paper."
            )
        )
    for size in sizes:
        gaps = table.loc[size, "train - test"]
        lines.append(
            f"Train - test gap at the end, N_train = {size:,}: "
            + ", ".join(f"{label(a)} {g:.2f}" for a, g in gaps.items())
            + "."
        )
    low, high = PAPER_FIGURE3_YRANGE
    inside = table["test"].between(low, high)
    lines.append(
        f"Final test values inside the paper's y range ({low:.0f} to {high:.0f}): "
        f"{int(inside.sum())} of {len(table)}."
    )
    return "\n".join(lines)


def estimator_check(
    runs: Mapping[str, Run],
    n_images: int = 1000,
    grid_images: int = 20,
    points_per_dim: int = 24,
    iw_samples: int = 5000,
    seed: int = 0,
) -> pd.DataFrame:
    """Each run's final model, each estimator of log p(x), on its first test images (App. E's):

    App. D from HMC draws, importance sampling with a Student-t fitted to those draws and, for AEVB
    and wake-sleep, with q(z|x) (``iw_samples`` each), on the first ``n_images``; on the first
    ``grid_images`` each is compared with the grid integral (:func:`grid_convergence` on +-8
    posterior standard deviations at ``points_per_dim`` and twice as many points per dimension).
    One row per run and estimator: the mean on all images and, on the grid's, the mean error, the
    mean and largest absolute error; the grid's own row gives its convergence."""
    rows = []
    for run, data in zip(runs.values(), load_test_data([r.config for r in runs.values()]), strict=True):
        model, x = run.model.cpu().eval(), data.x_test[:n_images].cpu()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z0 = model.encode(x)[0] if run.config.algorithm != "mcem" else None
        estimate = hmc_log_px(model.decoder, x, generator, z0=z0, latent_dim=run.config.latent_dim)
        draws = estimate.chain.draws
        values = {
            "App. D (HMC)": estimate.log_px,
            "IS, fitted Student-t": fitted_proposal_log_px(model.decoder, x, draws, iw_samples, generator),
        }
        if run.config.algorithm != "mcem":
            values["IS, q(z|x)"] = importance_weighted_log_likelihood(
                model, x, iw_samples, seed=seed, progress=False
            )
        g = slice(0, grid_images)
        grid = grid_convergence(model.decoder, x[g], draws[:, g].mean(0), draws[:, g].std(0), points_per_dim)
        key = {"N_train": run.config.train_subset, "algorithm": run.config.algorithm}
        for name, value in values.items():
            error = (value[g] - grid.fine).numpy()
            rows.append(
                {
                    **key,
                    "estimator": name,
                    f"mean ({len(x)} images)": value.mean().item(),
                    "error vs grid": error.mean(),
                    "|error|": np.abs(error).mean(),
                    "max |error|": np.abs(error).max(),
                }
            )
        rows.append(
            {
                **key,
                "estimator": f"grid, {2 * points_per_dim}^3 (vs {points_per_dim}^3)",
                f"mean ({len(x)} images)": float("nan"),
                "error vs grid": float("nan"),
                "|error|": grid.difference.mean().item(),
                "max |error|": grid.difference.max().item(),
            }
        )
    return _ordered(pd.DataFrame(rows)).set_index(["N_train", "algorithm", "estimator"]).round(3)


def estimator_summary(check: pd.DataFrame, bias: float = 1.0) -> str:
    """:func:`estimator_check`'s table in words: per estimator, its mean absolute error against the
    grid over the models and its worst model; and every model on which an estimator's mean error
    exceeds ``bias`` nats, with its sign."""
    table = check.reset_index()
    table = table[~table["estimator"].str.startswith("grid")]
    lines = []
    for name, rows in table.groupby("estimator", sort=False):
        worst = rows.loc[rows["|error|"].idxmax()]
        where = f"N_train = {worst['N_train']:,}, {ALGORITHM_LABELS[worst['algorithm']]}"
        lines.append(
            f"{name}: mean |error| {rows['|error|'].mean():.3f} nats over {len(rows)} models; worst "
            f"{worst['|error|']:.3f} ({where})."
        )
    far = table[table["error vs grid"].abs() > bias]
    for _, row in far.iterrows():
        error = row["error vs grid"]
        lines.append(
            f"  {row['estimator']} on N_train = {row['N_train']:,}, {ALGORITHM_LABELS[row['algorithm']]}: "
            f"{abs(error):.2f} nats {'below' if error < 0 else 'above'} the grid on average."
        )
    grid = check.reset_index()
    grid = grid[grid["estimator"].str.startswith("grid")]
    lines.append(
        f"The grid itself: halving its spacing moved it by {grid['max |error|'].max():.3f} nats at most."
    )
    return "\n".join(lines)


def figure3_results(table: pd.DataFrame, images: int) -> list[dict]:
    """Notebook 08's headline (:mod:`vae_utils.results`): each panel's final test log p(x) per
    algorithm, from :func:`figure3_table`, estimated on ``images`` test images."""
    from vae_utils.results import result

    return [
        result(
            f"N_train = {size:,}: final test log p(x), {ALGORITHM_LABELS[algorithm]}",
            test,
            "App. D's estimator from 50 HMC draws per image, at the end of the budget",
            datapoints=images,
        )
        for size, algorithm, test in zip(
            table.index.get_level_values("N_train"),
            table.index.get_level_values("algorithm"),
            table["test"],
            strict=True,
        )
    ]
