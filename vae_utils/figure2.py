"""Notebook 06: the paper's Figure 2 (AEVB against wake-sleep over N_z), its claims checked one by
one, Figure 5's samples and Figure 4(a) for Frey Face (:mod:`vae_utils.prior_mismatch` has the
prior draws that land off the codes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from vae_utils.plotting import NATS, plot_image_rows, plot_manifold

if TYPE_CHECKING:  # annotations only
    from vae_utils.runfiles import Run


ALGORITHM_LABELS = {"aevb": "AEVB", "wake_sleep": "wake-sleep", "mcem": "MCEM"}
#: One colour per algorithm in Figures 2 and 3 (the paper's red for AEVB).
ALGORITHM_COLOURS = {"aevb": "C3", "wake_sleep": "C0", "mcem": "C2"}
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "frey_face": "Frey Face"}
#: The label of the best bound of a model whose decoder ignores z (:func:`figure2_baselines`).
Z_IGNORED = "z ignored (test)"
#: Below this test KL term (nats), a run's latent code carries next to nothing.
UNUSED_CODE_KL = 0.1

#: The y ranges of the paper's Figure 2 panels, to say where our numbers sit.
PAPER_FIGURE2_YRANGE = {"mnist": (-150.0, -100.0), "frey_face": (0.0, 1600.0)}


def figure2_protocol(runs: Mapping[str, Run]) -> pd.DataFrame:
    """What each run of a Figure 2 sweep was: its model, initialisation, weight decay, the step size
    its pilot chose, and how far it trained. One row per (dataset, N_z, algorithm); with several
    seeds, a ``seeds`` column lists them and a column whose value differs between them lists each
    seed's, in the same order (the pilot's step sizes, say)."""
    rows = [
        {
            "dataset": r.config.dataset,
            "N_z": r.config.latent_dim,
            "algorithm": r.config.algorithm,
            "seed": r.config.seed,
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
    table = pd.DataFrame(rows).sort_values([*index, "seed"])

    def one(values: pd.Series) -> object:  # the value all seeds share, else each seed's
        return (
            values.iloc[0]
            if values.nunique() == 1
            else ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        )

    grouped = table.groupby(index, sort=False).agg(one)
    return (
        grouped.rename(columns={"seed": "seeds"})
        if table["seed"].nunique() > 1
        else grouped.drop(columns="seed")
    )


def figure2_histories(points: pd.DataFrame) -> pd.DataFrame:
    """The histories of a sweep's points in long form: dataset, latent_dim, algorithm, seed, epoch,
    samples, split (train/test), elbo and its KL term. ``points`` has one row per run with its
    ``run_dir`` and the TrainConfig fields ``dataset``, ``latent_dim`` and ``algorithm`` (as
    ``sweep_table.load_sweep`` gives)."""
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
                        "seed": point.seed,
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


def _panel(long: pd.DataFrame, name: str, z: int) -> pd.DataFrame:
    """The rows of ``long`` (:func:`figure2_histories`) in the panel of dataset ``name`` and N_z = ``z``."""
    return long[(long["dataset"] == name) & (long["latent_dim"] == z)]


def _panels(long: pd.DataFrame) -> list[tuple[str, int]]:
    order = {name: i for i, name in enumerate(DATASET_LABELS)}
    pairs = long[["dataset", "latent_dim"]].drop_duplicates().itertuples(index=False)
    return sorted(((d, int(z)) for d, z in pairs), key=lambda p: (order.get(p[0], 99), p[1]))


def plot_figure2(
    long: pd.DataFrame, baselines: pd.DataFrame | None = None, columns: int | None = None
) -> plt.Figure:
    """The paper's Figure 2: one panel per (dataset, N_z), the lower bound per datapoint against
    training samples evaluated on a log axis, AEVB and wake-sleep, test solid and train dashed;
    with several seeds, each curve is their mean and a band spans their range. ``long`` is
    :func:`figure2_histories`'s table; ``baselines`` (:func:`figure2_baselines`) adds a grey dotted
    line at the test bound of the best model that ignores z, where it falls inside a panel's y
    range. Returns the Figure."""
    panels = _panels(long)
    n_seeds = long["seed"].nunique() if "seed" in long else 1
    datasets = list(dict.fromkeys(d for d, _ in panels))
    columns = columns or max(sum(d == name for d, _ in panels) for name in datasets)
    fig, axes = plt.subplots(
        len(datasets), columns, figsize=(3.2 * columns, 3.0 * len(datasets)), squeeze=False
    )
    for r, name in enumerate(datasets):
        zs = [z for d, z in panels if d == name]
        for c, ax in enumerate(axes[r]):
            if c >= len(zs):
                ax.set_axis_off()
                continue
            panel = long[(long["dataset"] == name) & (long["latent_dim"] == zs[c])]
            for (algorithm, split), curve in panel.groupby(["algorithm", "split"], sort=False):
                seeds = curve.groupby("samples")["elbo"].agg(["mean", "min", "max"])
                colour = ALGORITHM_COLOURS[algorithm]
                ax.plot(
                    seeds.index,
                    seeds["mean"],
                    color=colour,
                    linestyle="-" if split == "test" else "--",
                    linewidth=1.4,
                    label=f"{ALGORITHM_LABELS.get(algorithm, algorithm)} {split}",
                )
                if n_seeds > 1:
                    ax.fill_between(
                        seeds.index, seeds["min"], seeds["max"], color=colour, alpha=0.18, linewidth=0
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
    spread = f"; the mean of {n_seeds} seeds, the band their range" if n_seeds > 1 else ""
    fig.suptitle(f"Figure 2: AEVB against wake-sleep (test solid, train dashed{spread})")
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
    model that ignores z.

    With several seeds (``long``'s ``seed`` column) each number is the mean over the seeds, and the
    table adds how many there are (``seeds``), the spread of the test bounds and of AEVB's gap
    (``... sd``, the seeds' standard deviation), AEVB's smallest lead in any one seed
    (``AEVB - WS (test) min``), and, for the samples AEVB needed, the slowest seed's."""
    seeds = sorted(long["seed"].unique()) if "seed" in long else []
    if len(seeds) <= 1:
        table = _panel_table(long, baselines)
    else:
        stacked = pd.concat([_panel_table(long[long["seed"] == s], baselines) for s in seeds])
        grouped = stacked.groupby(level=["dataset", "N_z"], sort=False)
        table = grouped.mean(numeric_only=True)
        table.insert(0, "seeds", grouped.size())
        reach = "AEVB reaches WS's final test bound at"
        if reach in stacked:  # the slowest seed; never, if one seed never reaches it
            table[reach] = grouped[reach].apply(lambda v: v.max() if v.notna().all() else np.nan)
        for column in ("AEVB test", "WS test", "AEVB gap"):
            if column in stacked:
                table[f"{column} sd"] = grouped[column].std()
        if "AEVB - WS (test)" in stacked:
            table["AEVB - WS (test) min"] = grouped["AEVB - WS (test)"].min()
    table = table.round(2)
    for column in ("seeds", "samples", "AEVB reaches WS's final test bound at"):
        if column in table:
            table[column] = table[column].astype("Int64")  # 2500, not 2500.0; <NA> when never
    return table


def _panel_table(long: pd.DataFrame, baselines: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`figure2_table` of one seed's runs, unrounded."""
    rows = []
    for name, z in _panels(long):
        panel = _panel(long, name, z)
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
    return pd.DataFrame(rows).set_index(["dataset", "N_z"])


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
    seeds = int(both["seeds"].min()) if "seeds" in both else 1
    ahead = (both["AEVB - WS (test) min"] if seeds > 1 else lead) > 0
    lines.append(
        "- AEVB ends higher (test bound at the end of the budget) "
        + (f"in every one of the {seeds} seeds " if seeds > 1 else "")
        + f"in {int(ahead.sum())} of {len(both)} panels"
        + (
            "."
            if ahead.all()
            else ": not in " + ", ".join(f"{d} N_z = {z}" for d, z in lead[~ahead].index) + "."
        )
    )
    lines.append(
        f"  Its lead ranges from {lead.min():.1f} to {lead.max():.1f} nats per datapoint"
        + (
            " (means over the seeds; its smallest in any one seed is "
            f"{both['AEVB - WS (test) min'].min():.1f})."
            if seeds > 1
            else "."
        )
    )
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
        spread = group["AEVB gap sd"] if "AEVB gap sd" in group else None
        lines.append(
            f"- Overfitting against N_z ({name}): AEVB's train - test gap is "
            + ", ".join(
                f"{g:.1f}{f' ± {sd:.1f}' if spread is not None else ''} (N_z = {z})"
                for z, g, sd in zip(zs, gaps, spread if spread is not None else gaps, strict=True)
            )
            + (f"; its correlation with log N_z is {trend:+.2f}." if np.isfinite(trend) else ".")
        )
        if spread is not None and len(group) > 1:
            change = gaps.iloc[-1] - gaps.iloc[0]
            error = float(np.sqrt((spread.iloc[0] ** 2 + spread.iloc[-1] ** 2) / seeds))
            lines.append(
                f"  From N_z = {zs[0]} to {zs[-1]} it changes by {change:+.1f} nats, "
                + ("beyond" if abs(change) > 2 * error else "within")
                + f" twice the standard error of that difference over {seeds} seeds ({2 * error:.1f})."
            )
    return "\n".join(lines)


def z_ignored_exits(
    long: pd.DataFrame, baselines: pd.DataFrame, algorithm: str = "wake_sleep", margin: float = 5.0
) -> str:
    """When the runs of ``algorithm`` left the "z ignored" line (:func:`figure2_baselines`): per panel,
    over the seeds, the training samples after which the test bound stays more than ``margin`` nats
    above the line (its first evaluation when it never was below), and how many seeds never did."""
    lines = []
    for name, z in _panels(long):
        panel = _panel(long, name, z)
        runs = panel[(panel["algorithm"] == algorithm) & (panel["split"] == "test")]
        if name not in baselines.index or runs.empty:
            continue
        exits, never, line = [], 0, float(baselines["test"][name])
        for _, run in runs.sort_values("samples").groupby("seed"):
            below = np.flatnonzero(run["elbo"].to_numpy() <= line + margin)
            if len(below) == len(run):
                never += 1
            else:
                exits.append(int(run["samples"].iloc[below[-1] + 1 if len(below) else 0]))
        n = len(exits) + never
        said = []
        if exits:
            low, high = _power_of_ten(min(exits)), _power_of_ten(max(exits))
            said.append(f"left it after {low}" + (f" to {high}" if high != low else "") + " samples")
            said[-1] += f" in {len(exits)} of {n} seeds" if never else ""
        if never:
            said.append(f"still on it at the end ({_power_of_ten(runs['samples'].max())})")
            said[-1] += f" in {never} of {n} seeds" if n > 1 else ""
        label = f"{ALGORITHM_LABELS.get(algorithm, algorithm)}, {DATASET_LABELS.get(name, name)} N_z = {z}"
        lines.append(f"{label}: " + "; ".join(said))
    return "\n".join(lines)


def _power_of_ten(n: float) -> str:
    """2372160 -> '2.4 × 10⁶' (two significant digits)."""
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')} × 10" + str(int(exponent)).translate(
        str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    )


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


def figure2_results(table: pd.DataFrame) -> list[dict]:
    """Notebook 06's headline (:mod:`vae_utils.results`): per dataset and algorithm, the best final
    test ELBO over N_z, from :func:`figure2_table`."""
    from vae_utils.results import result

    out = []
    for dataset, rows in table.groupby(level="dataset", sort=False):
        for column, algorithm in (("AEVB test", "AEVB"), ("WS test", "wake-sleep")):
            if column in rows and rows[column].notna().any():
                best = rows[column].droplevel("dataset").idxmax()  # the N_z of the best bound
                out.append(
                    result(
                        f"{dataset}: best final test ELBO, {algorithm}",
                        rows[column].max(),
                        "ELBO (estimator B, analytic KL) at the end of the budget, "
                        f"the best over N_z (here N_z = {best})",
                    )
                )
    return out
