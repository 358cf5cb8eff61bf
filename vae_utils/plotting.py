"""Figures for notebooks 02-05, and the small computations behind them.

Computations (tensors and DataFrames, tested in ``tests/test_plotting.py``)
    image_grid, unit_square_points, latent_grid, pca_project, interpolate, history_long, run_labels
Tables and captions
    load_test_data, config_table, metrics_table, describe_regime, likelihood_summary
Figures (each returns its matplotlib Axes or Figure)
    show_images, plot_reconstructions, plot_image_rows, plot_elbo_curves, plot_elbo_terms,
    plot_generalisation_gap, plot_kl_per_dimension, plot_latent_scatter, plot_latent_1d,
    plot_manifold, plot_per_class

Every number on an axis is in nats per datapoint (log densities summed over pixels and latent
dimensions, averaged over datapoints), as in :mod:`vae_utils.loss`. Images are the decoder's
*means* E[x|z] unless a caption says otherwise; a Gaussian decoder's mean can leave [0, 1], so
images are clipped to [0, 1] for display only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

from vae_utils.config import PLACEMENT_FIELDS, TrainConfig

if TYPE_CHECKING:  # annotations only: the functions that need these modules import them when called
    from vae_utils.data import Data
    from vae_utils.loss import LatentVariableModel
    from vae_utils.model import VAE
    from vae_utils.runfiles import Run

#: One run's training history (``history.csv``), or several by label.
Histories = pd.DataFrame | Mapping[str, pd.DataFrame]

NATS = "nats per datapoint"
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2015): a unit is active when Var_x E_q[z_d|x] > 0.01


def set_style() -> None:
    """The notebooks' common look: seaborn's white grid, a readable font size."""
    sns.set_theme(style="whitegrid", context="notebook")


# ----------------------------------------------------------------------------- computations


def image_grid(
    images: torch.Tensor, image_shape: Sequence[int], nrow: int = 10, padding: int = 2, pad_value: float = 0.5
) -> torch.Tensor:
    """Tile flat images (N, D) into one (H', W') grey image, ``nrow`` images per row.

    Uses ``torchvision.utils.make_grid``: H' = rows (H + padding) + padding, likewise W'. Values
    are clipped to [0, 1].
    """
    from torchvision.utils import make_grid

    images = images.detach().to("cpu", torch.float32).reshape(-1, 1, *image_shape).clamp(0, 1)
    return make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)[0]


def unit_square_points(n: int) -> torch.Tensor:
    """n evenly spaced points in the open interval (0, 1): i / (n + 1) for i = 1..n.

    0 and 1 are left out because the inverse Gaussian CDF maps them to -inf and +inf.
    """
    return torch.linspace(0.0, 1.0, n + 2, dtype=torch.float64)[1:-1].float()


def latent_grid(grid_size: int, dim: int = 2) -> torch.Tensor:
    """The paper's Figure 4 coordinates: evenly spaced points of the unit square mapped through
    the inverse Gaussian CDF, z = Phi^{-1}(u), so that they are equally probable under p(z).

    ``dim=2``: (grid_size^2, 2) in reading order for :func:`image_grid` with ``nrow=grid_size``:
    z_1 grows from left to right along a row, z_2 shrinks from the top row to the bottom one (as
    on a plot's axes). ``dim=1``: (grid_size, 1), growing.
    """
    if dim not in (1, 2):
        raise ValueError(f"dim = {dim!r} is invalid: allowed 1 or 2")
    z = torch.distributions.Normal(0.0, 1.0).icdf(unit_square_points(grid_size))
    if dim == 1:
        return z[:, None]
    z2, z1 = torch.meshgrid(z.flip(0), z, indexing="ij")
    return torch.stack([z1, z2], dim=-1).reshape(-1, 2)


def pca_project(x: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the rows of ``x`` (N, d) onto their first k principal components.

    Exact PCA by ``torch.linalg.svd`` of the centred data (not the randomised ``pca_lowrank``, so
    the result is reproducible). Each component's sign is fixed so that its largest loading is
    positive. Returns the projection (N, k), whose columns have decreasing variance, and the
    fraction of the total variance each component explains (k,).
    """
    x = x.detach().double()
    centred = x - x.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:k]
    biggest = components.abs().argmax(dim=1, keepdim=True)
    components = components * torch.sign(components.gather(1, biggest))
    variance = s.pow(2)
    return (centred @ components.T).float(), (variance[:k] / variance.sum()).float()


def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """``steps`` points on the straight line from z_a to z_b, both ends included: (steps, N_z)."""
    t = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    return (1 - t) * z_a + t * z_b


def _as_dict(histories: Histories) -> Mapping[str, pd.DataFrame]:
    return histories if isinstance(histories, Mapping) else {"run": histories}


def history_long(histories: Histories) -> pd.DataFrame:
    """Training histories in long form for seaborn: columns run, epoch, samples, split, term, value.

    ``histories`` is one history DataFrame (as in ``history.csv``) or a dict label -> history.
    ``term`` is elbo, recon or kl; ``split`` is train or test.
    """
    frames = []
    for label, history in _as_dict(histories).items():
        for split in ("train", "test"):
            for term in ("elbo", "recon", "kl"):
                frames.append(
                    pd.DataFrame(
                        {
                            "run": label,
                            "epoch": history["epoch"],
                            "samples": history["samples"],
                            "split": split,
                            "term": term,
                            "value": history[f"{split}_{term}"],
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


def run_labels(configs: Sequence[TrainConfig]) -> list[str]:
    """Short legend labels: the configuration fields in which the runs differ ("latent_dim=5"),
    or the configuration's name for a single run. Paths and the device are not compared."""
    if len(configs) == 1:
        return [configs[0].name]
    dicts = [c.to_dict() for c in configs]
    differ = [k for k in dicts[0] if k not in PLACEMENT_FIELDS and len({repr(d[k]) for d in dicts}) > 1]
    labels = [", ".join(f"{k}={d[k]}" for k in differ) for d in dicts]
    if not differ or len(set(labels)) < len(labels):
        labels = [str(c.run_dir) for c in configs]
    return labels


# ----------------------------------------------------------------------------- tables


def load_test_data(configs: Sequence[TrainConfig]) -> list:
    """The test split each run was evaluated on (name, data_dir, binarisation and test subset from
    its saved config), on the CPU, without the training split (``x_train`` is None): the same test
    images as the run saw, in a fraction of the memory. A test set shared by several runs is loaded
    once."""
    from vae_utils.data import load_config_data

    loaded, out = {}, []
    for c in configs:
        key = (c.dataset, c.data_dir, c.binarize, c.test_subset)
        if key not in loaded:
            loaded[key] = load_config_data(c, train=False)
        out.append(loaded[key])
    return out


def config_table(configs: Mapping[str, TrainConfig]) -> pd.DataFrame:
    """The saved configurations side by side: one row per TrainConfig field, one column per run."""
    return pd.DataFrame({label: {k: repr(v) for k, v in c.to_dict().items()} for label, c in configs.items()})


def metrics_table(row: pd.Series) -> pd.DataFrame:
    """One history row (e.g. ``Run.final``) as a train/test x ELBO/expected log-likelihood/KL
    table, in nats per datapoint, rounded to 2 decimals."""
    names = {"elbo": "ELBO", "recon": "E_q[log p(x|z)]", "kl": "KL(q || p)"}
    return pd.DataFrame(
        {
            split: {name: float(row[f"{split}_{term}"]) for term, name in names.items()}
            for split in ("train", "test")
        }
    ).T.round(2)


def describe_regime(config: TrainConfig) -> str:
    """Which published numbers a run's log-likelihoods may be compared with (see NOTES: numbers
    are comparable only within one data regime)."""
    if config.decoder == "gaussian":
        return (
            "Gaussian decoder: a log *density* of continuous pixel values; it can be positive "
            "and is not comparable with any Bernoulli (discrete) log-likelihood."
        )
    if config.decoder == "continuous_bernoulli":
        return (
            "Continuous Bernoulli decoder: a normalised log *density* of grey pixel values on "
            "[0, 1], comparable with the Gaussian decoder's density on the same data, not with "
            "any Bernoulli (discrete) log-likelihood."
        )
    return {
        "none": (
            "Bernoulli decoder on grey levels (binarize='none'), the paper's own regime "
            "(Figure 2): a cross-entropy against grey pixels, not the log-probability of "
            "binary images, so not comparable with Burda et al.'s binarised numbers."
        ),
        "dynamic": (
            "Bernoulli decoder on dynamically binarised images: Burda et al.'s regime "
            "(their VAE with 50 latents and two hidden layers: log p(x) = -86.76 nats)."
        ),
        "static": (
            "Bernoulli decoder on one fixed binarisation: models score about 2 nats worse "
            "here than with dynamic binarisation, and overfit more (Burda et al.)."
        ),
    }[config.binarize]


def likelihood_summary(
    model: LatentVariableModel, x: torch.Tensor, k: int, seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """On the same images ``x``: the ELBO (analytic KL, one sample), the importance-weighted
    estimate of log p(x) with k samples (Burda et al.), and their gap, averaged over ``x`` in
    nats per datapoint. The gap estimates the average KL(q(z|x) || p(z|x)) left by the encoder."""
    from vae_utils.loss import evaluate, importance_weighted_log_likelihood

    bound = evaluate(model, x, n_samples=1, kl="analytic", seed=seed)["elbo"]
    log_px = float(importance_weighted_log_likelihood(model, x, k=k, seed=seed, progress=progress).mean())
    return {"images": len(x), "ELBO": bound, f"log p(x), k={k}": log_px, "log p(x) - ELBO": log_px - bound}


#: Where :func:`cached_likelihood_summary` keeps a run's estimates, in the run's folder.
LIKELIHOOD_CACHE = "likelihood_cache.json"


def cached_likelihood_summary(
    run: Run, x: torch.Tensor, k: int, seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """:func:`likelihood_summary` of ``run.model``, kept in ``run.path / LIKELIHOOD_CACHE`` under a
    SHA-256 of the model's parameters, the images ``x``, k and seed: executing notebook 07 again
    reads its k = 5000 estimates back (5 minutes per run on 2 cores) instead of recomputing them.
    A different checkpoint, test set or k is a different key; a folder that cannot be written is
    simply not cached."""
    import hashlib
    import json

    from vae_utils.runfiles import atomic_write_text

    digest = hashlib.sha256(f"k={k} seed={seed} x={tuple(x.shape)}".encode())
    for name, tensor in [*run.model.state_dict().items(), ("x", x)]:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    key = digest.hexdigest()
    path = Path(run.path) / LIKELIHOOD_CACHE
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key not in cache:
        cache[key] = likelihood_summary(run.model, x, k, seed=seed, progress=progress)
        try:
            atomic_write_text(path, json.dumps(cache, indent=1))
        except OSError:
            pass
    return cache[key]


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
        for label, h in _as_dict(histories).items()
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


# ----------------------------------------------------------------------------- Figure 2

ALGORITHM_LABELS = {"aevb": "AEVB", "wake_sleep": "wake-sleep"}
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "frey_face": "Frey Face"}
#: The label of the best bound of a model whose decoder ignores z (:func:`figure2_baselines`).
Z_IGNORED = "z ignored (test)"
#: Below this test KL term (nats), a run's latent code carries next to nothing.
UNUSED_CODE_KL = 0.1

#: The y ranges of the paper's Figure 2 panels, to say where our numbers sit.
PAPER_FIGURE2_YRANGE = {"mnist": (-150.0, -100.0), "frey_face": (0.0, 1600.0)}


def figure2_protocol(runs: Mapping[str, Run]) -> pd.DataFrame:
    """What each run of a Figure 2 sweep was: its model, initialisation, weight decay, the step size
    its pilot chose, and how far it trained. One row per (dataset, N_z, algorithm)."""
    rows = [
        {
            "dataset": r.config.dataset,
            "N_z": r.config.latent_dim,
            "algorithm": r.config.algorithm,
            "hidden": r.config.hidden_dim,
            "decoder": r.config.decoder,
            "init": r.config.init,
            "weight decay": f"1/{round(1 / r.config.weight_decay)}" if r.config.weight_decay else "0",
            "step size (pilot's choice)": r.lr,
            "epochs": r.epoch,
            "training samples": int(r.history["samples"].iloc[-1]),
        }
        for r in runs.values()
    ]
    index = ["dataset", "N_z", "algorithm"]
    return pd.DataFrame(rows).sort_values(index).set_index(index)


def figure2_histories(points: pd.DataFrame) -> pd.DataFrame:
    """The histories of a sweep's points in long form: dataset, latent_dim, algorithm, epoch,
    samples, split (train/test), elbo and its KL term. ``points`` has one row per run with its
    ``run_dir`` and the TrainConfig fields ``dataset``, ``latent_dim`` and ``algorithm`` (as
    ``sweep.load_sweep`` gives)."""
    frames = []
    for point in points.itertuples():
        history = pd.read_csv(f"{point.run_dir}/history.csv")
        for split in ("train", "test"):
            frames.append(
                pd.DataFrame(
                    {
                        "dataset": point.dataset,
                        "latent_dim": point.latent_dim,
                        "algorithm": point.algorithm,
                        "epoch": history["epoch"],
                        "samples": history["samples"],
                        "split": split,
                        "elbo": history[f"{split}_elbo"],
                        "kl": history[f"{split}_kl"],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def figure2_baselines(points: pd.DataFrame) -> pd.DataFrame:
    """Per dataset of ``points``, the lower bound of the best model that ignores z
    (:func:`vae_utils.loss.factorised_log_likelihood` with the runs' decoder, fitted to the whole
    training set): on the images of the runs' training curve (``x_train_eval``) and on the test set,
    nats per datapoint. Index: dataset; columns: train, test."""
    from vae_utils.data import load_dataset
    from vae_utils.loss import factorised_log_likelihood

    rows = {}
    for row in points.drop_duplicates("dataset").itertuples():
        data = load_dataset(row.dataset, row.data_dir, binarize=row.binarize)
        assert data.x_train is not None and data.x_train_eval is not None  # loaded with train=True
        rows[row.dataset] = {
            split: factorised_log_likelihood(data.x_train, x, row.decoder, row.min_logvar).mean().item()
            for split, x in (("train", data.x_train_eval), ("test", data.x_test))
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("dataset")


def _panels(long: pd.DataFrame) -> list[tuple[str, int]]:
    order = {name: i for i, name in enumerate(DATASET_LABELS)}
    pairs = long[["dataset", "latent_dim"]].drop_duplicates().itertuples(index=False)
    return sorted(((d, int(z)) for d, z in pairs), key=lambda p: (order.get(p[0], 99), p[1]))


def plot_figure2(
    long: pd.DataFrame, baselines: pd.DataFrame | None = None, columns: int | None = None
) -> plt.Figure:
    """The paper's Figure 2: one panel per (dataset, N_z), the lower bound per datapoint against
    training samples evaluated on a log axis, AEVB and wake-sleep, test solid and train dashed.
    ``long`` is :func:`figure2_histories`'s table; ``baselines`` (:func:`figure2_baselines`) adds a
    grey dotted line at the test bound of the best model that ignores z, where it falls inside a
    panel's y range. Returns the Figure."""
    panels = _panels(long)
    datasets = list(dict.fromkeys(d for d, _ in panels))
    columns = columns or max(sum(d == name for d, _ in panels) for name in datasets)
    fig, axes = plt.subplots(
        len(datasets), columns, figsize=(3.2 * columns, 3.0 * len(datasets)), squeeze=False
    )
    colours = {"aevb": "C3", "wake_sleep": "C0"}
    for r, name in enumerate(datasets):
        zs = [z for d, z in panels if d == name]
        for c, ax in enumerate(axes[r]):
            if c >= len(zs):
                ax.set_axis_off()
                continue
            panel = long[(long["dataset"] == name) & (long["latent_dim"] == zs[c])]
            for (algorithm, split), curve in panel.groupby(["algorithm", "split"], sort=False):
                ax.plot(
                    curve["samples"],
                    curve["elbo"],
                    color=colours.get(algorithm, "C2"),
                    linestyle="-" if split == "test" else "--",
                    linewidth=1.4,
                    label=f"{ALGORITHM_LABELS.get(algorithm, algorithm)} {split}",
                )
            ax.set_xscale("log")
            ax.set_title(f"{DATASET_LABELS.get(name, name)}, $N_z = {zs[c]}$", fontsize=10)
            ax.set_xlabel("training samples evaluated", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"lower bound ({NATS})", fontsize=9)
            _zoom_to_the_end(ax, panel)
            if baselines is not None and name in baselines.index:
                ax.axhline(
                    baselines.loc[name, "test"], color="0.45", linestyle=":", linewidth=1.2, label=Z_IGNORED
                )
    handles: dict = {}
    for ax in axes.flat:  # every label once, whichever panels show it
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower right", fontsize=9, frameon=True)
    fig.suptitle("Figure 2: AEVB against wake-sleep (test solid, train dashed)")
    fig.tight_layout()
    return fig


def _zoom_to_the_end(ax: plt.Axes, panel: pd.DataFrame) -> None:
    """y limits that show the curves once they have left their first, very low, values: from a
    little below the lowest value in the last 90 % (on the log axis) of the run to above the top."""
    low_x = panel["samples"].min() * (panel["samples"].max() / panel["samples"].min()) ** 0.1
    late = panel.loc[panel["samples"] >= low_x, "elbo"]
    top, bottom = panel["elbo"].max(), late.min()
    margin = 0.08 * (top - bottom) + 1e-9
    ax.set_ylim(bottom - margin, top + margin)


def figure2_table(long: pd.DataFrame, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per panel, at the end of the budget (each run's last evaluation): the train and test
    bounds of AEVB and wake-sleep, each algorithm's train - test gap (overfitting) and test KL term
    (the nats its latent code carries), AEVB's lead on the test set, and the training samples AEVB
    needed to reach wake-sleep's final test bound; with ``baselines``, the test bound of the best
    model that ignores z."""
    rows = []
    for name, z in _panels(long):
        panel = long[(long["dataset"] == name) & (long["latent_dim"] == z)]
        row: dict = {"dataset": DATASET_LABELS.get(name, name), "N_z": z}
        for algorithm, label in (("aevb", "AEVB"), ("wake_sleep", "WS")):
            runs = panel[panel["algorithm"] == algorithm]
            if runs.empty:
                continue
            last = runs[runs["samples"] == runs["samples"].max()].set_index("split")
            row.update(
                {
                    "samples": int(runs["samples"].max()),
                    f"{label} train": last.loc["train", "elbo"],
                    f"{label} test": last.loc["test", "elbo"],
                    f"{label} gap": last.loc["train", "elbo"] - last.loc["test", "elbo"],
                    f"{label} KL": last.loc["test", "kl"],
                }
            )
        if "AEVB test" in row and "WS test" in row:
            row["AEVB - WS (test)"] = row["AEVB test"] - row["WS test"]
            aevb = panel[(panel["algorithm"] == "aevb") & (panel["split"] == "test")]
            reached = aevb.loc[aevb["elbo"] >= row["WS test"], "samples"]
            row["AEVB reaches WS's final test bound at"] = int(reached.min()) if len(reached) else None
        if baselines is not None and name in baselines.index:
            row[Z_IGNORED] = baselines.loc[name, "test"]
        rows.append(row)
    table = pd.DataFrame(rows).set_index(["dataset", "N_z"]).round(2)
    for column in ("samples", "AEVB reaches WS's final test bound at"):
        if column in table:
            table[column] = table[column].astype("Int64")  # 2500, not 2500.0; <NA> when never
    return table


def figure2_claims(table: pd.DataFrame) -> str:
    """The paper's claims about Figure 2, checked against :func:`figure2_table`: one line each."""
    if "AEVB - WS (test)" not in table:
        return "Both algorithms are needed in every panel to check the paper's claims."
    lines = []
    both = table[table["AEVB - WS (test)"].notna()]
    missing = [f"{d} N_z = {z}" for d, z in table.index.difference(both.index)]
    if missing:
        lines.append(f"- Panels with one algorithm only, left out of the comparisons: {', '.join(missing)}.")
    if both.empty:
        return "\n".join(lines)
    lead = both["AEVB - WS (test)"]
    ahead = lead > 0
    lines.append(
        f"- AEVB ends higher (test bound at the end of the budget) in {int(ahead.sum())} of "
        f"{len(both)} panels"
        + (
            "."
            if ahead.all()
            else ": not in " + ", ".join(f"{d} N_z = {z}" for d, z in lead[~ahead].index) + "."
        )
    )
    lines.append(f"  Its lead ranges from {lead.min():.1f} to {lead.max():.1f} nats per datapoint.")
    reach = both["AEVB reaches WS's final test bound at"]
    fraction = reach / both["samples"]
    faster = fraction.notna() & (fraction < 1)
    if faster.any():
        low, high = f"{fraction[faster].min():.1%}", f"{fraction[faster].max():.1%}"
        lines.append(
            f"- AEVB converges faster: in {int(faster.sum())} of {len(both)} panels it reaches "
            "wake-sleep's final test bound before the end of the budget, after "
            f"{low if low == high else f'{low} to {high}'} of the training samples."
        )
    else:
        lines.append(
            "- AEVB converges faster: in no panel does AEVB reach wake-sleep's final test bound "
            "before the end of the budget."
        )
    unused = []
    for algorithm, label in (("aevb", "AEVB"), ("wake_sleep", "WS")):
        if f"{label} KL" not in table:
            continue
        for (d, z), row in zip(table.index, table.to_dict("records"), strict=True):
            if row[f"{label} KL"] < UNUSED_CODE_KL:
                distance = row[f"{label} test"] - row.get(Z_IGNORED, float("nan"))
                unused.append(
                    f"{ALGORITHM_LABELS[algorithm]} in {d} N_z = {z}"
                    + (
                        f" (its test bound {distance:+.1f} nats from the best model that ignores z)"
                        if Z_IGNORED in row
                        else ""
                    )
                )
    lines.append(
        f"- Latent code unused at the end (test KL term below {UNUSED_CODE_KL} nats): "
        + ("; ".join(unused) if unused else "in no run")
        + "."
    )
    for name, group in table.groupby(level="dataset", sort=False):
        gaps = group["AEVB gap"]
        zs = group.index.get_level_values("N_z")
        trend = np.corrcoef(np.log(zs), gaps)[0, 1] if len(group) > 2 else float("nan")
        lines.append(
            f"- Overfitting against N_z ({name}): AEVB's train - test gap is "
            + ", ".join(f"{g:.1f} (N_z = {z})" for z, g in zip(zs, gaps, strict=True))
            + (f"; its correlation with log N_z is {trend:+.2f}." if np.isfinite(trend) else ".")
        )
    return "\n".join(lines)


def figure2_axes(table: pd.DataFrame) -> str:
    """Where :func:`figure2_table`'s final test bounds sit against the y ranges of the paper's
    Figure 2 panels: one line per dataset and algorithm."""
    final = table.reset_index()
    lines = []
    for dataset, (low, high) in PAPER_FIGURE2_YRANGE.items():
        name = DATASET_LABELS[dataset]
        rows = final[final["dataset"] == name]
        for label in ("AEVB", "WS"):
            if f"{label} test" in rows and rows[f"{label} test"].notna().any():
                values = rows[f"{label} test"].dropna()
                lines.append(
                    f"{name:<9} {label:<4} final test bounds {values.min():8.1f} .. {values.max():8.1f}"
                    f"   (paper's axis {low:g} .. {high:g})"
                )
    return "\n".join(lines)


@torch.no_grad()
def plot_figure5(
    points: pd.DataFrame, runs: Mapping[str, Run], seed: int = 0, n: int = 10
) -> list[plt.Figure]:
    """The paper's Figure 5, one figure per dataset: decoder means E[x|z] of ``n`` draws z ~ p(z)
    (seeded with ``seed``, the same for every row) from each AEVB model, one row per N_z.
    ``runs`` maps each point of ``points`` to its loaded run."""
    from vae_utils.data import IMAGE_SHAPES

    figures = []
    for dataset in points["dataset"].unique():
        chosen = points[(points["dataset"] == dataset) & (points["algorithm"] == "aevb")]
        rows = {}
        for p in chosen.sort_values("latent_dim").itertuples():
            model = runs[p.point].model
            rows[f"N_z = {p.latent_dim}"] = model.decode(
                model.sample_prior(n, torch.Generator().manual_seed(seed))
            )
        if rows:
            title = f"{DATASET_LABELS.get(dataset, dataset)}: decoder means of {n} draws z ~ p(z), AEVB"
            figures.append(plot_image_rows(rows, IMAGE_SHAPES[dataset], suptitle=title))
    return figures


@torch.no_grad()
def prior_mismatch_table(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Where p(z) and the codes disagree: for each run (point -> run), on its test images, the latent
    unit whose aggregate posterior q(z_j) (:func:`vae_utils.loss.posterior_statistics`) is furthest
    from the prior N(0, 1) by KL, its mean and variance, and the share (0 to 1) of prior draws
    z_j ~ N(0, 1) that fall more than 3 standard deviations of q(z_j) from its mean, where hardly
    any code lies and the decoder was never trained. Also the active units and the KL summed over
    all units."""
    from vae_utils.loss import posterior_statistics

    data = load_test_data([r.config for r in runs.values()])
    normal = torch.distributions.Normal(0.0, 1.0)
    rows = []
    for (point, run), d in zip(runs.items(), data, strict=True):
        stats = posterior_statistics(run.model, d.x_test)
        j = int(stats["aggregate_kl"].argmax())
        mean, sd = stats["aggregate_mean"][j], stats["aggregate_var"][j].sqrt()
        outside = normal.cdf(mean - 3 * sd) + 1 - normal.cdf(mean + 3 * sd)
        rows.append(
            {
                "point": point,
                "dataset": DATASET_LABELS.get(run.config.dataset, run.config.dataset),
                "N_z": run.config.latent_dim,
                "algorithm": ALGORITHM_LABELS.get(run.config.algorithm, run.config.algorithm),
                "active units": int(stats["active"].sum()),
                "KL(q(z) || p(z)), all units": round(float(stats["aggregate_kl"].sum()), 2),
                "unit j furthest from p": j,
                "q(z_j) mean": round(float(mean), 2),
                "q(z_j) variance": round(float(sd**2), 2),
                "KL(q(z_j) || p(z_j))": round(float(stats["aggregate_kl"][j]), 3),
                "prior draws off the codes": round(float(outside), 3),
            }
        )
    return pd.DataFrame(rows).set_index("point")


@torch.no_grad()
def plot_unit_traverse(
    run: Run, unit: int, values: Sequence[float] = (-2, -1, 0, 1, 2), n: int = 8, seed: int = 0
) -> plt.Figure:
    """Decoder means of ``n`` prior draws z ~ p(z) (seeded with ``seed``), one row per value that
    latent unit ``unit`` is set to: what the decoder makes of each region of that unit."""
    from vae_utils.data import IMAGE_SHAPES

    model = run.model
    z = model.sample_prior(n, torch.Generator().manual_seed(seed))
    rows = {}
    for v in values:
        z[:, unit] = v
        rows[f"z_{unit} = {v:g}"] = model.decode(z)
    name = DATASET_LABELS.get(run.config.dataset, run.config.dataset)
    title = f"{name}, N_z = {run.config.latent_dim}: {n} draws z ~ p(z) with unit {unit} set"
    return plot_image_rows(rows, IMAGE_SHAPES[run.config.dataset], suptitle=title)


def _most_off_the_codes(mismatch: pd.DataFrame) -> list[pd.Series]:
    """Per dataset of :func:`prior_mismatch_table`, its row with the most prior draws off the codes."""
    return [
        rows.sort_values("prior draws off the codes").iloc[-1]
        for _, rows in mismatch.groupby("dataset", sort=False)
    ]


def prior_mismatch_summary(mismatch: pd.DataFrame) -> str:
    """One line per dataset of :func:`prior_mismatch_table`: its run with the largest share of
    prior draws off the codes, which unit, and the moments of that unit's codes."""
    lines = []
    for worst in _most_off_the_codes(mismatch):
        lines.append(
            f"{worst['dataset']}, N_z = {worst['N_z']}, {worst['algorithm']}: the codes of unit "
            f"{worst['unit j furthest from p']} have mean {worst['q(z_j) mean']:.2f} and variance "
            f"{worst['q(z_j) variance']:.2f}, so {worst['prior draws off the codes']:.1%} of the draws "
            "z ~ p(z) fall more than 3 of their standard deviations away"
        )
    return "\n".join(lines)


def plot_unit_traverses(runs: Mapping[str, Run], mismatch: pd.DataFrame, seed: int = 0) -> list[plt.Figure]:
    """For each dataset, the run of ``mismatch`` (:func:`prior_mismatch_table`) with the largest
    share of prior draws off its codes, traversed along that unit (:func:`plot_unit_traverse`)."""
    return [
        plot_unit_traverse(runs[str(worst.name)], int(worst["unit j furthest from p"]), seed=seed)
        for worst in _most_off_the_codes(mismatch)
    ]


def plot_figure4a(points: pd.DataFrame, runs: Mapping[str, Run], grid_size: int = 12) -> plt.Axes | None:
    """The paper's Figure 4(a): the Frey Face manifold of the AEVB run with N_z = 2 among
    ``points`` (:func:`plot_manifold`), or None when there is no such run."""
    from vae_utils.data import IMAGE_SHAPES

    chosen = points[
        (points["dataset"] == "frey_face") & (points["latent_dim"] == 2) & (points["algorithm"] == "aevb")
    ]
    if chosen.empty:
        return None
    _, ax = plt.subplots(figsize=(5.5, 7))
    return plot_manifold(runs[chosen["point"].iloc[0]].model, IMAGE_SHAPES["frey_face"], grid_size, ax=ax)


# ----------------------------------------------------------------------------- likelihoods (07)

#: Burda, Grosse & Salakhutdinov (2015), Table 1, one stochastic layer (50 units, two deterministic
#: layers of 200 tanh units), dynamically binarised MNIST, test NLL with k = 5000: -log p(x) in nats.
BURDA_TABLE1 = {"VAE (Burda et al. 2015, Table 1)": 86.76, "IWAE, k = 50 (Burda et al. 2015, Table 1)": 84.78}


def regime_label(config: TrainConfig) -> str:
    """The data regime and likelihood of a run, in a few words: what its nats are nats *of*."""
    if config.decoder == "gaussian":
        return f"grey levels, Gaussian density (log sigma^2 >= {config.min_logvar:g})"
    if config.decoder == "continuous_bernoulli":
        return "grey levels, continuous Bernoulli density"
    return {
        "none": "grey levels as Bernoulli probabilities (not a likelihood)",
        "dynamic": "dynamically binarised",
        "static": "statically binarised",
    }[config.binarize]


def likelihood_label(config: TrainConfig) -> str:
    """A short name for a run of notebook 07: "VAE, dynamic binarisation", "continuous Bernoulli"..."""
    if config.binarize != "none":
        return f"VAE, {config.binarize} binarisation"
    return {
        "bernoulli": "Bernoulli on grey levels",
        "continuous_bernoulli": "continuous Bernoulli",
        "gaussian": "Gaussian",
    }[config.decoder]


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


def literature_table(ours: pd.DataFrame, grey: pd.Series | None = None) -> pd.DataFrame:
    """Our binarised-MNIST NLLs beside Burda et al.'s Table 1, and (marked as not comparable) our
    grey-level Bernoulli number: columns NLL, regime, comparable with Table 1."""
    rows = [
        {
            "model": name,
            "regime": "dynamically binarised",
            "NLL": value,
            "compares with Table 1": "it is Table 1",
        }
        for name, value in BURDA_TABLE1.items()
    ]
    for label, row in ours.iterrows():
        note = {
            "dynamically binarised": "yes: same regime",
            "statically binarised": "roughly: expect ~2 nats worse (Burda et al.)",
        }.get(row["regime"], "no")
        rows.append(
            {
                "model": f"ours: {label}",
                "regime": row["regime"],
                "NLL": row["NLL"],
                "compares with Table 1": note,
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


def decoder_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`likelihood_table`'s rows for the grey-level decoders, with what each number may be
    compared with: the two densities on [0, 1]^D with each other, the grey Bernoulli with nothing
    but other grey-level Bernoulli numbers."""
    out = table[["regime", "test ELBO"] + [str(c) for c in table if str(c).startswith("log p(x)")]].copy()
    out["comparable with"] = [
        "the other densities on [0, 1]^D (continuous Bernoulli, Gaussian)"
        if "density" in r
        else "grey-level Bernoulli numbers only (Figure 2)"
        for r in out["regime"]
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


def decoder_recommendation(table: pd.DataFrame, by_pixel: pd.DataFrame | None = None) -> str:
    """A plain-language recommendation from :func:`likelihood_table`'s grey-level rows, and, with
    ``by_pixel`` (:func:`log_likelihood_by_pixel_value` of the same runs), where the lead of the
    better density comes from."""
    densities = table[table["regime"].str.contains("density")]
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
