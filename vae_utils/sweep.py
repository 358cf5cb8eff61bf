"""Sweeps: many 02_train runs as Dask tasks, then the preset's report (``python -m vae_utils.sweep``).
This module is the command line, :func:`run_sweep` and the report a preset ends with; the grid is
:mod:`vae_utils.sweep_plan`, the engine :mod:`vae_utils.sweep_engine`, the table that notebooks read
:mod:`vae_utils.sweep_table`. docs/sweeps.md shows the commands and what a sweep folder holds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vae_utils.config import (
    FIELDS,
    NOTEBOOKS_DIR,
    REPORTS_DIR,
    SWEEPS_DIR,
    TrainConfig,
    check_float,
    check_int,
    display_path,
    resolve_path,
)
from vae_utils.index_page import write_index
from vae_utils.notebook_runner import NotebookError, declared_parameters, run_notebook
from vae_utils.presets import BUDGETS, PRESETS, samples_per_epoch
from vae_utils.reports import THUMBNAIL, finalize_report
from vae_utils.results import RESULTS_FILE, headline, read_results
from vae_utils.runfiles import read_json, run_state, timestamp, write_json
from vae_utils.sweep_engine import (
    TRAIN_NOTEBOOK,
    elbo_text,
    execute_points,
    first_line,
    say,
    short_count,
)
from vae_utils.sweep_plan import (
    SweepError,
    SweepPlan,
    check_existing,
    parse_assignment,
    parse_budget,
    plan_sweep,
)
from vae_utils.sweep_table import load_sweep, write_sweep_table

#: Each preset's report: the notebook that analyses its sweep, where it is written, its title.
REPORTS = {
    "figure2": (
        "06_figure2",
        REPORTS_DIR / "figure2",
        "Figure 2: AEVB against wake-sleep, test ELBO against training samples",
    ),
    "figure3": (
        "08_figure3",
        REPORTS_DIR / "figure3",
        "Figure 3: AEVB, wake-sleep and Monte Carlo EM, estimated marginal likelihood",
    ),
    "likelihoods": (
        "07_likelihoods",
        REPORTS_DIR / "likelihoods",
        "Likelihoods: binarised MNIST against Burda et al., grey-level decoders side by side",
    ),
}


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
    When every point is done already, nothing starts and ``sweep.json`` keeps the record of the run
    that finished them (so a rerun for the report alone does not rewrite its times).
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
    total = len(plan.points)
    where = display_path(plan.folder)
    print(f"sweep {plan.name}: {total} points, {total - len(todo)} already done, in {where}", flush=True)
    for point in plan.points:
        if point not in todo:
            say(plan, point, "done already: " + elbo_text(plan.point_dir(point)))
    if not todo and read_json(plan.folder / "sweep.json").get("status") == "done":
        # nothing to run: sweep.json keeps the record (command, times) of the run that did the work
        write_sweep_table(plan.folder)
        print(
            f"sweep {plan.name}: nothing to run; {display_path(plan.folder / 'sweep.json')} kept", flush=True
        )
        return load_sweep(plan.folder)
    record = _start_record(plan, command, len(todo))
    write_sweep_table(plan.folder)
    unfit: SweepError | None = None
    try:
        if todo:
            execute_points(plan, todo, workers, threads, scheduler, poll_seconds, notebooks_dir)
    except SweepError as error:  # no cluster, or one that cannot run the points: nothing ran
        unfit = error
        raise
    finally:
        table = write_sweep_table(plan.folder)
        done = int((table["status"] == "done").sum())
        record.update(
            finished=timestamp(),
            status="done"
            if done == total
            else "failed"
            if table["status"].isin(["done", "failed"]).all()
            else "interrupted",
        )
        if unfit is not None:
            record.update(status="not started", error=str(unfit))
        write_json(plan.folder / "sweep.json", record)
        print(
            f"sweep {plan.name}: {done} of {total} points done ({record['status']}); table "
            f"{display_path(plan.folder / 'sweep.csv')}",
            flush=True,
        )
        if record["status"] == "interrupted":
            print("re-run the same command to finish the missing points", flush=True)
    return load_sweep(plan.folder)


def _finished(point_dir: Path) -> bool:
    """A point to skip: its training finished and its notebook ran to the end."""
    state = run_state(point_dir) if (point_dir / "last.pt").is_file() else None
    return bool(state and state["finished"]) and read_json(point_dir / "point.json").get("status") == "done"


def _start_record(plan: SweepPlan, command: str | None, n_todo: int) -> dict:
    plan.folder.mkdir(parents=True, exist_ok=True)
    previous = read_json(plan.folder / "sweep.json")
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
        "started": timestamp(),
        "finished": None,
        "status": "running",
        "to_run": n_todo,
        "points": {p: c.to_dict() for p, c in plan.points.items()},
        "attempts": attempts,
    }
    write_json(plan.folder / "sweep.json", record)
    return record


def write_report(
    preset: str,
    sweep_dir: str | Path,
    reports_dir: str | Path | None = None,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
) -> Path | None:
    """Execute the ``preset``'s analysis notebook (:data:`REPORTS`: 06_figure2, 08_figure3 or
    07_likelihoods) with ``sweep_dir`` into ``reports_dir`` (default ``reports/<preset>/``),
    export its HTML, write the folder's ``report.json`` and rebuild ``reports/index.html``.

    Returns the executed notebook, or None (with a message) when the notebook does not exist.
    ``sweep_dir`` is passed relative to the project root when it lies inside it.
    """
    notebook, default_dir, _ = REPORTS[preset]
    notebooks_dir = resolve_path(notebooks_dir)
    source = notebooks_dir / f"{notebook}.ipynb"
    if not source.is_file():
        print(f"report skipped: {display_path(source)} does not exist", flush=True)
        return None
    output = resolve_path(reports_dir if reports_dir is not None else default_dir) / f"{notebook}.ipynb"
    (output.parent / RESULTS_FILE).unlink(missing_ok=True)  # never a headline of an earlier run
    wanted = {
        "sweep_dir": display_path(resolve_path(sweep_dir)),
        "results_path": display_path(output.parent / RESULTS_FILE),
    }
    parameters = declared_parameters(source, wanted, explicit=wanted)
    print(f"report: {notebook}.ipynb -> {display_path(output)}", flush=True)
    run_notebook(notebook, parameters, output, cwd=notebooks_dir, notebooks_dir=notebooks_dir, stream=False)
    page = finalize_report(output)  # the HTML, then the figures dropped from the .ipynb
    record = _report_record(preset, resolve_path(sweep_dir), output)
    if (output.parent / THUMBNAIL).is_file():  # finalize_report saved the key figure's
        record["thumbnail"] = THUMBNAIL
    write_json(output.parent / "report.json", record)
    write_index(output.parent.parent)
    print(f"report written: {display_path(output)}, {display_path(page)}", flush=True)
    return output


def _report_record(preset: str, sweep_dir: Path, executed: Path) -> dict:
    """The report folder's ``report.json`` for the landing page: title, command (the sweep's, without
    ``--overwrite``: what reproduces the report on a fresh clone), date, and a headline of how many
    points finished and the numbers the notebook wrote to its ``results.json``."""
    record = read_json(sweep_dir / "sweep.json")
    table = load_sweep(sweep_dir)
    command = [part for part in shlex.split(record.get("command", "")) if part != "--overwrite"]
    return {
        "title": REPORTS[preset][2],
        "headline": {
            "points done": f"{int((table['status'] == 'done').sum())} of {len(table)}",
            "budget": record.get("budget"),
            **headline(read_results(executed.parent)),
        },
        "command": shlex.join(command),
        "pages": [executed.with_suffix(".html").name],
        "date": (record.get("finished") or "")[:16].replace("T", " "),
    }


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
        help="a predefined grid, then its report: "
        + "; ".join(
            f"{name} ({len(PRESETS[name]('cpu'))} points, then {nb})" for name, (nb, _, _) in REPORTS.items()
        ),
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
        help="do not execute the preset's notebook (" + ", ".join(nb for nb, _, _ in REPORTS.values()) + ")",
    )
    report.add_argument(
        "--reports-dir",
        type=Path,
        default=None,
        help="default reports/<preset>/ (" + ", ".join(f"reports/{name}/" for name in REPORTS) + ")",
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
            samples = config.epochs * samples_per_epoch(config)
            print(
                f"[{i:>{len(str(len(plan.points)))}}/{len(plan.points)}] {point}  {config.epochs} epochs, "
                f"{short_count(samples)} samples",
                flush=True,
            )
        print(f"axes: {plan.axes}; folder: {display_path(plan.folder)}", flush=True)
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
    except (SweepError, NotebookError) as error:  # another grid in the folder, an unfit cluster or notebook
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
                f"  {row['point']}: {row['status']}: {row['notebook']}: {first_line(row['error'])}",
                file=sys.stderr,
                flush=True,
            )
        return 1
    if args.preset in REPORTS and not args.no_report:
        try:
            write_report(args.preset, plan.folder, args.reports_dir, args.notebooks_dir)
        except NotebookError as error:  # NotebookFailed included: the partly executed notebook is kept
            print(f"\nthe {args.preset} report failed: {error}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (``... --dry-run | head``): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
