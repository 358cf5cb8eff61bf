"""Notebook 07: binarised MNIST against Burda et al.'s Table 1, and the Bernoulli, continuous
Bernoulli and Gaussian decoders side by side on grey levels, with what may be compared marked by
each run's data regime (:data:`vae_utils.config.REGIMES`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from vae_utils.analysis import cached_likelihood_summary
from vae_utils.config import REGIMES, TrainConfig
from vae_utils.plotting import NATS, plot_image_rows

if TYPE_CHECKING:  # annotations only
    from vae_utils.data import Data
    from vae_utils.runfiles import Run


#: Burda, Grosse & Salakhutdinov (2015), Table 1, one stochastic layer (50 units, two deterministic
#: layers of 200 tanh units), dynamically binarised MNIST, test NLL with k = 5000: -log p(x) in nats.
BURDA_VAE = "VAE (Burda et al. 2015, Table 1)"
BURDA_TABLE1 = {BURDA_VAE: 86.76, "IWAE, k = 50 (Burda et al. 2015, Table 1)": 84.78}


def regime_label(config: TrainConfig) -> str:
    """The run's data regime in a few words (:data:`REGIMES`), with the Gaussian's variance floor."""
    label = REGIMES[config.regime].label
    return f"{label} (log sigma^2 >= {config.min_logvar:g})" if config.regime == "grey_gaussian" else label


def likelihood_label(config: TrainConfig) -> str:
    """A short name for a run of notebook 07: "VAE, dynamic binarisation", "continuous Bernoulli"..."""
    return REGIMES[config.regime].run_label


def schedule_label(config: TrainConfig, epochs_run: int) -> str:
    """How long and with which step sizes a run trained, e.g. "Burda et al.'s 8 stages shortened to
    82 of 3,280 epochs (1/40)"."""
    from vae_utils.config import BURDA_EPOCHS

    if config.lr_schedule == "burda":
        if config.epochs >= BURDA_EPOCHS:
            length = f"Burda et al.'s full schedule, {config.epochs:,} epochs"
        else:
            length = (
                f"Burda et al.'s 8 stages shortened to {config.epochs:,} of {BURDA_EPOCHS:,} epochs "
                f"(1/{BURDA_EPOCHS / config.epochs:.0f})"
            )
    else:
        length = f"{config.epochs:,} epochs at step size {config.lr:g}"
    done = "" if epochs_run >= config.epochs else f"; stopped after {epochs_run:,}"
    return f"{length}, {config.optimizer}, M = {config.batch_size}{done}"


def likelihood_runs(points: pd.DataFrame) -> dict[str, Run]:
    """The runs of ``points`` loaded at their last checkpoint, by :func:`likelihood_label`."""
    from vae_utils.runfiles import load_run

    runs = (load_run(str(run_dir), checkpoint="last") for run_dir in points["run_dir"])
    return {likelihood_label(r.config): r for r in runs}


def likelihood_runs_table(runs: Mapping[str, Run]) -> pd.DataFrame:
    """What each run of notebook 07 is: architecture, initialisation, schedule, training samples."""
    return pd.DataFrame(
        [
            {
                "run": label,
                "architecture": f"{r.config.hidden_layers} x {r.config.hidden_dim} {r.config.activation}, "
                f"N_z = {r.config.latent_dim}",
                "init": r.config.init,
                "schedule": schedule_label(r.config, r.epoch),
                "training samples": int(r.history["samples"].iloc[-1]),
            }
            for label, r in runs.items()
        ]
    ).set_index("run")


@torch.no_grad()
def plot_decoder_images(runs: Mapping[str, Run], x: torch.Tensor, seed: int = 0) -> list[plt.Figure]:
    """Two figures for comparing decoders: the images ``x`` above each run's reconstructions
    (decoder means at z = mu(x)), and each run's decoder means of len(x) draws z ~ p(z), seeded
    with ``seed``. Images are 28 x 28."""
    rows = {"test images": x, **{label: r.model.reconstruct(x) for label, r in runs.items()}}
    samples = {  # a fresh generator per run: every row decodes the same prior draws
        label: r.model.decode(r.model.sample_prior(len(x), torch.Generator().manual_seed(seed)))
        for label, r in runs.items()
    }
    return [
        plot_image_rows(rows, (28, 28), suptitle="Reconstructions (decoder means)"),
        plot_image_rows(samples, (28, 28), suptitle=f"Decoder means of {len(x)} draws z ~ p(z)"),
    ]


def likelihood_table(
    runs: Mapping[str, Run],
    data: Mapping[str, Data],
    k: int,
    seed: int = 0,
    subset: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per run (label -> :class:`vae_utils.runfiles.Run`, with its test data under the same
    label): its regime, schedule, and on its test set (the first ``subset`` images, or all) the
    ELBO and the importance-weighted log p(x) with ``k`` samples, and NLL = -log p(x), nats per
    datapoint. The estimates are cached in each run's folder (:func:`cached_likelihood_summary`)."""
    rows = []
    for label, run in runs.items():
        x = data[label].x_test[:subset]
        summary = cached_likelihood_summary(run, x, k, seed=seed, progress=progress)
        rows.append(
            {
                "run": label,
                "regime": regime_label(run.config),
                "schedule": schedule_label(run.config, run.epoch),
                "test images": len(x),
                "test ELBO": summary["ELBO"],
                f"log p(x), k={k}": summary[f"log p(x), k={k}"],
                "NLL": -summary[f"log p(x), k={k}"],
            }
        )
    return pd.DataFrame(rows).set_index("run").round(2)


#: What each binarised regime's NLL is beside Burda et al.'s Table 1 (dynamically binarised).
TABLE1_COMPARABLE = {
    "binary_dynamic": "yes: same regime",
    "binary_static": "roughly: expect ~2 nats worse (Burda et al.)",
}


def grey_bernoulli_row(table: pd.DataFrame, runs: Mapping[str, Run]) -> pd.Series | None:
    """The row of :func:`likelihood_table` of the run with the Bernoulli decoder on grey levels, or None."""
    labels = [label for label in table.index if runs[label].config.regime == "grey_bernoulli"]
    return table.loc[labels[0]] if labels else None


def literature_table(
    ours: pd.DataFrame, runs: Mapping[str, Run], grey: pd.Series | None = None
) -> pd.DataFrame:
    """Our binarised-MNIST NLLs (:func:`likelihood_table` of ``runs``) beside Burda et al.'s Table 1,
    and (marked as not comparable) our grey-level Bernoulli number: columns NLL, regime, comparable
    with Table 1."""
    rows = [
        {
            "model": name,
            "regime": REGIMES["binary_dynamic"].label,
            "NLL": value,
            "compares with Table 1": "it is Table 1",
        }
        for name, value in BURDA_TABLE1.items()
    ]
    for label, row in ours.iterrows():
        rows.append(
            {
                "model": f"ours: {label}",
                "regime": row["regime"],
                "NLL": row["NLL"],
                "compares with Table 1": TABLE1_COMPARABLE.get(runs[str(label)].config.regime, "no"),
            }
        )
    if grey is not None:
        rows.append(
            {
                "model": f"ours: {grey.name}",
                "regime": grey["regime"],
                "NLL": grey["NLL"],
                "compares with Table 1": "no: a cross-entropy against grey levels",
            }
        )
    return pd.DataFrame(rows).set_index("model")


def plot_nll_trend(runs: Mapping[str, Run], ax: plt.Axes | None = None) -> plt.Axes:
    """-ELBO (dashed, an upper bound on the NLL) and, where the run recorded it, the importance-weighted
    NLL estimate (solid) on the test set against epochs, with Burda et al.'s VAE and IWAE as lines."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    for i, (label, run) in enumerate(runs.items()):
        h = run.history
        ax.plot(h["epoch"], -h["test_elbo"], "--", color=f"C{i}", label=f"{label}: -ELBO")
        if h["test_log_px"].notna().any():
            k = run.config.eval_iw_samples
            ax.plot(
                h["epoch"],
                -h["test_log_px"],
                "-o",
                color=f"C{i}",
                markersize=3,
                label=f"{label}: NLL, k = {k}",
            )
    for j, (name, value) in enumerate(BURDA_TABLE1.items()):
        ax.axhline(value, color="0.3", linestyle=":" if j else "-.", linewidth=1, label=name)
    ax.set_xscale("log")
    ax.set(
        xlabel="epoch (log scale)",
        ylabel=f"test NLL ({NATS})",
        title="Test negative log-likelihood during training",
    )
    top = max(float((-r.history["test_elbo"]).iloc[min(1, len(r.history) - 1)]) for r in runs.values())
    ax.set_ylim(min(BURDA_TABLE1.values()) - 3, max(top, max(BURDA_TABLE1.values()) + 5))
    ax.legend(fontsize=8)
    return ax


def _is_density(label: object, runs: Mapping[str, Run]) -> bool:
    return REGIMES[runs[str(label)].config.regime].density


def decoder_comparison(table: pd.DataFrame, runs: Mapping[str, Run]) -> pd.DataFrame:
    """:func:`likelihood_table`'s rows for the grey-level decoders (``runs``), with what each number
    may be compared with: the two densities on [0, 1]^D with each other, the grey Bernoulli with
    nothing but other grey-level Bernoulli numbers."""
    out = table[["regime", "test ELBO"] + [str(c) for c in table if str(c).startswith("log p(x)")]].copy()
    out["comparable with"] = [
        "the other densities on [0, 1]^D (continuous Bernoulli, Gaussian)"
        if _is_density(label, runs)
        else "grey-level Bernoulli numbers only (Figure 2)"
        for label in out.index
    ]
    return out


#: The kinds of pixel value :func:`log_likelihood_by_pixel_value` splits an image into.
PIXEL_KINDS = ("x = 0", "0 < x < 1", "x = 1")


@torch.no_grad()
def log_likelihood_by_pixel_value(runs: Mapping[str, Run], x: torch.Tensor) -> pd.DataFrame:
    """Where each decoder's nats come from: log p(x|z) at z = mu(x), summed per image over the
    pixels that are exactly 0, strictly between 0 and 1, and exactly 1 (:data:`PIXEL_KINDS`, each
    column named with its share of the pixels of ``x``), averaged over the images ``x``; and the
    most one pixel can contribute: -1/2 (log 2 pi + min_logvar) for the Gaussian decoder, inf for
    the continuous Bernoulli (its density at 0 or 1 grows without limit as lambda -> 0 or 1), 0
    for the Bernoulli."""
    masks = dict(zip(PIXEL_KINDS, (x == 0, (x > 0) & (x < 1), x == 1), strict=True))
    names = {k: f"{k} ({m.double().mean().item():.1%} of pixels)" for k, m in masks.items()}
    rows = {}
    for label, run in runs.items():
        decoder = run.model.decoder
        per_pixel = decoder.pixel_log_prob(x, run.model.encode(x)[0])
        rows[label] = {names[k]: (per_pixel * m).sum(-1).mean().item() for k, m in masks.items()}
        rows[label] |= {
            "all pixels": per_pixel.sum(-1).mean().item(),
            "most per pixel": decoder.max_pixel_log_prob,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("log p(x|z = mu), nats").round(2)


def decoder_recommendation(
    table: pd.DataFrame, runs: Mapping[str, Run], by_pixel: pd.DataFrame | None = None
) -> str:
    """A plain-language recommendation from :func:`likelihood_table`'s grey-level rows (``runs``),
    and, with ``by_pixel`` (:func:`log_likelihood_by_pixel_value` of the same runs), where the lead
    of the better density comes from."""
    densities = table[[_is_density(label, runs) for label in table.index]]
    log_px = [c for c in table if str(c).startswith("log p(x)")][0]
    lines = []
    if len(densities) >= 2:
        best = densities[log_px].idxmax()
        others = densities.drop(index=best)
        lines.append(
            f"Of the decoders that are true densities of grey pixels, {best} gives the test images "
            f"the higher likelihood: {densities.loc[best, log_px]:.1f} nats against "
            + ", ".join(f"{v:.1f} ({k})" for k, v in others[log_px].items())
            + "."
        )
        if by_pixel is not None and len(others) == 1 and {best, others.index[0]} <= set(by_pixel.index):
            other = others.index[0]
            lead = by_pixel.loc[best] - by_pixel.loc[other]
            atoms = sum(lead[c] for c in by_pixel if str(c).startswith(("x = 0", "x = 1")))
            lines.append(
                f"At z = mu(x), {atoms:.0f} of its {lead['all pixels']:.0f}-nat lead over {other} "
                "come from the pixels that are exactly 0 or 1. Grey-level MNIST has atoms there, "
                "where a density can grow without limit. Each family is capped there by its own "
                "design: the Gaussian by its variance floor (at most "
                + ", ".join(
                    f"{by_pixel.loc[k, 'most per pixel']:.2f} nats per pixel for {k}"
                    for k in (best, other)
                    if np.isfinite(by_pixel.loc[k, "most per pixel"])
                )
                + "), the continuous Bernoulli only by how far its logits go. So "
                f"{atoms / lead['all pixels']:.1%} of the difference is about how each decoder "
                "treats the atoms, not about how well it models the grey levels."
            )
    lines.append(
        "The Bernoulli decoder on grey levels optimises a cross-entropy, not a likelihood of the "
        "images: its number cannot be set beside the other two, and its means (sigmoid outputs) "
        "are what it was trained to match."
    )
    lines.append(
        "Use the continuous Bernoulli or the Gaussian when the number itself matters (model "
        "comparison, compression, anomaly scores), and compare it only with numbers from the same "
        "decoder with the same bounds; use the Bernoulli on binarised data to compare "
        "with the literature; judge samples and reconstructions by looking at the decoder means "
        "shown above, which the likelihood alone does not rank."
    )
    return "\n".join(lines)


def likelihood_results(tables: list[pd.DataFrame], runs: Mapping[str, Run], k: int) -> list[dict]:
    """Notebook 07's headline (:mod:`vae_utils.results`), from the rows of :func:`likelihood_table`s
    made with ``k`` samples (an empty table adds nothing): the binarised runs' test NLL (beside
    Burda et al.'s VAE where the regime is theirs) and the grey-level runs' log p(x)."""
    from vae_utils.analysis import IW_ESTIMATOR
    from vae_utils.results import result

    out = []
    for label, row in (item for table in tables for item in table.iterrows()):
        regime = runs[str(label)].config.regime
        if regime.startswith("binary_"):
            name, value = f"test NLL, k={k}: {label}", row["NLL"]
        else:
            name, value = f"test log p(x), k={k}: {label}", row[f"log p(x), k={k}"]
            name += " (not a likelihood)" if regime == "grey_bernoulli" else ""
        compare = f"Burda et al.: {BURDA_TABLE1[BURDA_VAE]}" if regime == "binary_dynamic" else None
        out.append(result(name, value, IW_ESTIMATOR, int(row["test images"]), compare=compare))
    return out
