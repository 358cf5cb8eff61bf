"""A sweep's table, read back from its folder: one row per point with its configuration and results.
This is what notebooks 06 and 07 read (:func:`finished_points`); it needs no Dask.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vae_utils.config import FIELDS, fail, resolve_path
from vae_utils.runfiles import atomic_write_text, read_json, runs_table

#: Columns of sweep.csv besides the point's name and its axis values.
RESULT_COLUMNS = (
    "status",
    "epoch",
    "samples",
    "train_elbo",
    "test_elbo",
    "best_test_elbo",
    "lr_used",
    "train_seconds",
    "seconds",
    "notebook",
    "error",
)


def _final(point_dir: Path, config: dict) -> dict:
    """The point's results from its files: last history row, best test ELBO, step size used."""
    out: dict = dict.fromkeys(RESULT_COLUMNS[1:])
    record = read_json(point_dir / "point.json")
    out["status"] = record.get("status", "pending")
    out.update({k: record.get(k) for k in ("seconds", "notebook", "error")})
    history_path = point_dir / "history.csv"
    if history_path.is_file():
        history = pd.read_csv(history_path)
        if len(history):
            last = history.iloc[-1]
            out.update(
                epoch=int(last["epoch"]),
                samples=int(last["samples"]),
                train_elbo=float(last["train_elbo"]),
                test_elbo=float(last["test_elbo"]),
                best_test_elbo=float(history["test_elbo"].max()),
                train_seconds=float(last["seconds"]),
            )
    pilot = point_dir / "lr_pilot.csv"
    if pilot.is_file():
        table = pd.read_csv(pilot)
        out["lr_used"] = float(table.loc[table["chosen"], "lr"].iloc[0])
    elif out["epoch"] is not None:
        out["lr_used"] = config.get("lr")
    return out


def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """The sweep read back from disk: one row per point, in grid order.

    Columns: ``point``, ``run_dir`` (the point's folder, absolute), ``status`` (pending: never
    submitted; queued, running, done, failed; interrupted: its LocalCluster was closed under it),
    every TrainConfig field (from the point's config.json, or the planned config before it ran),
    then the results: ``epoch`` and ``samples`` of the last evaluation, ``train_elbo`` and
    ``test_elbo`` there, ``best_test_elbo``, ``lr_used`` (the pilot's choice), ``train_seconds``
    (training and evaluation), ``seconds`` (the notebook's wall time), ``notebook`` and ``error``.
    """
    folder = resolve_path(sweep_dir)
    record = read_json(folder / "sweep.json")
    if not record:
        raise FileNotFoundError(
            f"sweep_dir = {str(sweep_dir)!r} is not a sweep: {folder} has no "
            "sweep.json. Run one with python -m vae_utils.sweep."
        )
    rows = []
    for point, planned in record["points"].items():
        point_dir = folder / "points" / point
        config = {**planned, **read_json(point_dir / "config.json")}
        results = _final(point_dir, config)
        rows.append(
            {
                "point": point,
                "run_dir": str(point_dir),
                "status": results.pop("status"),
                **{f: config.get(f) for f in FIELDS if f != "run_dir"},
                **results,
            }
        )
    columns = ["point", "run_dir", "status", *(f for f in FIELDS if f != "run_dir"), *RESULT_COLUMNS[1:]]
    return pd.DataFrame(rows, columns=columns).astype({"epoch": "Int64", "samples": "Int64"})  # 3, not 3.0


def finished_points(sweep_dir: str | None, run_dirs: list | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The finished runs a notebook analyses (06, 07), and the names of the sweep's unfinished points.

    ``run_dirs`` (a non-empty list of run directories) wins over ``sweep_dir`` (a folder made by
    this module); either way one row per run, as :func:`load_sweep` gives. ``ValueError`` names the
    parameter when neither is usable or when no run has finished."""
    if run_dirs is not None and (not isinstance(run_dirs, list) or not run_dirs):
        fail("run_dirs", run_dirs, "None or a non-empty list of run directories")
    if run_dirs is None and not isinstance(sweep_dir, str):
        fail("sweep_dir", sweep_dir, "a sweep folder (str)")
    points = runs_table(run_dirs) if run_dirs is not None else load_sweep(str(sweep_dir))
    done = points["status"] == "done"
    if not done.any():
        raise ValueError(f"no finished run in {run_dirs or sweep_dir}: nothing to analyse")
    return points[done].reset_index(drop=True), list(points.loc[~done, "point"])


def write_sweep_table(sweep_dir: str | Path) -> pd.DataFrame:
    """Rebuild ``sweep.csv`` from every point's files and write it atomically; return the table.

    Only the client calls it. Being a function of what is on disk, it can never lose a point that
    finished while another was being recorded."""
    folder = resolve_path(sweep_dir)
    full = load_sweep(folder)
    axes = read_json(folder / "sweep.json").get("axes", [])
    table = full[["point", *axes, *RESULT_COLUMNS]]
    atomic_write_text(folder / "sweep.csv", table.to_csv(index=False))
    return table
