"""Drawing for notebooks 02-05: images, ELBO curves, KL per unit, the latent space. Each function
returns its matplotlib Axes or Figure; the numbers behind them come from :mod:`vae_utils.analysis`.

Every number on an axis is in nats per datapoint, as in :mod:`vae_utils.loss`. Images are the
decoder's *means* E[x|z]; a Gaussian decoder's mean can leave [0, 1], so images are clipped to
[0, 1] for display only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

from vae_utils.analysis import Histories, histories_by_label, history_long, latent_grid
from vae_utils.data import image_grid
from vae_utils.results import NATS

if TYPE_CHECKING:  # annotations only
    from vae_utils.model import VAE

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2015): a unit is active when Var_x E_q[z_d|x] > 0.01


def set_style() -> None:
    """The notebooks' common look: seaborn's white grid, a readable font size."""
    sns.set_theme(style="whitegrid", context="notebook")


# ----------------------------------------------------------------------------- images


def show_images(
    images: torch.Tensor,
    image_shape: Sequence[int],
    nrow: int = 10,
    ax: plt.Axes | None = None,
    title: str | None = None,
    padding: int = 2,
) -> plt.Axes:
    """Draw flat images (N, D) as one grey grid (see :func:`image_grid`); returns the Axes."""
    grid = image_grid(images, image_shape, nrow, padding)
    if ax is None:
        rows = (len(images) + nrow - 1) // nrow
        scale = 0.6 * image_shape[0] / 28
        _, ax = plt.subplots(figsize=(max(3.0, nrow * scale), max(1.5, rows * scale)))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_reconstructions(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    image_shape: Sequence[int],
    ncol: int = 10,
    title: str = "Test images and their reconstructions",
) -> plt.Axes:
    """Images above their reconstructions: for each block of ``ncol`` images, a row of originals
    then a row of reconstructions, in one grid. Returns the Axes."""
    blocks = []
    for i in range(0, len(x), ncol):
        a, b = x[i : i + ncol], x_hat[i : i + ncol]
        pad = ncol - len(a)
        if pad:  # blank (white) tiles complete the last block
            a, b = (torch.cat([t, torch.ones(pad, t.shape[1], dtype=t.dtype)]) for t in (a, b))
        blocks += [a, b]
    ax = show_images(torch.cat(blocks), image_shape, nrow=ncol, title=title)
    centre = 2 + image_shape[0] / 2  # the first row of tiles, below the padding
    ax.text(-2, centre, "$x$", ha="right", va="center")
    ax.text(-2, centre + image_shape[0] + 2, r"$\hat x$", ha="right", va="center")
    return ax


def plot_image_rows(
    rows: Mapping[str, torch.Tensor],
    image_shape: Sequence[int],
    titles: Mapping[str, Sequence[str]] | None = None,
    suptitle: str | None = None,
) -> plt.Figure:
    """One row of separate images per entry of ``rows`` (label -> (n, D)), the label at the left,
    and an optional caption above each image (``titles``: label -> n strings). Returns the Figure."""
    n = max(len(v) for v in rows.values())
    row_height = image_shape[0] / image_shape[1] + 0.4  # one inch per image across, plus a caption
    fig, axes = plt.subplots(len(rows), n, figsize=(1.0 * n + 1, row_height * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        images = images.detach().to("cpu", torch.float32).reshape(-1, *image_shape).clamp(0, 1)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c >= len(images):
                ax.set_axis_off()
                continue
            ax.imshow(images[c].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if titles and label in titles:
                ax.set_title(titles[label][c], fontsize=8)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_manifold(
    model: VAE, image_shape: Sequence[int], grid_size: int = 20, ax: plt.Axes | None = None, n_ticks: int = 5
) -> plt.Axes:
    """The paper's Figure 4 for a 2-D latent space: decoder means E[x|z] on :func:`latent_grid`.

    Ticks sit at the centres of some tiles and read the tile's z coordinate. Returns the Axes.
    """
    z = latent_grid(grid_size).to(next(model.parameters()).device)
    grid = image_grid(model.decode(z), image_shape, nrow=grid_size, padding=0)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 8 * image_shape[0] / image_shape[1]))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.grid(False)
    values = latent_grid(grid_size, dim=1)[:, 0]
    picks = np.unique(np.linspace(0, grid_size - 1, min(n_ticks, grid_size)).round().astype(int))
    height, width = image_shape
    ax.set_xticks(width * (picks + 0.5), [f"{values[i]:.2f}" for i in picks])
    ax.set_yticks(height * (picks + 0.5), [f"{values[grid_size - 1 - i]:.2f}" for i in picks])
    ax.set(
        xlabel=r"$z_1 = \Phi^{-1}(u_1)$",
        ylabel=r"$z_2 = \Phi^{-1}(u_2)$",
        title=f"Learned 2-D manifold: decoder means on a {grid_size}x{grid_size} grid",
    )
    return ax


# ----------------------------------------------------------------------------- curves


#: How history_long's curves are drawn: a colour per run, test solid and train dashed, dots at evaluations.
RUN_LINES: dict[str, Any] = dict(
    hue="run", style="split", style_order=["test", "train"], marker="o", markersize=4
)


def plot_elbo_curves(histories: Histories, x: str = "epoch", ax: plt.Axes | None = None) -> plt.Axes:
    """Train (dashed) and test (solid) ELBO of one or several runs.

    ``x="epoch"``, or ``x="samples"``: training datapoints seen, on a log axis, the form of the
    paper's Figure 2. Returns the Axes.
    """
    if x not in ("epoch", "samples"):
        raise ValueError(f"x = {x!r} is invalid: allowed 'epoch' or 'samples'")
    data = history_long(histories)
    data = data[data["term"] == "elbo"]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=data, x=x, y="value", ax=ax, **RUN_LINES)
    if x == "samples":
        ax.set_xscale("log")
        ax.set(
            xlabel="training samples evaluated (log scale)",
            title="Lower bound against training samples seen (the form of Figure 2)",
        )
    else:
        ax.set(xlabel="epoch", title="Lower bound per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"ELBO ({NATS})")
    ax.legend(fontsize=8)
    return ax


def plot_elbo_terms(histories: Histories) -> plt.Figure:
    """The ELBO's two terms per epoch, train (dashed) and test (solid): the expected
    log-likelihood E_q[log p(x|z)] and KL(q(z|x) || p(z)). Returns the Figure."""
    data = history_long(histories)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, term, title in (
        (axes[0], "recon", r"Expected log-likelihood $E_q[\log p(x|z)]$"),
        (axes[1], "kl", r"$KL(q(z|x)\,\|\,p(z))$"),
    ):
        sns.lineplot(data=data[data["term"] == term], x="epoch", y="value", ax=ax, **RUN_LINES)
        ax.set(title=title, xlabel="epoch", ylabel=f"nats ({NATS})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.suptitle("ELBO = expected log-likelihood - KL")
    fig.tight_layout()
    return fig


def plot_generalisation_gap(histories: Histories, ax: plt.Axes | None = None) -> plt.Axes:
    """Train ELBO minus test ELBO per epoch: positive means the model fits its training data
    better than unseen data. Returns the Axes."""
    frames = [
        pd.DataFrame({"run": label, "epoch": h["epoch"], "gap": h["train_elbo"] - h["test_elbo"]})
        for label, h in histories_by_label(histories).items()
    ]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    sns.lineplot(
        data=pd.concat(frames, ignore_index=True),
        x="epoch",
        y="gap",
        hue="run",
        marker="o",
        markersize=4,
        ax=ax,
    )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set(title="Generalisation gap: train ELBO - test ELBO", xlabel="epoch", ylabel=f"gap ({NATS})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return ax


def plot_kl_per_dimension(statistics: Mapping[str, dict]) -> plt.Figure:
    """For each run (label -> :func:`vae_utils.loss.posterior_statistics` output), one row of two
    bar charts per latent dimension d: the average KL(q(z_d|x) || p(z_d)) and the activity
    Var_x E_q[z_d|x] (log scale, with the 0.01 threshold). Active units are coloured. Returns the
    Figure."""
    fig, axes = plt.subplots(len(statistics), 2, figsize=(12, 3.2 * len(statistics)), squeeze=False)
    for (label, stats), (ax_kl, ax_act) in zip(statistics.items(), axes, strict=True):
        kl, activity = stats["kl"].cpu().numpy(), stats["activity"].cpu().numpy()
        active = stats["active"].cpu().numpy()
        dims = np.arange(1, len(kl) + 1)
        colours = np.where(active, "C0", "lightgrey")
        ax_kl.bar(dims, kl, color=colours)
        ax_kl.set(
            xlabel="latent dimension d",
            ylabel=f"KL ({NATS})",
            title=f"{label}: KL per dimension ({int(active.sum())} of {len(kl)} active)",
        )
        ax_act.bar(dims, activity, color=colours)
        ax_act.axhline(ACTIVE_THRESHOLD, color="C3", linestyle="--", label="threshold 0.01")
        ax_act.set_yscale("log")
        ax_act.set(
            xlabel="latent dimension d",
            ylabel=r"Var$_x\,E_q[z_d|x]$",
            title=f"{label}: activity (blue = active)",
        )
        ax_act.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        for ax in (ax_kl, ax_act):
            ax.set_xticks(dims if len(dims) <= 20 else dims[:: max(1, len(dims) // 10)])
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- latent space


def plot_latent_scatter(
    points: torch.Tensor,
    labels: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str = "Posterior means of the test set",
    xlabel: str = r"$z_1$",
    ylabel: str = r"$z_2$",
    box: float | None = None,
) -> plt.Axes:
    """Scatter 2-D points (N, 2), coloured by class when ``labels`` is given (``classes`` names
    them). ``box``: also draw the square [-box, box]^2 (e.g. the span of the Figure 4 grid).
    Returns the Axes."""
    xy = points.detach().cpu().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 6.5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    else:
        names = classes or [str(i) for i in range(int(labels.max()) + 1)]
        hue = [names[i] for i in labels.cpu().tolist()]
        sns.scatterplot(
            x=xy[:, 0],
            y=xy[:, 1],
            hue=hue,
            hue_order=list(names),
            palette="tab10",
            s=8,
            linewidth=0,
            alpha=0.7,
            ax=ax,
        )
        ax.legend(title="class", fontsize=8, markerscale=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    if box is not None:
        ax.add_patch(
            plt.Rectangle(
                (-box, -box),
                2 * box,
                2 * box,
                fill=False,
                linestyle="--",
                color="black",
                linewidth=1,
                label="manifold grid",
            )
        )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return ax


def plot_latent_1d(
    values: torch.Tensor,
    labels: torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str = "Posterior means of the test set (N_z = 1)",
) -> plt.Axes:
    """Histogram of 1-D posterior means (N,) or (N, 1), one step outline per class when
    ``labels`` is given. Returns the Axes."""
    flat = values.detach().cpu().reshape(-1).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4.5))
    if labels is None:
        sns.histplot(x=flat, bins=50, ax=ax)
    else:
        names = classes or [str(i) for i in range(int(labels.max()) + 1)]
        hue = [names[i] for i in labels.cpu().tolist()]
        sns.histplot(
            x=flat,
            hue=hue,
            hue_order=list(names),
            palette="tab10",
            bins=50,
            element="step",
            fill=False,
            ax=ax,
        )
    ax.set(title=title, xlabel=r"$E_q[z_1|x]$", ylabel="test images")
    return ax


def plot_per_class(
    table: pd.DataFrame,
    value: str = "recon",
    classes: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    ylabel: str | None = None,
) -> plt.Axes:
    """Violin plot (with quartiles) of ``table[value]`` per ``table["class"]``, in the order of
    ``classes``. Returns the Axes.

    (A violin rather than seaborn's box plot: with matplotlib >= 3.11 the latter emits a
    deprecation warning, which would break the notebooks' nbval comparison of stderr.)
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.5))
    sns.violinplot(
        data=table,
        x="class",
        y=value,
        order=list(classes) if classes else None,
        inner="quart",
        cut=0,
        density_norm="width",
        linewidth=0.8,
        ax=ax,
    )
    ax.set(xlabel="class", ylabel=ylabel or f"{value} ({NATS})")
    return ax
