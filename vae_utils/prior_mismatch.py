"""Notebook 06's prior draws off the codes: where the aggregate posterior q(z) = 1/N sum_i q(z|x_i)
and the prior p(z) disagree, so that some draws z ~ p(z) land where the decoder saw no code, and
what the decoder makes there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
import torch

from vae_utils.analysis import load_test_data
from vae_utils.figure2 import ALGORITHM_LABELS, DATASET_LABELS
from vae_utils.plotting import plot_image_rows

if TYPE_CHECKING:  # annotations only
    from vae_utils.runfiles import Run


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
