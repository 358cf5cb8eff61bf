"""Running a sweep's points on Dask: connecting to a cluster (a new LocalCluster, or one at an
address), one point as one task (02_train executed by papermill on a worker), the cost model that
orders them, and the progress lines. docs/sweeps.md says how to run on a cluster of your own.
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from vae_utils.config import NOTEBOOKS_DIR, TrainConfig, display_path
from vae_utils.data import IMAGE_SHAPES
from vae_utils.notebook_runner import NotebookFailed, run_notebook
from vae_utils.presets import n_train, samples_per_epoch
from vae_utils.runfiles import RunLocked, existing_run_files, lock_run_dir, read_json, timestamp, write_json
from vae_utils.sweep_plan import SweepError, SweepPlan
from vae_utils.sweep_table import write_sweep_table

if TYPE_CHECKING:  # annotations only: Dask is imported when a sweep runs
    from distributed import Client, Future, LocalCluster

TRAIN_NOTEBOOK = "02_train"

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

#: How long the engine waits for a scheduler given by address before saying it cannot reach it.
CONNECT_SECONDS = 10
#: :func:`point_cost`'s model of a training step on one CPU core, fitted to steps measured on this
#: project's 2-core machine (Figure 2's networks, M = 100): a fixed cost, then multiply-adds at a
#: sustained rate. MNIST AEVB, N_z = 5: 8.5 ms measured, 8.9 modelled; Frey Face AEVB, N_z = 2: 4.3
#: and 4.7; MNIST wake-sleep, N_z = 10: 10.9 and 11.5.
STEP_SECONDS = 1.5e-3


MULTIPLY_ADDS_PER_SECOND = 3.2e10


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
            "notebook": display_path(notebook),
            "seconds": 0.0,
        }
    resume = bool(existing_run_files(train_config))
    record = {
        **read_json(folder / "point.json"),
        "point": point,
        "status": "running",
        "error": None,
        "notebook": display_path(notebook),
        "resume": resume,
        "started": timestamp(),
        "finished": None,
        "seconds": None,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "threads": threads,
    }
    write_json(folder / "point.json", record)
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
    record.update(finished=timestamp(), seconds=round(time.perf_counter() - started, 1))
    write_json(folder / "point.json", record)
    return {k: record[k] for k in ("point", "status", "error", "notebook", "seconds")}


def point_cost(config: TrainConfig) -> float:
    """A rough estimate of a point's training time in seconds on one core, pilot included.

    Each step costs :data:`STEP_SECONDS` plus its multiply-adds at :data:`MULTIPLY_ADDS_PER_SECOND`:
    M x (one forward pass of the encoder + L of the decoder) x 3 for AEVB (forward and backward), x 4
    for wake-sleep (each phase runs one network forward only and the other forward and backward).
    The Gaussian decoder has two outputs per pixel. MCEM: each datapoint evaluated costs a decoder
    pass forward and backward, and each of its 16 vectorised steps per epoch the overhead. The
    sweep submits the costliest points first.
    """
    h, z, extra = config.hidden_dim, config.latent_dim, (config.hidden_layers - 1) * config.hidden_dim**2
    pixels = math.prod(IMAGE_SHAPES[config.dataset])
    outputs = 2 * pixels if config.decoder == "gaussian" else pixels
    encoder = pixels * h + extra + h * 2 * z
    decoder = z * h + extra + h * outputs
    if config.algorithm == "mcem":
        work = config.epochs * samples_per_epoch(config) * 3 * decoder / MULTIPLY_ADDS_PER_SECOND
        return work + config.epochs * 16 * STEP_SECONDS
    passes = 4 if config.algorithm == "wake_sleep" else 3
    multiply_adds = config.batch_size * passes * (encoder + config.n_samples * decoder)
    steps = config.epochs * math.ceil(n_train(config.dataset, config.train_subset) / config.batch_size)
    steps += len(config.lr_candidates or []) * math.ceil(config.pilot_samples / config.batch_size)
    return steps * (STEP_SECONDS + multiply_adds / MULTIPLY_ADDS_PER_SECOND)


def _connect(
    scheduler: str | None, workers: int | None, threads: int, n_tasks: int
) -> tuple[Client, LocalCluster | None]:
    """A Dask client: to ``scheduler``, or to a new LocalCluster sized to this machine. Returns
    (client, cluster or None)."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            return Client(scheduler, timeout=f"{CONNECT_SECONDS}s"), None
        except ValueError as error:  # not an address distributed can parse
            raise SweepError(
                f"scheduler = {scheduler!r} is invalid ({first_line(str(error), 120)}): allowed a Dask "
                "scheduler address, tcp://HOST:PORT (default port 8786)"
            ) from None
        except (OSError, TimeoutError) as error:  # refused or unreachable
            raise SweepError(
                f"scheduler = {scheduler!r}: no Dask scheduler answered there within {CONNECT_SECONDS} s "
                f"({type(error).__name__}: {first_line(str(error), 120)}). Check that `dask scheduler` "
                "runs at that address (tcp://HOST:PORT, default port 8786), that this machine can reach "
                "it (firewall, VPN), or leave --scheduler out to start a LocalCluster"
            ) from None
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
        lines.append(f"live curves: tensorboard --logdir {shlex.quote(display_path(plan.folder))}")
    return lines


def execute_points(
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
            previous = read_json(folder / "point.json")
            write_json(
                folder / "point.json",
                {
                    "point": point,
                    "status": "queued",
                    "error": None,
                    "queued": timestamp(),
                    "attempt": previous.get("attempt", 0) + 1,
                    "notebook": display_path(folder / f"{TRAIN_NOTEBOOK}.ipynb"),
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
            say(plan, point, "queued")
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
                record = read_json(path)
                if record.get("status") in ("queued", "running"):
                    write_json(
                        path,
                        {
                            **record,
                            "status": "interrupted",
                            "finished": timestamp(),
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
            "notebook": display_path(folder / f"{TRAIN_NOTEBOOK}.ipynb"),
        }
        write_json(
            folder / "point.json",
            {**read_json(folder / "point.json"), **result, "point": point, "finished": timestamp()},
        )
    if result["status"] == "done":
        say(plan, point, f"done in {duration_text(result['seconds'])}: {elbo_text(folder)}")
    else:
        say(plan, point, f"failed: {result['notebook']}: {first_line(result['error'])}")


def _report_progress(plan: SweepPlan, point: str, seen: dict) -> bool:
    """Print a line when a running point's status or history changed since the last line."""
    folder = plan.point_dir(point)
    status = read_json(folder / "point.json").get("status", "queued")
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
        say(plan, point, "running")
    else:
        total = config.epochs * samples_per_epoch(config)
        last = history.iloc[-1]
        say(
            plan,
            point,
            f"running at {short_count(last['samples'])}/{short_count(total)} samples, {score_text(last)}",
        )
    return True


def say(plan: SweepPlan, point: str, text: str) -> None:
    names = list(plan.points)
    width = len(str(len(names)))
    print(f"[{names.index(point) + 1:>{width}}/{len(names)}] {point}  {text}", flush=True)


def score_text(last: pd.Series) -> str:
    """A history row's test score: its ELBO, or for MCEM (no encoder) its log p(x) by HMC."""
    if pd.isna(last["test_elbo"]) and not pd.isna(last.get("test_log_px_hmc")):
        return f"test log p(x) by HMC {last['test_log_px_hmc']:.1f}"
    return f"test ELBO {last['test_elbo']:.1f}"


def elbo_text(folder: Path) -> str:
    try:
        return score_text(pd.read_csv(folder / "history.csv").iloc[-1])
    except (OSError, ValueError, IndexError, KeyError):
        return "no history"


def short_count(n: float) -> str:
    """1.2e6 for large counts, the integer itself below 10,000."""
    if n < 10_000:
        return str(int(n))
    mantissa, exponent = f"{n:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def first_line(text: str | None, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"
    return line if len(line) <= limit else line[:limit] + "..."
