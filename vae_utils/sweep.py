"""Sweeps: a grid of training configurations, each point a papermill run of ``02_train.ipynb``,
scheduled as independent tasks on Dask distributed.

From the repository root (``VAE_DATA_DIR`` pointing at the datasets when offline)::

    python -m vae_utils.sweep --preset figure2 --budget cpu       # the paper's Figure 2 grid
    python -m vae_utils.sweep --preset figure2 --budget smoke     # the same grid, a quick check
    python -m vae_utils.sweep --preset likelihoods --budget cpu   # notebook 07's five runs
    python -m vae_utils.sweep --name lr --grid lr=0.01,0.02,0.1 --grid latent_dim=3,10 \\
        --set dataset=mnist --set epochs=5 --set train_subset=1000
    python -m vae_utils.sweep --name mine --grid seed=0,1 --set lr_candidates=0.01:0.02 --budget 1e6
    python -m vae_utils.sweep ... --dry-run                       # list the points, run nothing

``--grid FIELD=V1,V2,...`` adds an axis, ``--set FIELD=VALUE`` fixes a field for every point; any
TrainConfig field works. A value is read as the field's type: ``None`` (any case), ``True`` /
``False``, ints, floats (``1e-3``), a string otherwise; a list of step sizes (``lr_candidates``)
is written with colons, ``0.01:0.02:0.1``, since commas separate a grid's values. A bad value
stops the sweep before anything starts, with TrainConfig's message (field, value, what is allowed).

``--budget`` is the number of training samples per curve: ``paper`` (10^8, as Figure 2: days on a
2-core CPU), ``cpu`` (3*10^6 for MNIST and Fashion-MNIST, 50 epochs; 10^7 for Frey Face, 5,666
epochs of 1,765 faces), ``smoke`` (2*10^4: one epoch of MNIST) or a number. It sets each point's
``epochs`` = ceil(budget / n_train), n_train being the dataset's training size or ``train_subset``.

A sweep lives in ``sweeps/<name>/`` (``--sweeps-dir``; relative paths are taken from the project
root)::

    sweep.json               grid, budget, command line, points and their configs, start/finish times
    sweep.csv                the sweep table: one row per point (axis values, status, final ELBOs,
                             seconds, notebook, error); rebuilt from the files below, by the client only
    points/<point>/          the point's run directory (config.json, history.csv, last.pt, best.pt,
                             lr_pilot.csv) and also
        02_train.ipynb       the executed notebook
        point.json           status (queued, running, done, failed, interrupted), error, notebook, timings

``<point>`` is the configuration's name (``mnist_bernoulli_z3_h500_s0``, ``..._ws`` for wake-sleep)
plus ``_<field>-<value>`` for each grid axis that the name does not already say. Re-running the
same command finishes an interrupted sweep: finished points are skipped without starting a kernel,
unfinished ones resume from their ``last.pt``. A point folder whose config differs from the new
grid stops the sweep before anything starts; ``--overwrite`` deletes the sweep's points first.

Engine. By default a ``LocalCluster`` of ``os.cpu_count() // --threads`` single-threaded worker
processes (``--workers`` to choose), each point's kernel running torch with ``--threads`` threads
(``OMP_NUM_THREADS``), so that workers never oversubscribe the cores; on a machine with a GPU,
``device="auto"`` (or ``--set device=cuda``) lets several points share it. ``--scheduler ADDRESS``
connects to an existing cluster instead: started by hand (``dask scheduler`` on one machine,
``dask worker ADDRESS --nthreads 1`` on each), by dask-jobqueue (Slurm, PBS...) or on Kubernetes.
Its workers must then have this package installed (``pip install -r requirements.txt``), the
datasets where ``VAE_DATA_DIR`` (or ``--set data_dir=...``) says, and the sweeps folder on a shared
filesystem at the same absolute path as the client's. Points are submitted longest first (by
:func:`point_cost`, a step-time model) so that the grid balances across workers.

Progress is one plain line per change, readable headless: ``[ 3/18] <point>  queued``, ``running
at 1.2e6/3.0e6 samples, test ELBO -120.3``, ``done in 6.1 min: test ELBO -101.2``, ``failed:
<notebook>: TrainingDiverged: ...``. The client polls each running point's ``history.csv``
(``--poll`` seconds). The sweep exits 1 if any point failed, listing them; the others go on.

After ``--preset figure2`` finishes with every point done, ``notebooks/06_figure2.ipynb`` is executed
with ``sweep_dir`` into ``reports/figure2/`` and exported as HTML (``--no-report`` skips it); after
``--preset likelihoods``, ``notebooks/07_likelihoods.ipynb`` into ``reports/likelihoods/``. The
presets themselves are in :mod:`vae_utils.presets`; for ``likelihoods`` the budget names (or is) a
number of epochs of Burda et al.'s schedule (``cpu``: 82 of its 3,280).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from vae_utils import presets
from vae_utils.config import ALGORITHMS, PROJECT_ROOT, TrainConfig, check_float, check_int, fail, resolve_path
from vae_utils.data import IMAGE_SHAPES
from vae_utils.presets import (
    BUDGETS,
    budget_epochs,
    budget_samples,
    figure2_configs,  # noqa: F401 (re-exported: sweep.figure2_configs is public)
    n_train,
)
from vae_utils.runfiles import (
    RunLocked,
    atomic_write_text,
    existing_run_files,
    lock_run_dir,
    run_state,
    runs_table,
)
from vae_utils.study import (
    NOTEBOOKS_DIR,
    REPORTS_DIR,
    NotebookFailed,
    StudyError,
    declared_parameters,
    run_notebook,
)

if TYPE_CHECKING:  # annotations only: Dask is imported when a sweep runs
    from distributed import Client, Future, LocalCluster

SWEEPS_DIR = PROJECT_ROOT / "sweeps"
TRAIN_NOTEBOOK = "02_train"
FIGURE2_NOTEBOOK = "06_figure2"
#: What Dask's nannies put in their workers' environment (``distributed.nanny.pre-spawn-environ``)
#: that a point's kernel must not inherit. MALLOC_TRIM_THRESHOLD_ = 65536 makes glibc hand freed
#: memory back to the OS at once and fixes its mmap threshold at 128 kB, so that nearly every
#: tensor a training step allocates is a fresh mmap and its pages fault in again: with it, steps
#: measured 1.5x (MNIST) to 2x (Frey Face) slower on this machine.
KERNEL_ENV_DROPPED = ("MALLOC_TRIM_THRESHOLD_",)
#: Dask settings of the default LocalCluster. A point's task waits minutes to hours on its kernel, so
#: the workers' 10 ms sampling profiler, 1 ms GIL monitor, 0.5 s system monitor and 20 ms event-loop
#: tick only take CPU from the kernels (together about 4 % of a core per process, measured on this
#: machine's sweeps).
QUIET_WORKERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "500ms",
}

FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: The fields that TrainConfig.name already spells out; other axes are added to a point's name.
NAMED_FIELDS = ("dataset", "decoder", "latent_dim", "hidden_dim", "hidden_layers", "seed", "algorithm")

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


class SweepError(RuntimeError):
    """The sweep cannot start: its folder holds points of another grid, or the cluster is unfit."""


@dataclasses.dataclass
class SweepPlan:
    """What a sweep will run; making one validates everything and touches nothing."""

    name: str
    folder: Path
    points: dict[str, TrainConfig]  # point name -> config (run_dir = its folder), in grid order
    axes: list[str]  # the fields that define the grid: its columns in sweep.csv
    grid: dict  # the declared axes (field -> values), empty for a list of configs
    fixed: dict  # the fixed fields of a declared grid
    budget: str | int | float | None
    preset: str | None = None

    def point_dir(self, point: str) -> Path:
        return self.folder / "points" / point


# ----------------------------------------------------------------------------- budgets and presets


def parse_budget(text: str | None) -> str | int | None:
    """``--budget``: a name of :data:`BUDGETS`, or a number of samples (``3e6``) as an int."""
    if text is None or text in BUDGETS:
        return text
    return budget_samples(text, "mnist")


PRESETS = presets.PRESETS
#: Each preset's report: the notebook that analyses its sweep, and where it is written.
REPORTS = {
    "figure2": (FIGURE2_NOTEBOOK, REPORTS_DIR / "figure2"),
    "likelihoods": ("07_likelihoods", REPORTS_DIR / "likelihoods"),
}


# ----------------------------------------------------------------------------- the grid


def parse_value(field: str, text: str) -> Any:
    """A command-line value read as ``field``'s type (see the module docstring). A value that does
    not read as that type is returned as the string, so that TrainConfig reports it."""
    if field not in FIELDS:
        raise ValueError(f"unknown TrainConfig field {field!r}: allowed {list(FIELDS)}")
    hint = typing.get_type_hints(TrainConfig)[field]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        if base is bool:
            return {"true": True, "false": False}[text.lower()]
        if base is int:
            try:
                return int(text)
            except ValueError:
                number = float(text)  # 1e6 is an int; 2.5 stays a float for TrainConfig to refuse
                return int(number) if number.is_integer() else number
        if base is float:
            return float(text)
        if base is list:
            return [float(v) for v in text.split(":")]
    except (KeyError, ValueError):
        return text
    return text


def parse_assignment(text: str, grid: bool) -> tuple[str, Any]:
    """``FIELD=VALUE`` (``--set``) or ``FIELD=V1,V2,...`` (``--grid``: a list of values)."""
    field, sep, values = text.partition("=")
    field = field.strip().replace("-", "_")
    if not sep or not field:
        raise ValueError(
            f"{'--grid' if grid else '--set'} {text!r} is invalid: allowed FIELD=VALUE"
            + (",VALUE..." if grid else "")
        )
    if grid:
        return field, [parse_value(field, v) for v in values.split(",")]
    return field, parse_value(field, values)


def _check_fields(names: Collection[str], what: str) -> None:
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown} in {what}: allowed {list(FIELDS)}")
    if "run_dir" in names:
        raise ValueError(
            "run_dir cannot be set in a sweep: each point's run directory is sweeps/<name>/points/<point>"
        )


def expand_grid(
    grid: Mapping[str, Sequence],
    fixed: Mapping[str, Any] | None = None,
    budget: str | int | float | None = None,
    preset: str | None = None,
) -> list[TrainConfig]:
    """Every combination of the ``grid``'s axes (the first axis varies slowest), with the ``fixed``
    fields, as validated TrainConfigs. A ``budget`` sets each point's epochs from its dataset and
    train_subset; a ``preset`` (``"figure2"``) is the base grid that the axes multiply.

    Raises ``ValueError`` with TrainConfig's message for a bad value, and naming the allowed fields
    for an unknown one, before anything runs.
    """
    fixed = dict(fixed or {})
    _check_fields(grid, "the grid")
    _check_fields(fixed, "the fixed fields")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"field(s) {both} are both a grid axis and fixed: choose one")
    empty = [k for k, v in grid.items() if isinstance(v, (str, bytes)) or len(list(v)) == 0]
    if empty:
        raise ValueError(f"grid axis/axes {empty} need a non-empty list of values")
    if preset is not None and preset not in PRESETS:
        fail("preset", preset, "one of " + ", ".join(repr(p) for p in PRESETS))
    if budget is not None and "epochs" in {*grid, *fixed} and preset is None:
        raise ValueError("epochs and budget both set the training length: give one of them")
    configs = []
    for combo in itertools.product(*(list(v) for v in grid.values())):
        values = {**fixed, **dict(zip(grid, combo, strict=True))}
        if preset is not None:
            configs.extend(PRESETS[preset]("cpu" if budget is None else budget, **values))
            continue
        if budget is not None:
            dataset, subset = values.get("dataset", "mnist"), values.get("train_subset")
            values["epochs"] = budget_epochs(budget, dataset, subset)
        configs.append(TrainConfig(**values))
    return configs


def _slug(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}".replace("e+", "e")
    elif isinstance(value, list):
        text = "+".join(f"{v:g}".replace("e+", "e") for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", text)


def point_names(configs: Sequence[TrainConfig], axes: Sequence[str] = ()) -> list[str]:
    """Short, unique, filesystem-safe names: ``config.name`` plus ``_<field>-<value>`` for each of
    ``axes`` that the name does not say, and for any field that differs between configs that would
    otherwise share a name. Raises ``ValueError`` for duplicate points."""
    groups: dict[str, list[dict]] = {}
    for config in configs:
        groups.setdefault(config.name, []).append(config.to_dict())
    declared = [a for a in axes if a not in NAMED_FIELDS]
    extra = {
        name: [
            f
            for f in FIELDS
            if f in declared
            or (f not in NAMED_FIELDS and f != "run_dir" and len({json.dumps(m[f]) for m in members}) > 1)
        ]
        for name, members in groups.items()
    }
    names = [
        config.name + "".join(f"_{f}-{_slug(getattr(config, f))}" for f in extra[config.name])
        for config in configs
    ]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"the grid holds point {name} twice (points {seen[name] + 1} and {i + 1}): "
                "remove the duplicate"
            )
        seen[name] = i
    return names


def _varying(configs: Sequence[TrainConfig]) -> list[str]:
    dicts = [c.to_dict() for c in configs]
    return [f for f in FIELDS if f != "run_dir" and len({json.dumps(d[f]) for d in dicts}) > 1]


def plan_sweep(
    points: Sequence[TrainConfig] | Mapping[str, Sequence],
    name: str,
    *,
    fixed: Mapping[str, Any] | None = None,
    budget: str | int | float | None = None,
    sweeps_dir: str | Path = SWEEPS_DIR,
    preset: str | None = None,
) -> SweepPlan:
    """Validate a sweep and name its points; nothing is written. ``points`` is a list of TrainConfigs
    or a grid ``{field: values}`` (with ``fixed``, ``budget`` and ``preset`` as in :func:`expand_grid`)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        fail("name", name, "letters, digits, '.', '_' and '-'")
    if isinstance(points, Mapping):
        grid = {k: list(v) for k, v in points.items()}
        configs = expand_grid(grid, fixed, budget, preset)
        axes = [f for f in FIELDS if f in grid or (preset is not None and f in _varying(configs))]
    else:
        if fixed or budget is not None or preset is not None:
            raise ValueError("fixed, budget and preset apply to a grid, not to a list of TrainConfigs")
        grid, configs = {}, list(points)
        bad = [c for c in configs if not isinstance(c, TrainConfig)]
        if bad or not configs:
            raise ValueError(
                f"points = {bad[0] if bad else configs!r} is invalid: allowed a non-empty "
                "list of TrainConfig or a grid {field: values}"
            )
        for config in configs:
            config.validate()
        axes = _varying(configs)
    folder = resolve_path(sweeps_dir) / name
    names = point_names(configs, list(grid))  # a list's points are named apart by what differs
    planned = {
        n: dataclasses.replace(c, run_dir=str(folder / "points" / n))
        for n, c in zip(names, configs, strict=True)
    }
    return SweepPlan(name, folder, planned, axes, grid, dict(fixed or {}), budget, preset)


def check_existing(plan: SweepPlan, overwrite: bool = False) -> None:
    """Refuse a sweep folder that holds points of another grid (before anything starts), or with
    ``overwrite`` delete the sweep's points, table and record, saying so."""
    points_dir = plan.folder / "points"
    if not points_dir.is_dir():
        return
    if overwrite:
        locks = []
        try:  # a point that a kernel still trains is not deleted under it
            for folder in sorted(p for p in points_dir.iterdir() if p.is_dir()):
                locks.append(lock_run_dir(folder))
        except RunLocked as held:
            for lock in locks:
                lock.release()
            raise SweepError(f"--overwrite: point {held.path.name} is still being trained: {held}") from None
        print(
            f"--overwrite: deleting {len(locks)} point folder(s) of sweep "
            f"{plan.name} in {_display(points_dir)}",
            flush=True,
        )
        shutil.rmtree(points_dir)  # the locks go with their folders; closing them releases them
        for lock in locks:
            lock.release()
        for f in ("sweep.csv", "sweep.json"):
            (plan.folder / f).unlink(missing_ok=True)
        return
    problems = [
        f"{p.name}: not a point of this grid"
        for p in sorted(points_dir.iterdir())
        if p.is_dir() and p.name not in plan.points
    ]
    for point, config in plan.points.items():
        saved = plan.point_dir(point) / "config.json"
        if saved.is_file():
            differ = config.differences(json.loads(saved.read_text()))
            if differ:
                problems.append(
                    f"{point}: config.json differs in "
                    + ", ".join(f"{k} (saved {a!r}, asked {b!r})" for k, (a, b) in differ.items())
                )
    if problems:
        raise SweepError(
            f"sweep {plan.name} ({_display(plan.folder)}) holds points of another grid, so nothing was "
            "run:\n  "
            + "\n  ".join(problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
            + "\npass --overwrite (overwrite=True) to delete this sweep's points and start again, or "
            "choose another --name"
        )


# ----------------------------------------------------------------------------- one point (a Dask task)


def run_point(point: str, config: dict, threads: int = 1, notebooks_dir: str | Path = NOTEBOOKS_DIR) -> dict:
    """Execute ``02_train.ipynb`` for one grid point; runs on a Dask worker.

    The point's folder is ``config["run_dir"]``: the notebook trains there (``resume=True`` when it
    already holds run files) and the executed notebook and ``point.json`` go there too. The kernel
    inherits ``OMP_NUM_THREADS`` = ``threads`` and none of :data:`KERNEL_ENV_DROPPED`. Never raises
    for a failing point: the failure (a :class:`NotebookFailed` such as TrainingDiverged, a dead
    kernel...) is recorded in point.json and returned. Returns ``{"point", "status", "error",
    "notebook", "seconds"}``.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # the kernel papermill starts inherits the worker's environment
    for var in KERNEL_ENV_DROPPED:
        os.environ.pop(var, None)
    train_config = TrainConfig.from_dict(config)
    folder = train_config.path
    notebook = folder / f"{TRAIN_NOTEBOOK}.ipynb"
    try:  # a kernel still training this point (an orphan of a killed worker) keeps its files
        lock_run_dir(folder).release()
    except RunLocked as held:
        error = f"RunLocked: {held}"
        return {
            "point": point,
            "status": "failed",
            "error": error,
            "notebook": _display(notebook),
            "seconds": 0.0,
        }
    resume = bool(existing_run_files(train_config))
    record = {
        **_read_json(folder / "point.json"),
        "point": point,
        "status": "running",
        "error": None,
        "notebook": _display(notebook),
        "resume": resume,
        "started": _now(),
        "finished": None,
        "seconds": None,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "threads": threads,
    }
    _write_json(folder / "point.json", record)
    started = time.perf_counter()
    try:
        run_notebook(
            TRAIN_NOTEBOOK,
            {**train_config.to_dict(), "resume": resume},
            notebook,
            cwd=Path(notebooks_dir),
            notebooks_dir=Path(notebooks_dir),
            stream=False,
        )
        record["status"] = "done"
    except NotebookFailed as failure:
        record.update(status="failed", error=f"{failure.ename}: {failure.evalue}")
    except Exception as error:  # a dead kernel, a missing notebook...: this point fails, the sweep goes on
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
    record.update(finished=_now(), seconds=round(time.perf_counter() - started, 1))
    _write_json(folder / "point.json", record)
    return {k: record[k] for k in ("point", "status", "error", "notebook", "seconds")}


# ----------------------------------------------------------------------------- the table


def _final(point_dir: Path, config: dict) -> dict:
    """The point's results from its files: last history row, best test ELBO, step size used."""
    out: dict = dict.fromkeys(RESULT_COLUMNS[1:])
    record = _read_json(point_dir / "point.json")
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
    record = _read_json(folder / "sweep.json")
    if not record:
        raise FileNotFoundError(
            f"sweep_dir = {str(sweep_dir)!r} is not a sweep: {folder} has no "
            "sweep.json. Run one with python -m vae_utils.sweep."
        )
    rows = []
    for point, planned in record["points"].items():
        point_dir = folder / "points" / point
        config = {**planned, **_read_json(point_dir / "config.json")}
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
    axes = _read_json(folder / "sweep.json").get("axes", [])
    table = full[["point", *axes, *RESULT_COLUMNS]]
    atomic_write_text(folder / "sweep.csv", table.to_csv(index=False))
    return table


# ----------------------------------------------------------------------------- running a sweep


#: :func:`point_cost`'s model of a training step on one CPU core, fitted to steps measured on this
#: project's 2-core machine (Figure 2's networks, M = 100): a fixed cost, then multiply-adds at a
#: sustained rate. MNIST AEVB, N_z = 5: 8.5 ms measured, 8.9 modelled; Frey Face AEVB, N_z = 2: 4.3
#: and 4.7; MNIST wake-sleep, N_z = 10: 10.9 and 11.5.
STEP_SECONDS = 1.5e-3
MULTIPLY_ADDS_PER_SECOND = 3.2e10


def point_cost(config: TrainConfig) -> float:
    """A rough estimate of a point's training time in seconds on one core, pilot included.

    Each step costs :data:`STEP_SECONDS` plus its multiply-adds at :data:`MULTIPLY_ADDS_PER_SECOND`:
    M x (one forward pass of the encoder + L of the decoder) x 3 for AEVB (forward and backward), x 4
    for wake-sleep (each phase runs one network forward only and the other forward and backward).
    The Gaussian decoder has two outputs per pixel. The sweep submits the costliest points first.
    """
    h, z, extra = config.hidden_dim, config.latent_dim, (config.hidden_layers - 1) * config.hidden_dim**2
    pixels = math.prod(IMAGE_SHAPES[config.dataset])
    outputs = 2 * pixels if config.decoder == "gaussian" else pixels
    encoder = pixels * h + extra + h * 2 * z
    decoder = z * h + extra + h * outputs
    passes = 4 if config.algorithm == "wake_sleep" else 3
    multiply_adds = config.batch_size * passes * (encoder + config.n_samples * decoder)
    steps = config.epochs * math.ceil(n_train(config.dataset, config.train_subset) / config.batch_size)
    steps += len(config.lr_candidates or []) * math.ceil(config.pilot_samples / config.batch_size)
    return steps * (STEP_SECONDS + multiply_adds / MULTIPLY_ADDS_PER_SECOND)


def run_sweep(
    points: Sequence[TrainConfig] | Mapping[str, Sequence],
    name: str,
    *,
    fixed: Mapping[str, Any] | None = None,
    budget: str | int | float | None = None,
    preset: str | None = None,
    sweeps_dir: str | Path = SWEEPS_DIR,
    workers: int | None = None,
    threads: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    poll_seconds: float = 15.0,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    command: str | None = None,
) -> pd.DataFrame:
    """Run every point of a sweep as a Dask task and return the table (:func:`load_sweep`).

    ``points``: a list of TrainConfigs, or a grid ``{field: values}`` with ``fixed`` fields, a
    ``budget`` and a ``preset`` (see :func:`expand_grid`). Bad values raise ``ValueError`` and a
    folder of another grid raises :class:`SweepError`, both before any cluster or kernel starts.
    Finished points are skipped; the others run (resuming where they have a checkpoint) on a new
    ``LocalCluster`` of ``workers`` processes (default ``os.cpu_count() // threads``) or on the
    cluster at ``scheduler``. A failing point does not stop the others: check the ``status`` column.
    """
    check_int("threads", threads, 1)
    check_int("workers", workers, 1, optional=True)
    plan = plan_sweep(points, name, fixed=fixed, budget=budget, sweeps_dir=sweeps_dir, preset=preset)
    notebooks_dir = resolve_path(notebooks_dir)
    declared_parameters(
        notebooks_dir / f"{TRAIN_NOTEBOOK}.ipynb",  # 02_train takes every field
        next(iter(plan.points.values())).to_dict(),
        explicit=FIELDS,
    )
    check_existing(plan, overwrite)
    todo = [p for p in plan.points if not _finished(plan.point_dir(p))]
    record = _start_record(plan, command, len(todo))
    total = len(plan.points)
    print(
        f"sweep {plan.name}: {total} points, {total - len(todo)} already done, in {_display(plan.folder)}",
        flush=True,
    )
    for point in plan.points:
        if point not in todo:
            _say(plan, point, "done already: " + _elbo_text(plan.point_dir(point)))
    write_sweep_table(plan.folder)
    try:
        if todo:
            _execute(plan, todo, workers, threads, scheduler, poll_seconds, notebooks_dir)
    finally:
        table = write_sweep_table(plan.folder)
        done = int((table["status"] == "done").sum())
        record.update(
            finished=_now(),
            status="done"
            if done == total
            else "failed"
            if table["status"].isin(["done", "failed"]).all()
            else "interrupted",
        )
        _write_json(plan.folder / "sweep.json", record)
        print(
            f"sweep {plan.name}: {done} of {total} points done ({record['status']}); table "
            f"{_display(plan.folder / 'sweep.csv')}",
            flush=True,
        )
        if record["status"] == "interrupted":
            print("re-run the same command to finish the missing points", flush=True)
    return load_sweep(plan.folder)


def _finished(point_dir: Path) -> bool:
    """A point to skip: its training finished and its notebook ran to the end."""
    state = run_state(point_dir) if (point_dir / "last.pt").is_file() else None
    return bool(state and state["finished"]) and _read_json(point_dir / "point.json").get("status") == "done"


def _start_record(plan: SweepPlan, command: str | None, n_todo: int) -> dict:
    plan.folder.mkdir(parents=True, exist_ok=True)
    previous = _read_json(plan.folder / "sweep.json")
    attempts = previous.get("attempts", []) + (
        [{k: previous.get(k) for k in ("command", "started", "finished", "status")}] if previous else []
    )
    record = {
        "name": plan.name,
        "preset": plan.preset,
        "budget": plan.budget,
        "grid": plan.grid,
        "fixed": plan.fixed,
        "axes": plan.axes,
        "command": command or shlex.join(sys.argv),
        "started": _now(),
        "finished": None,
        "status": "running",
        "to_run": n_todo,
        "points": {p: c.to_dict() for p, c in plan.points.items()},
        "attempts": attempts,
    }
    _write_json(plan.folder / "sweep.json", record)
    return record


def _connect(
    scheduler: str | None, workers: int | None, threads: int, n_tasks: int
) -> tuple[Client, LocalCluster | None]:
    """A Dask client: to ``scheduler``, or to a new LocalCluster sized to this machine. Returns
    (client, cluster or None)."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler, timeout="60s"), None
    n = workers or max(1, (os.cpu_count() or 1) // threads)
    n = min(n, n_tasks)
    with dask.config.set(QUIET_WORKERS):  # the nannies hand the config to their worker processes
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster


def dashboard_link(client: Client, timeout: float = 5.0) -> tuple[str | None, bool]:
    """(the Dask dashboard's address, its ``/status`` page, or None; whether it answered there).

    The scheduler's HTTP server is asked for the page (no proxy, ``timeout`` seconds): a scheduler
    without ``bokeh`` (pinned in requirements.txt) or started with ``--no-dashboard`` still names
    an address, but answers 404 there, so (None, False); one that does not answer from this
    machine (a remote cluster behind a firewall) gives (address, False)."""
    try:
        link = client.dashboard_link
    except (AttributeError, KeyError):  # no scheduler info, or a scheduler without an HTTP server
        return None, False
    if not link:
        return None, False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(link, timeout=timeout) as response:
            return link, response.status == 200
    except urllib.error.HTTPError:  # it answered: no dashboard there
        return None, False
    except (OSError, ValueError):  # refused, unreachable, timed out
        return link, False


def live_links(client: Client, plan: SweepPlan) -> list[str]:
    """The lines that say where to watch the sweep while it runs: the Dask dashboard (tasks,
    workers) and, when its points write TensorBoard events, the ``tensorboard`` command that shows
    every point's curves, each run named ``points/<point>/tb`` (docs/live.md)."""
    lines = []
    link, answers = dashboard_link(client)
    if link:
        note = "" if answers else " (it does not answer from this machine: forward its port)"
        lines.append(f"dashboard: {link}{note}")
    if any(config.tensorboard for config in plan.points.values()):
        lines.append(f"live curves: tensorboard --logdir {shlex.quote(_display(plan.folder))}")
    return lines


def _execute(
    plan: SweepPlan,
    todo: list[str],
    workers: int | None,
    threads: int,
    scheduler: str | None,
    poll_seconds: float,
    notebooks_dir: Path,
) -> None:
    """Submit the points longest first and report progress until every one has finished."""
    from distributed import wait

    client, cluster = _connect(scheduler, workers, threads, len(todo))
    futures: dict = {}
    try:
        if scheduler is not None:
            _check_workers(client, plan.folder)
        _check_kernels(client)
        where = scheduler or f"a LocalCluster of {len(client.scheduler_info()['workers'])} worker(s)"
        print(f"engine: Dask on {where}, {threads} torch thread(s) per point", flush=True)
        for line in live_links(client, plan):
            print(line, flush=True)
        token = f"{time.time_ns():x}"
        order = sorted(todo, key=lambda p: -point_cost(plan.points[p]))
        for rank, point in enumerate(order):
            folder = plan.point_dir(point)
            folder.mkdir(parents=True, exist_ok=True)
            previous = _read_json(folder / "point.json")
            _write_json(
                folder / "point.json",
                {
                    "point": point,
                    "status": "queued",
                    "error": None,
                    "queued": _now(),
                    "attempt": previous.get("attempt", 0) + 1,
                    "notebook": _display(folder / f"{TRAIN_NOTEBOOK}.ipynb"),
                },
            )
            future = client.submit(
                run_point,
                point,
                plan.points[point].to_dict(),
                threads,
                str(notebooks_dir),
                key=f"sweep-{plan.name}-{point}-{token}",
                pure=False,
                priority=len(order) - rank,
            )
            futures[future] = point
            _say(plan, point, "queued")
        write_sweep_table(plan.folder)
        seen = {point: ("queued", 0) for point in todo}
        next_poll = time.monotonic() + poll_seconds
        while futures:
            try:
                finished = wait(
                    list(futures),
                    timeout=max(0.0, next_poll - time.monotonic()),
                    return_when="FIRST_COMPLETED",
                ).done
            except TimeoutError:
                finished = set()
            for future in finished:
                _report(plan, futures.pop(future), future)
            changed = bool(finished)
            if time.monotonic() >= next_poll:
                for point in futures.values():
                    changed |= _report_progress(plan, point, seen)
                next_poll = time.monotonic() + poll_seconds
            if changed:
                write_sweep_table(plan.folder)
    finally:
        client.close()
        if cluster is not None:  # its workers are gone, and the kernels they started with them
            cluster.close()
            for point in futures.values():
                path = plan.point_dir(point) / "point.json"
                record = _read_json(path)
                if record.get("status") in ("queued", "running"):
                    _write_json(
                        path,
                        {
                            **record,
                            "status": "interrupted",
                            "finished": _now(),
                            "error": "the sweep was interrupted",
                        },
                    )


def _check_workers(client: Client, folder: Path) -> None:
    """Fail early when a cluster's workers cannot run the points: this package missing there, or
    the sweep folder not shared with them."""
    try:
        sees = client.run(_is_dir, str(folder))
    except Exception as error:
        raise SweepError(
            f"the cluster's workers cannot run sweep tasks ({type(error).__name__}: {error}): "
            "install this package on every worker (pip install -r requirements.txt)"
        ) from error
    blind = sorted(worker for worker, ok in sees.items() if not ok)
    if blind:
        raise SweepError(
            f"worker(s) {', '.join(blind)} do not see {folder}: the sweeps folder must be on a "
            "filesystem shared with the workers, at the same path (--sweeps-dir)"
        )


def _check_kernels(client: Client) -> None:
    """Fail early when the points' kernels could not import this package: each worker starts them
    as fresh interpreters, which see only what is installed, not the client's folder."""
    problems = {worker: p for worker, p in client.run(kernel_import_problem).items() if p}
    if problems:
        worker, problem = next(iter(problems.items()))
        raise SweepError(
            f"a point's kernel on worker(s) {', '.join(sorted(problems))} cannot use this package "
            f"({worker}: {problem}): install it there with pip install -e <project folder> "
            "(pip install -r requirements.txt does)"
        )


def kernel_import_problem(executable: str | None = None) -> str | None:
    """None when a fresh ``executable`` (default: this Python, as a point's kernel is), started
    outside the project, imports this very vae_utils; else why not: the error it raises, or the
    other folder it imports vae_utils from (an editable install that points elsewhere)."""
    here = Path(__file__).resolve().parent
    command = [executable or sys.executable, "-c", "import vae_utils; print(vae_utils.__file__)"]
    try:
        result = subprocess.run(
            command, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{type(error).__name__}: {error}"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit status {result.returncode}"
    found = Path(result.stdout.strip().splitlines()[-1]).resolve().parent
    return None if found == here else f"it imports vae_utils from {found}, not {here}"


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _report(plan: SweepPlan, point: str, future: Future) -> None:
    """Print a finished task's line; record a task that failed outside run_point (a lost worker, a
    worker without this package) in its point.json."""
    folder = plan.point_dir(point)
    if future.status == "finished":
        result = future.result()
    else:
        error = future.exception() if future.status == "error" else f"task {future.status}"
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        result = {
            "status": "failed",
            "error": error,
            "seconds": None,
            "notebook": _display(folder / f"{TRAIN_NOTEBOOK}.ipynb"),
        }
        _write_json(
            folder / "point.json",
            {**_read_json(folder / "point.json"), **result, "point": point, "finished": _now()},
        )
    if result["status"] == "done":
        _say(plan, point, f"done in {_duration(result['seconds'])}: {_elbo_text(folder)}")
    else:
        _say(plan, point, f"failed: {result['notebook']}: {_first_line(result['error'])}")


def _report_progress(plan: SweepPlan, point: str, seen: dict) -> bool:
    """Print a line when a running point's status or history changed since the last line."""
    folder = plan.point_dir(point)
    status = _read_json(folder / "point.json").get("status", "queued")
    rows = 0
    history = None
    if (folder / "history.csv").is_file():
        history = pd.read_csv(folder / "history.csv")
        rows = len(history)
    if (status, rows) == seen[point]:
        return False
    changed_status = status != seen[point][0]
    seen[point] = (status, rows)
    if status != "running":  # queued still, or finished: its own line comes from the task's result
        return changed_status
    config = plan.points[point]
    if history is None or rows == 0:
        _say(plan, point, "running")
    else:
        total = config.epochs * n_train(config.dataset, config.train_subset)
        last = history.iloc[-1]
        _say(
            plan,
            point,
            f"running at {_count(last['samples'])}/{_count(total)} samples, "
            f"test ELBO {last['test_elbo']:.1f}",
        )
    return True


# ----------------------------------------------------------------------------- the Figure 2 report


def write_report(
    preset: str,
    sweep_dir: str | Path,
    reports_dir: str | Path | None = None,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
) -> Path | None:
    """Execute the ``preset``'s analysis notebook (:data:`REPORTS`: 06_figure2 or 07_likelihoods) with
    ``sweep_dir`` into ``reports_dir`` (default ``reports/figure2/`` or ``reports/likelihoods/``),
    export its HTML, write the folder's ``report.json`` and rebuild ``reports/index.html``.

    Returns the executed notebook, or None (with a message) when the notebook does not exist.
    ``sweep_dir`` is passed relative to the project root when it lies inside it.
    """
    from vae_utils.reports import THUMBNAIL, finalize_report, write_index

    notebook, default_dir = REPORTS[preset]
    notebooks_dir = resolve_path(notebooks_dir)
    source = notebooks_dir / f"{notebook}.ipynb"
    if not source.is_file():
        print(f"report skipped: {_display(source)} does not exist", flush=True)
        return None
    wanted = {"sweep_dir": _display(resolve_path(sweep_dir))}
    parameters = declared_parameters(source, wanted, explicit=wanted)
    output = resolve_path(reports_dir if reports_dir is not None else default_dir) / f"{notebook}.ipynb"
    print(f"report: {notebook}.ipynb -> {_display(output)}", flush=True)
    run_notebook(notebook, parameters, output, cwd=notebooks_dir, notebooks_dir=notebooks_dir, stream=False)
    page = finalize_report(output)  # the HTML, then the figures dropped from the .ipynb
    record = _report_record(preset, resolve_path(sweep_dir), output)
    if (output.parent / THUMBNAIL).is_file():  # finalize_report saved the key figure's
        record["thumbnail"] = THUMBNAIL
    _write_json(output.parent / "report.json", record)
    write_index(output.parent.parent)
    print(f"report written: {_display(output)}, {_display(page)}", flush=True)
    return output


def write_figure2_report(
    sweep_dir: str | Path, reports_dir: str | Path | None = None, notebooks_dir: str | Path = NOTEBOOKS_DIR
) -> Path | None:
    """:func:`write_report` for the Figure 2 preset."""
    return write_report("figure2", sweep_dir, reports_dir, notebooks_dir)


def _report_record(preset: str, sweep_dir: Path, executed: Path) -> dict:
    """The report folder's ``report.json`` for the reports' landing page: title, command (the
    sweep's, without ``--overwrite``: what reproduces the report on a fresh clone), headline.

    The likelihoods' headline is what notebook 07 (``executed``) estimated: the binarised runs' test
    NLL and the grey decoders' log p(x) with k = 5000, falling back to the runs' final test ELBO
    when the notebook has no such number."""
    from vae_utils.plotting import likelihood_label
    from vae_utils.reports import table_value

    record = _read_json(sweep_dir / "sweep.json")
    table = load_sweep(sweep_dir)
    headline: dict = {
        "points done": f"{int((table['status'] == 'done').sum())} of {len(table)}",
        "budget": record.get("budget"),
    }
    command = [part for part in shlex.split(record.get("command", "")) if part != "--overwrite"]
    common = {
        "command": shlex.join(command),
        "pages": [executed.with_suffix(".html").name],
        "date": (record.get("finished") or "")[:16].replace("T", " "),
    }
    if preset == "likelihoods":
        for row in table.itertuples():
            saved = _read_json(Path(str(row.run_dir)) / "config.json")
            if not saved:  # never started
                continue
            config = TrainConfig.from_dict(saved)
            label = likelihood_label(config)
            if config.binarize != "none":
                value = table_value(executed, "NLL", label)
                name = f"test NLL, k=5000: {label}" + (
                    " (Burda et al.: 86.76)" if config.binarize == "dynamic" else ""
                )
            else:
                value = table_value(executed, "log p(x), k=5000", label)
                name = f"test log p(x), k=5000: {label}" + (
                    " (not a likelihood)" if config.decoder == "bernoulli" else ""
                )
            if value is None:
                value, name = float(str(row.test_elbo)), f"final test ELBO: {label}"
            headline[name] = f"{value:.2f}"
        return {
            "title": "Likelihoods: binarised MNIST against Burda et al., grey-level decoders side by side",
            "headline": headline,
            **common,
        }
    for dataset, rows in table.groupby("dataset", sort=False):
        best = rows.groupby("algorithm")["test_elbo"].max()
        headline[f"{dataset}: best final test ELBO, AEVB / wake-sleep"] = " / ".join(
            f"{best.get(a, math.nan):.1f}" for a in ALGORITHMS
        )
    return {
        "title": "Figure 2: AEVB against wake-sleep, test ELBO against training samples",
        "headline": headline,
        **common,
    }


# ----------------------------------------------------------------------------- small helpers


def _say(plan: SweepPlan, point: str, text: str) -> None:
    names = list(plan.points)
    width = len(str(len(names)))
    print(f"[{names.index(point) + 1:>{width}}/{len(names)}] {point}  {text}", flush=True)


def _elbo_text(folder: Path) -> str:
    try:
        history = pd.read_csv(folder / "history.csv")
        return f"test ELBO {history['test_elbo'].iloc[-1]:.1f}"
    except (OSError, ValueError, IndexError, KeyError):
        return "no history"


def _count(n: float) -> str:
    """1.2e6 for large counts, the integer itself below 10,000."""
    if n < 10_000:
        return str(int(n))
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _first_line(text: str | None, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"
    return line if len(line) <= limit else line[:limit] + "..."


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _display(path: Path) -> str:
    """Relative to the project root when inside it (no machine paths in committed files)."""
    path = Path(path)
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vae_utils.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m vae_utils.sweep --preset figure2 --budget cpu\n"
        "  python -m vae_utils.sweep --name z --grid latent_dim=3,5,10 --grid seed=0,1 "
        "--set epochs=5 --set train_subset=1000",
    )
    grid = parser.add_argument_group("the grid")
    grid.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a predefined grid: figure2 (18 points) or likelihoods (5 runs for notebook 07)",
    )
    grid.add_argument(
        "--name",
        help="the sweep's folder under the sweeps dir (default with a preset: "
        "<preset>_<budget>, e.g. figure2_cpu)",
    )
    grid.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="an axis: any TrainConfig field and its values (repeatable)",
    )
    grid.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="fixed",
        help="a field fixed for every point (repeatable); lists with ':', e.g. lr_candidates=0.01:0.02",
    )
    grid.add_argument(
        "--budget",
        help="training samples per curve: "
        + ", ".join(BUDGETS)
        + " or a number (sets epochs; default cpu with a preset)",
    )
    run = parser.add_argument_group("running")
    run.add_argument("--sweeps-dir", type=Path, default=SWEEPS_DIR, help="default sweeps/")
    run.add_argument("--workers", type=int, help="LocalCluster workers (default: CPU cores // threads)")
    run.add_argument("--threads", type=int, default=1, help="torch threads per point (default 1)")
    run.add_argument(
        "--scheduler", metavar="ADDRESS", help="use an existing Dask cluster, e.g. tcp://host:8786"
    )
    run.add_argument("--overwrite", action="store_true", help="delete this sweep's points first")
    run.add_argument(
        "--poll",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how often running points' histories are read (default 15)",
    )
    run.add_argument("--dry-run", action="store_true", help="list the points and run nothing")
    run.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help="default notebooks/")
    report = parser.add_argument_group("the report of a preset")
    report.add_argument(
        "--no-report",
        action="store_true",
        help="do not execute the preset's notebook (06_figure2 or 07_likelihoods)",
    )
    report.add_argument(
        "--reports-dir", type=Path, default=None, help="default reports/figure2/ or reports/likelihoods/"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when every point is done, 1 when one failed or the sweep cannot start,
    2 (argparse's exit) for bad options or grid values, 130 when interrupted (Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        grid = dict(parse_assignment(g, grid=True) for g in args.grid)
        fixed = dict(parse_assignment(s, grid=False) for s in args.fixed)
        if args.budget is not None and "epochs" in {*grid, *fixed}:
            raise ValueError("epochs and --budget both set the training length: give one of them")
        budget = parse_budget(args.budget if args.budget is not None or not args.preset else "cpu")
        name = args.name or (f"{args.preset}_{budget}" if args.preset else None)
        if name is None:
            raise ValueError("--name is required without --preset")
        for option in ("workers", "threads"):
            check_int(option, getattr(args, option), 1, optional=option == "workers")
        check_float("poll", args.poll, 0.0, strict=True)
        plan = plan_sweep(
            grid, name, fixed=fixed, budget=budget, sweeps_dir=args.sweeps_dir, preset=args.preset
        )
    except ValueError as error:
        parser.error(str(error))
    if args.dry_run:
        for i, (point, config) in enumerate(plan.points.items(), 1):
            samples = config.epochs * n_train(config.dataset, config.train_subset)
            print(
                f"[{i:>{len(str(len(plan.points)))}}/{len(plan.points)}] {point}  {config.epochs} epochs, "
                f"{_count(samples)} samples",
                flush=True,
            )
        print(f"axes: {plan.axes}; folder: {_display(plan.folder)}", flush=True)
        return 0
    command = shlex.join(["python", "-m", "vae_utils.sweep", *argv])
    try:
        table = run_sweep(
            grid,
            name,
            fixed=fixed,
            budget=budget,
            preset=args.preset,
            sweeps_dir=args.sweeps_dir,
            workers=args.workers,
            threads=args.threads,
            scheduler=args.scheduler,
            overwrite=args.overwrite,
            poll_seconds=args.poll,
            notebooks_dir=args.notebooks_dir,
            command=command,
        )
    except (SweepError, StudyError) as error:  # another grid in the folder, an unfit cluster or notebook
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:  # run_sweep has printed the summary and closed its cluster
        print("\ninterrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return 130
    failed = table[table["status"] != "done"]
    if len(failed):
        print(f"\n{len(failed)} point(s) not done:", file=sys.stderr, flush=True)
        for _, row in failed.iterrows():
            print(
                f"  {row['point']}: {row['status']}: {row['notebook']}: {_first_line(row['error'])}",
                file=sys.stderr,
                flush=True,
            )
        return 1
    if args.preset in REPORTS and not args.no_report:
        try:
            write_report(args.preset, plan.folder, args.reports_dir, args.notebooks_dir)
        except StudyError as error:  # NotebookFailed included: the partly executed notebook is kept
            print(f"\nthe {args.preset} report failed: {error}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
