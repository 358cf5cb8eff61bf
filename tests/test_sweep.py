"""Sweeps, ``python -m vae_utils.sweep``: grids of real 02_train.ipynb runs on real Dask clusters.

A scheduler and two workers are started as separate processes on 127.0.0.1 (as ``dask scheduler`` and
``dask worker`` would be on a cluster) for a 2 x 2 sweep; a second sweep runs on the default
LocalCluster with a point that diverges. Every kernel start costs seconds on 2 cores, so the
sweeps are module fixtures shared by the assertions, and the runs are tiny (300 training images,
3 epochs).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dask
import nbformat
import pandas as pd
import pytest

import vae_utils
from vae_utils import (
    figure2,
    likelihoods,
    presets,
    results,
    sweep,
    sweep_engine,
    sweep_plan,
    sweep_table,
    training,
)
from vae_utils.config import NOTEBOOKS_DIR, PAPER_STEP_SIZES, TRAIN_SIZES, TrainConfig
from vae_utils.runfiles import run_state

N_TRAIN, EPOCHS = 300, 3
TINY = [
    "--set",
    f"train_subset={N_TRAIN}",
    "--set",
    "test_subset=100",
    "--set",
    "device=cpu",
    "--set",
    "patience=None",
    "--budget",
    str(N_TRAIN * EPOCHS),
]
SCHED_GRID = [
    "--name",
    "sched",
    "--grid",
    "latent_dim=2,3",
    "--grid",
    "algorithm=aevb,wake_sleep",
    "--set",
    "dataset=frey_face",
    "--set",
    "decoder=gaussian",
    "--set",
    "hidden_dim=50",
    "--set",
    "lr_candidates=0.01:0.02",
    "--set",
    "pilot_samples=200",
    *TINY,
]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``sweep.main(argv)`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = sweep.main(argv)
        except SystemExit as exit_:
            rc = exit_.code
    return rc, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- a real Dask cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(module_args: list[str], log: Path) -> subprocess.Popen:
    """``python -m <module_args>`` as a separate process, its log in ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", *module_args], stdout=subprocess.DEVNULL, stderr=f)


def _stop(processes: list[subprocess.Popen]) -> None:
    """Terminate the processes (all at once: each takes a few seconds to close), kill on timeout."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """The address of a Dask scheduler with two single-threaded workers, each its own process."""
    from distributed import Client

    logs = tmp_path_factory.mktemp("dask_logs")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = []
    try:
        processes.append(
            _spawn(
                [
                    "distributed.cli.dask_scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-dashboard",
                ],
                logs / "scheduler.log",
            )
        )
        for i in range(2):
            processes.append(
                _spawn(
                    [
                        "distributed.cli.dask_worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    logs / f"worker{i}.log",
                )
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        _stop(processes[1:])  # the workers, then the scheduler
        _stop(processes[:1])


@pytest.fixture(scope="module")
def sched_sweep(scheduler, shared_data, tmp_path_factory):
    """A 2 (latent_dim) x 2 (algorithm) sweep of Frey Face points run through --scheduler."""
    sweeps_dir = tmp_path_factory.mktemp("sweeps")
    argv = [
        *SCHED_GRID,
        "--set",
        f"data_dir={shared_data}",
        "--sweeps-dir",
        str(sweeps_dir),
        "--scheduler",
        scheduler,
        "--poll",
        "1",
    ]
    rc, out, err = run_main(argv)
    return {"rc": rc, "out": out, "err": err, "folder": sweeps_dir / "sched", "argv": argv}


def test_scheduler_sweep_trains_every_point(sched_sweep):
    assert sched_sweep["rc"] == 0, sched_sweep["out"] + sched_sweep["err"]
    folder = sched_sweep["folder"]
    points = sorted(p.name for p in (folder / "points").iterdir())
    assert points == [
        "frey_face_gaussian_z2_h50_s0",
        "frey_face_gaussian_z2_h50_s0_ws",
        "frey_face_gaussian_z3_h50_s0",
        "frey_face_gaussian_z3_h50_s0_ws",
    ]
    for point in points:
        run_dir = folder / "points" / point
        for f in (
            "config.json",
            "history.csv",
            "last.pt",
            "best.pt",
            "lr_pilot.csv",
            "02_train.ipynb",
            "point.json",
        ):
            assert (run_dir / f).is_file(), (point, f)
        history = pd.read_csv(run_dir / "history.csv")
        assert history["epoch"].tolist() == [1, 2, 3]
        assert history["samples"].tolist() == [N_TRAIN, 2 * N_TRAIN, 3 * N_TRAIN]  # epochs x n_train
        for column in ("train_elbo", "test_elbo", "minibatch_elbo"):
            assert history[column].map(math.isfinite).all()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["algorithm"] == ("wake_sleep" if point.endswith("_ws") else "aevb")
        assert config["latent_dim"] == int(point.split("_z")[1][0])
        assert (config["epochs"], config["train_subset"]) == (EPOCHS, N_TRAIN)
        assert config["lr_candidates"] == [0.01, 0.02]
        assert Path(config["run_dir"]) == run_dir  # the point folder is the run directory
        assert run_state(run_dir)["finished"] is True
        record = json.loads((run_dir / "point.json").read_text())
        assert record["status"] == "done" and record["error"] is None and record["resume"] is False
        assert record["notebook"] == str(run_dir / "02_train.ipynb") and record["seconds"] > 0
        nb = nbformat.read(run_dir / "02_train.ipynb", as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f'run_dir = "{run_dir}"' in injected.source and "resume = False" in injected.source
    out = sched_sweep["out"]
    assert f"engine: Dask on {sched_sweep['argv'][-3]}" in out
    assert "[1/4] frey_face_gaussian_z2_h50_s0  queued" in out
    assert sum(" done in " in line for line in out.splitlines()) == 4


def test_sweep_table_and_record(sched_sweep):
    folder = sched_sweep["folder"]
    table = pd.read_csv(folder / "sweep.csv")
    assert list(table.columns) == ["point", "latent_dim", "algorithm", *sweep_table.RESULT_COLUMNS]
    assert table["point"].tolist() == [
        "frey_face_gaussian_z2_h50_s0",
        "frey_face_gaussian_z2_h50_s0_ws",
        "frey_face_gaussian_z3_h50_s0",
        "frey_face_gaussian_z3_h50_s0_ws",
    ]
    assert table["latent_dim"].tolist() == [2, 2, 3, 3]
    assert table["algorithm"].tolist() == ["aevb", "wake_sleep"] * 2
    assert (table["status"] == "done").all() and table["error"].isna().all()
    assert (table["epoch"] == EPOCHS).all() and (table["samples"] == EPOCHS * N_TRAIN).all()
    assert table["lr_used"].isin([0.01, 0.02]).all()
    for _, row in table.iterrows():
        history = pd.read_csv(folder / "points" / row["point"] / "history.csv")
        assert row["test_elbo"] == pytest.approx(history["test_elbo"].iloc[-1])
        assert row["best_test_elbo"] == pytest.approx(history["test_elbo"].max())
    record = json.loads((folder / "sweep.json").read_text())
    assert record["grid"] == {"latent_dim": [2, 3], "algorithm": ["aevb", "wake_sleep"]}
    assert record["budget"] == EPOCHS * N_TRAIN and record["status"] == "done"
    assert record["command"].startswith("python -m vae_utils.sweep --name sched --grid latent_dim=2,3")
    assert record["started"] <= record["finished"] and list(record["points"]) == table["point"].tolist()


def test_load_sweep_has_every_trainconfig_field(sched_sweep):
    frame = sweep_table.load_sweep(sched_sweep["folder"])
    assert frame.columns[:3].tolist() == ["point", "run_dir", "status"]
    assert set(sweep_plan.FIELDS) <= set(frame.columns)
    assert all(Path(d).is_absolute() and Path(d).is_dir() for d in frame["run_dir"])
    by_algorithm = frame.groupby("algorithm")["test_elbo"].count()
    assert by_algorithm.to_dict() == {"aevb": 2, "wake_sleep": 2}
    assert (frame["dataset"] == "frey_face").all() and (frame["hidden_dim"] == 50).all()


def test_table_is_rebuilt_from_disk_so_simultaneous_finishes_are_never_lost(sched_sweep, tmp_path):
    """Two points finishing at the same moment, each followed by a rebuild of the table: whatever
    the interleaving, the last table written holds both, since it is read from disk each time."""
    folder = tmp_path / "sched"
    shutil.copytree(sched_sweep["folder"], folder)
    finishing = ["frey_face_gaussian_z2_h50_s0", "frey_face_gaussian_z3_h50_s0_ws"]
    saved = {p: (folder / "points" / p / "point.json").read_text() for p in finishing}
    for p in finishing:  # back to "running"
        record = json.loads(saved[p])
        (folder / "points" / p / "point.json").write_text(json.dumps({**record, "status": "running"}))
    sweep_table.write_sweep_table(folder)
    assert (pd.read_csv(folder / "sweep.csv")["status"] == "running").sum() == 2
    barrier = threading.Barrier(len(finishing))

    def finish(point: str) -> None:
        barrier.wait()
        (folder / "points" / point / "point.json").write_text(saved[point])
        for _ in range(5):
            sweep_table.write_sweep_table(folder)

    threads = [threading.Thread(target=finish, args=(p,)) for p in finishing]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = pd.read_csv(folder / "sweep.csv")
    assert len(table) == 4 and (table["status"] == "done").all()
    assert not list(folder.glob(".sweep.csv.*"))  # atomic writes leave no temporary file


def test_a_sweep_of_another_grid_fails_before_starting(sched_sweep, monkeypatch):
    monkeypatch.setattr(sweep_engine, "_connect", lambda *a: pytest.fail("a cluster was started"))
    folder = sched_sweep["folder"]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    argv = [a if a != str(N_TRAIN * EPOCHS) else str(N_TRAIN * 4) for a in sched_sweep["argv"]]
    rc, out, err = run_main(argv)
    assert rc == 1
    assert "config.json differs in epochs (saved 3, asked 4)" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before


def test_a_finished_sweep_run_again_starts_nothing_and_keeps_its_record(sched_sweep, tmp_path, monkeypatch):
    """Every point done: a rerun (for its report, say) starts no cluster and leaves sweep.json, the
    record of the run that did the work, byte for byte."""
    monkeypatch.setattr(sweep_engine, "_connect", lambda *a: pytest.fail("a cluster was started"))
    folder = tmp_path / "sched"
    shutil.copytree(sched_sweep["folder"], folder)
    record = (folder / "sweep.json").read_bytes()
    argv = [*sched_sweep["argv"]]
    argv[argv.index("--sweeps-dir") + 1] = str(tmp_path)
    rc, out, err = run_main(argv)
    assert rc == 0, out + err
    assert "4 points, 4 already done" in out and "nothing to run" in out
    assert (folder / "sweep.json").read_bytes() == record


def test_resume_after_interrupt_finishes_only_the_missing_point(sched_sweep, tmp_path, monkeypatch):
    """One point interrupted after its first evaluation (Ctrl-C in vae_utils.train); re-running the
    sweep skips the finished points without a kernel and resumes that one to the same history."""
    folder = tmp_path / "sched"
    shutil.copytree(sched_sweep["folder"], folder)
    point = "frey_face_gaussian_z3_h50_s0"
    run_dir = folder / "points" / point
    uninterrupted = pd.read_csv(run_dir / "history.csv")
    saved = json.loads((run_dir / "config.json").read_text())
    config = TrainConfig.from_dict({**saved, "run_dir": str(run_dir)})
    shutil.rmtree(run_dir)
    real_save = training.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        vae_utils.train(config, progress=False)
    monkeypatch.undo()
    assert run_state(run_dir)["finished"] is False and len(pd.read_csv(run_dir / "history.csv")) == 1
    others = [p for p in (folder / "points").iterdir() if p.name != point]
    before = {f: f.stat().st_mtime_ns for p in others for f in (p / "point.json", p / "02_train.ipynb")}

    argv = [*sched_sweep["argv"]]
    argv[argv.index("--sweeps-dir") + 1] = str(tmp_path)
    rc, out, err = run_main(argv)
    assert rc == 0, out + err
    assert "4 points, 3 already done" in out and out.count("done already") == 3
    assert {f: f.stat().st_mtime_ns for f in before} == before  # no kernel touched the finished points
    record = json.loads((run_dir / "point.json").read_text())
    assert record["status"] == "done" and record["resume"] is True
    resumed = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(
        resumed.drop(columns="seconds"), uninterrupted.drop(columns="seconds"), check_exact=False, rtol=1e-6
    )
    assert run_state(run_dir)["finished"] is True
    assert len(json.loads((folder / "sweep.json").read_text())["attempts"]) == 1


# ----------------------------------------------------------------------------- the default LocalCluster


def test_local_cluster_workers_run_without_profiler_or_gil_monitor():
    """The workers only wait on kernels: their sampling profiler and monitors are off or slowed."""
    client, cluster = sweep_engine._connect(None, 1, 1, 1)
    try:
        (settings,) = client.run(
            lambda: {key: dask.config.get(key) for key in sweep_engine.QUIET_WORKERS}
        ).values()
        (environ,) = client.run(lambda: dict(os.environ)).values()
    finally:
        client.close()
        cluster.close()
    assert settings == sweep_engine.QUIET_WORKERS
    assert settings["distributed.worker.profile.enabled"] is False
    # the nanny gives its worker MALLOC_TRIM_THRESHOLD_, which run_point keeps from the kernels
    assert environ.get("MALLOC_TRIM_THRESHOLD_") == "65536" and environ.get("OMP_NUM_THREADS") == "1"


def test_run_point_kernels_get_the_threads_but_not_dasks_malloc_setting(tmp_path, monkeypatch):
    """What a point's kernel inherits: OMP_NUM_THREADS = threads, and no MALLOC_TRIM_THRESHOLD_
    (with it every training step re-maps its tensors: 1.5-2x slower)."""
    seen = {}

    def fake_run_notebook(name, parameters, output, **kwargs):
        seen.update(os.environ)

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "7")  # both restored after the test
    monkeypatch.setattr(sweep_engine, "run_notebook", fake_run_notebook)
    result = sweep_engine.run_point("p", TrainConfig(run_dir=str(tmp_path / "p")).to_dict(), threads=2)
    assert result["status"] == "done"
    assert seen["OMP_NUM_THREADS"] == seen["MKL_NUM_THREADS"] == "2"
    assert "MALLOC_TRIM_THRESHOLD_" not in seen


@pytest.fixture(scope="module")
def local_sweep(shared_data, tmp_path_factory):
    """Two MNIST points on a LocalCluster of 2 workers; lr = 1e8 diverges (TrainingDiverged)."""
    sweeps_dir = tmp_path_factory.mktemp("sweeps_local")
    argv = [
        "--name",
        "local",
        "--grid",
        "lr=0.01,1e8",
        "--set",
        "hidden_dim=50",
        "--set",
        f"data_dir={shared_data}",
        *TINY,
        "--sweeps-dir",
        str(sweeps_dir),
        "--workers",
        "2",
        "--poll",
        "1",
    ]
    rc, out, err = run_main(argv)
    return {"rc": rc, "out": out, "err": err, "folder": sweeps_dir / "local"}


def test_local_cluster_sweep_with_a_failing_point(local_sweep):
    assert local_sweep["rc"] == 1, local_sweep["out"] + local_sweep["err"]
    assert "engine: Dask on a LocalCluster of 2 worker(s)" in local_sweep["out"]
    folder = local_sweep["folder"]
    table = pd.read_csv(folder / "sweep.csv").set_index("point")
    good, bad = "mnist_bernoulli_z2_h50_s0_lr-0.01", "mnist_bernoulli_z2_h50_s0_lr-1e08"
    assert table.index.tolist() == [good, bad]
    assert table.loc[good, "status"] == "done" and table.loc[good, "samples"] == EPOCHS * N_TRAIN
    assert math.isfinite(table.loc[good, "test_elbo"])
    assert table.loc[bad, "status"] == "failed"
    assert table.loc[bad, "error"].startswith("TrainingDiverged: the loss became nan")
    notebook = Path(table.loc[bad, "notebook"])
    assert notebook == folder / "points" / bad / "02_train.ipynb" and notebook.is_file()
    assert f"[2/2] {bad}  failed: {notebook}: TrainingDiverged: " in local_sweep["out"]
    assert f"{bad}: failed: {notebook}: TrainingDiverged" in local_sweep["err"]  # the closing list
    record = json.loads((folder / "points" / bad / "point.json").read_text())
    assert record["status"] == "failed" and "TrainingDiverged" in record["error"]
    assert json.loads((folder / "sweep.json").read_text())["status"] == "failed"


# ----------------------------------------------------------------------------- validation, no cluster


@pytest.fixture
def no_cluster(monkeypatch):
    monkeypatch.setattr(sweep_engine, "_connect", lambda *a: pytest.fail("a cluster was started"))
    monkeypatch.setattr(sweep_engine, "run_point", lambda *a: pytest.fail("a point was run"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "latent_dim=0,3"], "latent_dim = 0 is invalid: allowed an integer >= 1"),
        (
            ["--grid", "decoder=bernoulli,gauss"],
            "decoder = 'gauss' is invalid: allowed one of 'bernoulli', 'gaussian', 'continuous_bernoulli'",
        ),
        (
            ["--set", "lr_candidates=0.01:abc"],
            "lr_candidates = '0.01:abc' is invalid: allowed None or a non-empty list",
        ),
        (
            ["--grid", "decoder=gaussian", "--set", "binarize=dynamic"],
            "binarize = 'dynamic' is invalid: allowed 'none'",
        ),
        (
            ["--grid", "latent=3,5"],
            "unknown TrainConfig field 'latent': allowed ['dataset', 'decoder', 'latent_dim'",
        ),
        (["--grid", "seed=0,0"], "holds point mnist_bernoulli_z2_h500_s0 twice"),
        (["--set", "run_dir=x"], "run_dir cannot be set in a sweep"),
        (["--set", "epochs=3", "--budget", "cpu"], "epochs and --budget both set the training length"),
        (
            ["--budget", "lots"],
            "budget = 'lots' is invalid: allowed one of 'paper', 'cpu', 'smoke' or a number",
        ),
        (["--threads", "0"], "threads = 0 is invalid: allowed an integer >= 1"),
    ],
)
def test_bad_grid_values_fail_before_anything_starts(args, message, tmp_path, no_cluster):
    rc, out, err = run_main(["--name", "bad", *args, "--sweeps-dir", str(tmp_path)])
    assert rc == 2 and message in err, err
    assert not (tmp_path / "bad").exists()


def test_run_sweep_refuses_bad_grids_before_creating_anything(tmp_path, no_cluster):
    with pytest.raises(ValueError, match="latent_dim = -1 is invalid: allowed an integer >= 1"):
        sweep.run_sweep({"latent_dim": [2, -1]}, "bad", sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match=r"name = 'a b' is invalid"):
        sweep.run_sweep({"latent_dim": [2]}, "a b", sweeps_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_ctrl_c_exits_130_with_the_summary_and_no_traceback(tmp_path, no_cluster, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "execute_points", interrupted)
    rc, out, err = run_main(["--name", "cc", "--grid", "latent_dim=2,3", "--sweeps-dir", str(tmp_path)])
    assert rc == 130
    assert "sweep cc: 0 of 2 points done (interrupted)" in out and "re-run the same command" in out
    assert err.strip() == "interrupted (Ctrl-C)"
    assert json.loads((tmp_path / "cc" / "sweep.json").read_text())["status"] == "interrupted"


# ----------------------------------------------------------------------------- planning


def test_overwrite_deletes_the_sweeps_points_and_says_so(tmp_path, capsys):
    plan = sweep_plan.plan_sweep({"latent_dim": [2, 3]}, "ow", sweeps_dir=tmp_path)
    (plan.folder / "points" / "old_point").mkdir(parents=True)
    (plan.folder / "sweep.csv").write_text("point\n")
    with pytest.raises(sweep_plan.SweepError, match="old_point: not a point of this grid(.|\n)*--overwrite"):
        sweep_plan.check_existing(plan)
    assert (plan.folder / "points" / "old_point").is_dir()  # refused: nothing deleted
    sweep_plan.check_existing(plan, overwrite=True)
    assert "--overwrite: deleting 1 point folder(s) of sweep ow" in capsys.readouterr().out
    assert not (plan.folder / "points").exists() and not (plan.folder / "sweep.csv").exists()


def test_figure2_configs_follow_the_paper():
    configs = presets.figure2_configs("cpu")
    assert len(configs) == 54  # 18 curves x seeds 0, 1 and 2
    mnist = [c for c in configs if c.dataset == "mnist"]
    frey = [c for c in configs if c.dataset == "frey_face"]
    assert sorted({c.latent_dim for c in mnist}) == [3, 5, 10, 20, 200]
    assert sorted({c.latent_dim for c in frey}) == [2, 5, 10, 20]
    assert {c.algorithm for c in configs} == {"aevb", "wake_sleep"}
    for c in mnist:
        assert (c.decoder, c.hidden_dim, c.epochs, c.weight_decay) == ("bernoulli", 500, 50, 1 / 60_000)
    for c in frey:
        assert (c.decoder, c.hidden_dim, c.sigmoid_mean) == ("gaussian", 200, True)
        assert c.epochs == math.ceil(10**7 / TRAIN_SIZES["frey_face"]) == 5666
        assert c.weight_decay == 1 / 1765
    for c in configs:
        assert (
            c.init,
            c.optimizer,
            c.lr_candidates,
            c.pilot_samples,
            c.batch_size,
            c.n_samples,
            c.kl,
            c.patience,
            c.eval_per_decade,
        ) == ("paper", "adagrad", list(PAPER_STEP_SIZES), 20_000, 100, 1, "analytic", None, 8)
    names = sweep_plan.point_names(configs)
    assert names[:2] == ["mnist_bernoulli_z3_h500_s0", "mnist_bernoulli_z3_h500_s0_ws"]
    assert len(set(names)) == 54 and names[-1] == "frey_face_gaussian_z20_h200_s2_ws"
    assert {c.epochs for c in presets.figure2_configs("paper") if c.dataset == "mnist"} == {1667}


def test_figure2_configs_tiny_budget_and_overrides():
    configs = presets.figure2_configs(3000, train_subset=300, test_subset=100, device="cpu")
    assert {(c.epochs, c.train_subset, c.test_subset, c.device) for c in configs} == {(10, 300, 100, "cpu")}
    assert {c.pilot_samples for c in configs} == {300}  # min(20,000, budget / 10)
    assert {c.weight_decay for c in configs} == {1 / 300}
    assert {c.epochs for c in presets.figure2_configs("cpu", epochs=2)} == {2}


def test_budgets():
    assert presets.budget_epochs("cpu", "mnist") == 50 and presets.budget_epochs("paper", "mnist") == 1667
    assert presets.budget_epochs("cpu", "frey_face") == 5666
    assert presets.budget_epochs(1000, "mnist", train_subset=300) == 4
    assert presets.budget_epochs("3e6", "fashion_mnist") == 50
    assert sweep_plan.parse_budget("1e6") == 1_000_000 and sweep_plan.parse_budget("smoke") == "smoke"


def test_values_are_read_as_the_fields_type():
    assert sweep_plan.parse_assignment("latent_dim=3,5,10", grid=True) == ("latent_dim", [3, 5, 10])
    assert sweep_plan.parse_assignment("lr=0.01,1e-3", grid=True) == ("lr", [0.01, 0.001])
    assert sweep_plan.parse_assignment("lr_candidates=0.01:0.02,0.1", grid=True) == (
        "lr_candidates",
        [[0.01, 0.02], [0.1]],
    )
    assert sweep_plan.parse_assignment("patience=None", grid=False) == ("patience", None)
    assert sweep_plan.parse_assignment("sigmoid_mean=true", grid=False) == ("sigmoid_mean", True)
    assert sweep_plan.parse_assignment("train-subset=1e3", grid=False) == ("train_subset", 1000)
    assert sweep_plan.parse_assignment("latent_dim=2.5", grid=False) == (
        "latent_dim",
        2.5,
    )  # TrainConfig refuses
    assert sweep_plan.parse_assignment("dataset=mnist", grid=False) == ("dataset", "mnist")
    assert sweep_plan.parse_value("data_dir", "/data") == "/data"


def test_point_names_say_every_other_axis():
    plan = sweep_plan.plan_sweep(
        {"lr": [0.01, 1e-3], "latent_dim": [3, 5], "lr_candidates": [None, [0.1, 0.2]]},
        "p",
        fixed={"epochs": 2},
    )
    assert list(plan.points)[:2] == [
        "mnist_bernoulli_z3_h500_s0_lr-0.01_lr_candidates-None",
        "mnist_bernoulli_z3_h500_s0_lr-0.01_lr_candidates-0.1+0.2",
    ]
    assert len(plan.points) == 8 and plan.axes == ["latent_dim", "lr", "lr_candidates"]
    assert all(c.run_dir == str(plan.folder / "points" / p) for p, c in plan.points.items())
    # a list of configs is named apart by the fields in which configs of the same name differ
    assert sweep_plan.point_names([TrainConfig(kl="mc"), TrainConfig(), TrainConfig(seed=1)]) == [
        "mnist_bernoulli_z2_h500_s0_kl-mc",
        "mnist_bernoulli_z2_h500_s0_kl-analytic",
        "mnist_bernoulli_z2_h500_s1",
    ]


def test_longest_points_first_and_progress_numbers():
    configs = presets.figure2_configs("cpu")
    costs = dict(zip(sweep_plan.point_names(configs), map(sweep_engine.point_cost, configs), strict=True))
    assert costs["mnist_bernoulli_z200_h500_s0"] > costs["mnist_bernoulli_z3_h500_s0"]
    # MNIST, N_z = 3, AEVB: 50 epochs of 600 steps and a pilot of 3 x 200 steps, each step
    # 100 x 3 x (784*500 + 500*6 + 3*500 + 500*784) multiply-adds
    step = (
        sweep_engine.STEP_SECONDS
        + 100 * 3 * (784 * 500 * 2 + 500 * 9) / sweep_engine.MULTIPLY_ADDS_PER_SECOND
    )
    assert costs["mnist_bernoulli_z3_h500_s0"] == pytest.approx(30_600 * step)
    # wake-sleep runs one forward pass more of each network; the Gaussian decoder has 2 outputs per
    # pixel: a Frey Face curve (10^7 samples) costs more than an MNIST one (3 x 10^6), and is first
    assert costs["frey_face_gaussian_z2_h200_s0_ws"] > costs["frey_face_gaussian_z2_h200_s0"] * 1.2
    assert min(costs[n] for n in costs if n.startswith("frey")) > costs["mnist_bernoulli_z20_h500_s0"]
    assert max(costs, key=costs.__getitem__) == "frey_face_gaussian_z20_h200_s0_ws"
    tiny = TrainConfig(epochs=1, train_subset=100)
    assert sweep_engine.point_cost(tiny) < sweep_engine.point_cost(TrainConfig(epochs=2, train_subset=100))
    assert sweep_engine.short_count(1.2e6) == "1.2e6" and sweep_engine.short_count(900) == "900"
    assert sweep_engine.duration_text(366) == "6.1 min" and sweep_engine.duration_text(41) == "41 s"


def test_dry_run_lists_the_figure2_grid(tmp_path, no_cluster):
    rc, out, _ = run_main(["--preset", "figure2", "--dry-run", "--sweeps-dir", str(tmp_path)])
    assert rc == 0 and out.startswith("[ 1/54] mnist_bernoulli_z3_h500_s0  50 epochs, 3.0e6 samples")
    assert "[54/54] frey_face_gaussian_z20_h200_s2_ws  5666 epochs, 1.0e7 samples" in out
    assert "folder: " + str(tmp_path / "figure2_cpu") in out
    assert not list(tmp_path.iterdir())


def test_dry_run_lists_the_figure3_grid_with_mcems_cost_and_short_names(tmp_path, no_cluster):
    """The names add train_subset, not the epochs, weight decay and step sizes derived from it; MCEM's
    samples count its HMC work (5,218 iterations of 1,000 x 11 + 500 datapoints)."""
    rc, out, _ = run_main(["--preset", "figure3", "--dry-run", "--sweeps-dir", str(tmp_path)])
    assert rc == 0 and out.startswith(
        "[1/6] mnist_bernoulli_z3_h100_s0_train_subset-1000  60000 epochs, 6.0e7"
    )
    assert "[3/6] mnist_bernoulli_z3_h100_s0_mcem_train_subset-1000  5218 epochs, 6.0e7 samples" in out
    assert "[6/6] mnist_bernoulli_z3_h100_s0_mcem_train_subset-50000  109 epochs, 6.0e7 samples" in out
    assert "folder: " + str(tmp_path / "figure3_cpu") in out
    # only derived fields apart: they name the points
    a, b = TrainConfig(epochs=2), TrainConfig(epochs=3)
    assert sweep_plan.point_names([a, b]) == [
        "mnist_bernoulli_z2_h500_s0_epochs-2",
        "mnist_bernoulli_z2_h500_s0_epochs-3",
    ]
    # MCEM's cost: its decoder passes over every evaluated datapoint
    mcem = presets.figure3_configs()[5]
    assert sweep_engine.point_cost(mcem) < sweep_engine.point_cost(presets.figure3_configs()[3])


# ----------------------------------------------------------------------------- the Figure 2 report


@pytest.mark.parametrize("preset", sorted(sweep.REPORTS))
def test_each_presets_report_notebook_takes_the_sweep_and_a_results_path(preset):
    from vae_utils.notebook_runner import declared_parameters

    notebook, folder, title = sweep.REPORTS[preset]
    wanted = {"sweep_dir": "sweeps/x", "results_path": "reports/x/results.json"}
    assert declared_parameters(NOTEBOOKS_DIR / f"{notebook}.ipynb", wanted, explicit=wanted) == wanted
    assert folder.name == preset and preset in presets.PRESETS and title


def test_figure2_report_is_skipped_without_its_notebook(tmp_path, capsys):
    assert sweep.write_report("figure2", tmp_path / "s", tmp_path / "reports", notebooks_dir=tmp_path) is None
    assert "report skipped" in capsys.readouterr().out and not (tmp_path / "reports").exists()


def test_figure2_report_runs_the_notebook_and_exports_html(tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweeps" / "f2"
    configs = presets.figure2_configs(200, train_subset=100, test_subset=100)[
        :2
    ]  # MNIST N_z = 3, AEVB and WS
    names = sweep_plan.point_names(configs)
    (sweep_dir / "points").mkdir(parents=True)
    points = {n: c.to_dict() for n, c in zip(names, configs, strict=True)}
    (sweep_dir / "sweep.json").write_text(
        json.dumps({"points": points, "budget": 200, "command": "python -m vae_utils.sweep"})
    )
    for name, elbo in zip(names, (-120.0, -150.0), strict=True):
        (sweep_dir / "points" / name).mkdir()
        (sweep_dir / "points" / name / "point.json").write_text(json.dumps({"status": "done"}))
        row = {"epoch": 2, "samples": 200, "seconds": 1.0, "train_elbo": elbo, "test_elbo": elbo}
        history = pd.DataFrame([{**row, "train_kl": 3.0, "test_kl": 3.0}])
        history.to_csv(sweep_dir / "points" / name / "history.csv", index=False)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                'sweep_dir = "sweeps/figure2_cpu"\nresults_path = None', metadata={"tags": ["parameters"]}
            )
        ],
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
    )
    nbformat.write(nb, tmp_path / "06_figure2.ipynb")
    calls = []

    def fake_run_notebook(notebook, parameters, output, **kwargs):  # the kernel is not what is tested here
        calls.append((notebook, parameters, output, kwargs["cwd"]))
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output)
        table = figure2.figure2_table(figure2.figure2_histories(sweep_table.load_sweep(sweep_dir)))
        results.write_results(parameters["results_path"], notebook, figure2.figure2_results(table))
        return output

    monkeypatch.setattr(sweep, "run_notebook", fake_run_notebook)
    out = sweep.write_report("figure2", sweep_dir, tmp_path / "reports" / "figure2", notebooks_dir=tmp_path)
    assert out == tmp_path / "reports" / "figure2" / "06_figure2.ipynb"
    wanted = {"sweep_dir": str(sweep_dir), "results_path": str(out.parent / "results.json")}
    assert calls == [("06_figure2", wanted, out, tmp_path)]
    assert out.with_suffix(".html").is_file()
    report = json.loads((out.parent / "report.json").read_text())
    assert report["pages"] == ["06_figure2.html"] and report["command"] == "python -m vae_utils.sweep"
    assert report["headline"] == {
        "points done": "2 of 2",
        "budget": 200,
        "MNIST: best final test ELBO, AEVB": "-120.00",
        "MNIST: best final test ELBO, wake-sleep": "-150.00",
    }
    assert "Figure 2" in (tmp_path / "reports" / "index.html").read_text()


def test_finished_points_names_the_parameter_and_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=r"run_dirs = \[\] is invalid: allowed None or a non-empty list"):
        sweep_table.finished_points("sweeps/x", [])
    with pytest.raises(ValueError, match="sweep_dir = 3 is invalid: allowed a sweep folder"):
        sweep_table.finished_points(3)
    with pytest.raises(FileNotFoundError, match="sweep.json"):
        sweep_table.finished_points(str(tmp_path))
    run = tmp_path / "never_trained"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig(epochs=2).to_dict()))
    with pytest.raises(ValueError, match="no finished run in .*never_trained.*: nothing to analyse"):
        sweep_table.finished_points(None, [str(run)])


def test_kernel_import_problem_names_what_a_points_kernel_would_hit(tmp_path):
    assert sweep_engine.kernel_import_problem() is None  # this Python, from outside the project: this package
    missing = tmp_path / "python-without-vae_utils"
    missing.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'vae_utils'\" >&2\nexit 1\n")
    missing.chmod(0o755)
    assert (
        sweep_engine.kernel_import_problem(str(missing)) == "ModuleNotFoundError: No module named 'vae_utils'"
    )
    elsewhere = tmp_path / "python-with-another-copy"
    elsewhere.write_text("#!/bin/sh\necho /old/clone/vae_utils/__init__.py\n")
    elsewhere.chmod(0o755)
    problem = sweep_engine.kernel_import_problem(str(elsewhere))
    assert (
        problem
        == f"it imports vae_utils from /old/clone/vae_utils, not {Path(vae_utils.__file__).resolve().parent}"
    )


def test_likelihoods_report_headline_is_notebook_07s_estimates(tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweeps" / "lik"
    every = presets.likelihood_configs(8, train_subset=100, test_subset=100)
    configs = [every[0], every[3], every[4]]  # dynamic binarisation, continuous Bernoulli, Gaussian
    names = sweep_plan.point_names(configs)
    (sweep_dir / "points").mkdir(parents=True)
    command = "python -m vae_utils.sweep --preset likelihoods --budget cpu --overwrite"
    points = {n: c.to_dict() for n, c in zip(names, configs, strict=True)}
    (sweep_dir / "sweep.json").write_text(json.dumps({"points": points, "budget": "cpu", "command": command}))
    for name, config in zip(names, configs, strict=True):
        folder = sweep_dir / "points" / name
        folder.mkdir()
        (folder / "point.json").write_text(json.dumps({"status": "done"}))
        (folder / "config.json").write_text(json.dumps(config.to_dict()))
        history = pd.DataFrame(
            [{"epoch": 8, "samples": 800, "seconds": 1.0, "train_elbo": -99.0, "test_elbo": -98.0}]
        )
        history.to_csv(folder / "history.csv", index=False)
    runs = {likelihoods.likelihood_label(c): SimpleNamespace(config=c) for c in configs}
    table = pd.DataFrame(  # what 07's likelihood_table gives (its other columns left out)
        {
            "test images": [10000] * 3,
            "NLL": [92.83, -3541.55, -1188.0],
            "log p(x), k=5000": [-92.83, 3541.55, 1188.0],
        },
        index=list(runs),
    )
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                'sweep_dir = "x"\nresults_path = None', metadata={"tags": ["parameters"]}
            )
        ],
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
    )
    nbformat.write(nb, tmp_path / "07_likelihoods.ipynb")

    def fake_run_notebook(notebook, parameters, output, **kwargs):  # as 07's last cell
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output)
        results.write_results(
            parameters["results_path"], notebook, likelihoods.likelihood_results([table], runs, 5000)
        )
        return output

    monkeypatch.setattr(sweep, "run_notebook", fake_run_notebook)
    (tmp_path / "reports" / "likelihoods").mkdir(parents=True)
    (tmp_path / "reports" / "likelihoods" / "results.json").write_text("stale")  # an earlier run's: removed
    out = sweep.write_report("likelihoods", sweep_dir, tmp_path / "reports" / "likelihoods", tmp_path)
    report = json.loads((out.parent / "report.json").read_text())
    assert report["command"] == "python -m vae_utils.sweep --preset likelihoods --budget cpu"
    assert report["headline"] == {
        "points done": "3 of 3",
        "budget": "cpu",
        "test NLL, k=5000: VAE, dynamic binarisation": "92.83 (10,000 images; Burda et al.: 86.76)",
        "test log p(x), k=5000: continuous Bernoulli": "3541.55 (10,000 images)",
        "test log p(x), k=5000: Gaussian": "1188.00 (10,000 images)",
    }


def test_an_unreachable_scheduler_is_a_one_line_error_naming_the_address(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_engine, "CONNECT_SECONDS", 2)  # 10 s by default
    started = time.monotonic()
    argv = ["--name", "far", "--grid", "latent_dim=2", "--sweeps-dir", str(tmp_path)]
    rc, out, err = run_main([*argv, "--scheduler", "tcp://127.0.0.1:1"])
    assert rc == 1 and time.monotonic() - started < 30
    (line,) = err.strip().splitlines()
    assert line.startswith(
        "error: scheduler = 'tcp://127.0.0.1:1': no Dask scheduler answered there within 2 s"
    )
    assert "leave --scheduler out to start a LocalCluster" in line and "Traceback" not in out + err
    assert "0 of 1 points done (not started)" in out and "re-run the same command" not in out
    record = json.loads((tmp_path / "far" / "sweep.json").read_text())
    assert record["status"] == "not started" and "tcp://127.0.0.1:1" in record["error"]


def test_list_values_are_separated_by_a_colon_in_both_command_lines(capsys):
    from vae_utils import study

    assert sweep_plan.parse_assignment("lr_candidates=0.01:0.1", grid=False) == ("lr_candidates", [0.01, 0.1])
    overrides, _ = study.parse_args(["--lr-candidates", "0.01:0.1"])
    assert overrides["lr_candidates"] == [0.01, 0.1] and capsys.readouterr().err == ""
    overrides, _ = study.parse_args(["--lr-candidates", "0.01,0.1"])  # the study's earlier separator
    assert overrides["lr_candidates"] == [0.01, 0.1]
    assert "list values are separated by ':' in both command lines" in capsys.readouterr().err


def test_a_malformed_scheduler_address_says_what_is_allowed(tmp_path):
    argv = [
        "--name",
        "bad",
        "--grid",
        "latent_dim=2",
        "--sweeps-dir",
        str(tmp_path),
        "--scheduler",
        "foo:bar",
    ]
    rc, _, err = run_main(argv)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().startswith("error: scheduler = 'foo:bar' is invalid (")
    assert err.strip().endswith("allowed a Dask scheduler address, tcp://HOST:PORT (default port 8786)")
