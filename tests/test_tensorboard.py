"""TensorBoard events (vae_utils.tensorboard_log), read back with TensorBoard's own readers: the
scalars equal history.csv (steps = training samples, values to float32), the images are there, a
run crashed and resumed twice has every step once and the scalars of an uninterrupted run,
``tensorboard=False`` writes nothing, a sweep's points show as runs named by their point, and the
Dask dashboard link a sweep prints serves its status page. Tiny runs on a 1,000-image MNIST subset.
"""

import logging
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest
from small_runs import BATCH, TRAINED_RUN_FILES, small_run_config
from tensorboard.backend.event_processing import event_file_loader, plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

import vae_utils.steps as S
import vae_utils.training as T
from vae_utils import sweep_engine, sweep_plan
from vae_utils.data import load_dataset
from vae_utils.runfiles import TB_DIR
from vae_utils.tensorboard_log import (
    LR_TAG,
    N_IMAGES,
    PRIOR_SAMPLES_TAG,
    RECONSTRUCTIONS_TAG,
    SCALAR_TAGS,
    TensorBoardLog,
    event_files,
)
from vae_utils.training import train

N_TRAIN, N_TEST = 1000, 300
N_BATCHES = N_TRAIN // BATCH
EPOCHS = 4
STEPS = [N_TRAIN * e for e in range(1, EPOCHS + 1)]
IMAGE_STEPS = [1000, 4000]  # the first evaluation; 2,000 and 3,000 reach no new 10^(j/2); the last


def make_config(run_dir, shared_data, **overrides):
    sizes = {"hidden_dim": 50, "latent_dim": 4, "train_subset": N_TRAIN, "test_subset": N_TEST}
    return small_run_config(run_dir, shared_data, **{"epochs": EPOCHS, **sizes, **overrides})


def read_events(log_dir) -> EventAccumulator:
    """Every event of the run (no reservoir sampling), as TensorBoard's Python reader shows them."""
    events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0, IMAGES: 0})
    events.Reload()
    return events


def server_scalars(log_dir, tag: str) -> tuple[list[int], np.ndarray]:
    """The points of ``tag`` as ``tensorboard --load_fast=false`` serves them: its loader treats
    the first SessionLog START of a run as its start, not a restart (every file needs one)."""
    events = plugin_event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={plugin_event_accumulator.TENSORS: 0}
    )
    events.Reload()
    points = events.Tensors(tag)
    return [p.step for p in points], np.array([p.tensor_proto.float_val[0] for p in points], np.float32)


def scalars(events: EventAccumulator, tag: str) -> tuple[list[int], np.ndarray]:
    points = events.Scalars(tag)
    return [p.step for p in points], np.array([p.value for p in points], dtype=np.float32)


def assert_scalars_equal_history(events: EventAccumulator, history: pd.DataFrame, lr: float) -> None:
    """Every tag at the history's samples, once each, holding the column's values as float32."""
    for column, tag in SCALAR_TAGS.items():
        if history[column].isna().all():
            assert tag not in events.Tags()["scalars"], tag
            continue
        steps, values = scalars(events, tag)
        assert steps == history["samples"].tolist(), (tag, steps)
        np.testing.assert_array_equal(values, history[column].to_numpy(np.float32), err_msg=tag)
    steps, values = scalars(events, LR_TAG)
    assert steps == history["samples"].tolist()
    np.testing.assert_array_equal(values, np.float32(lr))


@pytest.fixture(scope="module")
def mnist_small(shared_data):
    return load_dataset("mnist", shared_data, train_subset=N_TRAIN, test_subset=N_TEST)


@pytest.fixture(scope="module")
def sweep_folder(tmp_path_factory):
    """A sweep's layout: the runs below live in <folder>/points/<point>/."""
    return tmp_path_factory.mktemp("sweeps") / "tiny"


@pytest.fixture(scope="module")
def full_run(sweep_folder, shared_data, mnist_small):
    """An uninterrupted 4-epoch run that also estimates the test log p(x) at each evaluation."""
    config = make_config(sweep_folder / "points" / "full", shared_data, eval_iw_samples=3)
    return config, train(config, progress=False, data=mnist_small)


def test_events_hold_the_history_and_images(full_run):
    """tb/ holds one event file whose scalars are history.csv's rows at its samples (to float32),
    the step size, and the two image grids at the first and last evaluations, each of the size
    the tiling gives (2 rows of N_IMAGES 28 x 28 images, 2-pixel borders). tb is a run file."""
    config, run = full_run
    assert sorted(p.name for p in config.path.iterdir()) == TRAINED_RUN_FILES
    assert len(event_files(config.path / TB_DIR)) == 1
    history = pd.read_csv(config.path / "history.csv")
    assert history["samples"].tolist() == STEPS and history["test_log_px"].notna().all()
    events = read_events(config.path / TB_DIR)
    computed = [tag for column, tag in SCALAR_TAGS.items() if history[column].notna().any()]
    assert sorted(events.Tags()["scalars"]) == sorted([*computed, LR_TAG])
    assert (
        "log_px_hmc/test" not in computed
    )  # Figure 3's estimate only with eval_marginal (test_mcem_training)
    assert_scalars_equal_history(events, history, config.lr)
    for tag in (RECONSTRUCTIONS_TAG, PRIOR_SAMPLES_TAG):
        images = events.Images(tag)
        assert [i.step for i in images] == IMAGE_STEPS, tag
        assert {(i.height, i.width) for i in images} == {(2 * 30 + 2, N_IMAGES * 30 + 2)}
        assert images[0].encoded_image_string != images[-1].encoded_image_string  # the model learnt


class Crash(Exception):
    """Stands for a kill at the worst moments: after the evaluation's events, before its checkpoint,
    and in the middle of an epoch."""


def test_resumed_run_has_each_step_once_and_the_uninterrupted_scalars(
    full_run, sweep_folder, shared_data, mnist_small, monkeypatch
):
    """Crash 1 comes after epoch 2's events were flushed but before its checkpoint: the event file
    holds step 2,000, which the resume (from epoch 1) writes again. Crash 2 comes in the middle of
    epoch 4 of the resumed process. After the second resume, the three event files hold step 2,000
    twice on disk, yet TensorBoard's reader shows each step once (the second file's purge_step,
    1,001, drops the first file's later events) with the scalars of the uninterrupted run's
    history, and so does the loader of TensorBoard's Python server; the images are at the same
    steps as its images."""
    _, full = full_run
    config = make_config(sweep_folder / "points" / "cut", shared_data, eval_iw_samples=3)

    real_save, saves = T.save_checkpoint, []

    def crash_on_second_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise Crash
        return real_save(*args, **kwargs)

    monkeypatch.setattr(T, "save_checkpoint", crash_on_second_save)
    with pytest.raises(Crash):
        train(config, progress=False, data=mnist_small)
    monkeypatch.undo()
    assert pd.read_csv(config.path / "history.csv")["samples"].tolist() == [1000]
    assert scalars(read_events(config.path / TB_DIR), "elbo/test")[0] == [1000, 2000]

    real_elbo, calls = S.elbo, []

    def crash_in_epoch_4(*args, **kwargs):  # the resumed process trains epochs 2, 3, 4...
        calls.append(1)
        if len(calls) == 2 * N_BATCHES + 2:
            raise Crash
        return real_elbo(*args, **kwargs)

    monkeypatch.setattr(S, "elbo", crash_in_epoch_4)
    with pytest.raises(Crash):
        train(config, resume=True, progress=False, data=mnist_small)
    monkeypatch.undo()
    assert pd.read_csv(config.path / "history.csv")["samples"].tolist() == [1000, 2000, 3000]

    resumed = train(config, resume=True, progress=False, data=mnist_small)
    files = event_files(config.path / TB_DIR)
    assert len(files) == 3
    written = [
        event.step
        for f in files
        for event in event_file_loader.EventFileLoader(str(f)).Load()
        if any(v.tag == "elbo/test" for v in event.summary.value)
    ]
    assert written == [1000, 2000, 2000, 3000, 4000]  # on disk, step 2,000 twice
    history = pd.read_csv(config.path / "history.csv")
    pd.testing.assert_frame_equal(
        history.drop(columns="seconds"), full.history.drop(columns="seconds"), check_exact=True
    )
    events = read_events(config.path / TB_DIR)
    assert_scalars_equal_history(events, full.history, config.lr)
    steps, values = server_scalars(config.path / TB_DIR, "elbo/test")
    assert steps == STEPS
    np.testing.assert_array_equal(values, full.history["test_elbo"].to_numpy(np.float32))
    for tag in (RECONSTRUCTIONS_TAG, PRIOR_SAMPLES_TAG):
        assert [i.step for i in events.Images(tag)] == IMAGE_STEPS
    # resuming a finished run writes no event file
    train(config, resume=True, progress=False, data=mnist_small)
    assert event_files(config.path / TB_DIR) == files
    assert resumed.history.equals(history)


@pytest.mark.usefixtures("full_run")  # its run is one of the folder's points
def test_a_sweeps_points_show_as_runs_named_by_their_point(sweep_folder):
    """``tensorboard --logdir <sweep folder>`` finds one run per point: points/<point>/tb."""
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep_folder)).Runs()
    assert f"points/full/{TB_DIR}" in runs
    assert all(name.startswith("points/") and name.endswith(f"/{TB_DIR}") for name in runs), runs


def test_tensorboard_false_writes_no_events_and_the_same_history(
    tmp_path, full_run, shared_data, mnist_small
):
    """tensorboard=False: no tb/ at all, and the history of the run with events (writing them
    draws no random number and changes no state). The switch is a placement field, so a run may
    be resumed with it switched either way."""
    config = make_config(tmp_path / "run", shared_data, eval_iw_samples=3, tensorboard=False)
    run = train(config, progress=False, data=mnist_small)
    assert sorted(p.name for p in config.path.iterdir()) == sorted(set(TRAINED_RUN_FILES) - {TB_DIR})
    pd.testing.assert_frame_equal(
        run.history.drop(columns="seconds"), full_run[1].history.drop(columns="seconds"), check_exact=True
    )
    on = make_config(tmp_path / "run", shared_data, eval_iw_samples=3, tensorboard=True)
    assert on.differences(config.to_dict()) == {}


def test_a_failing_filesystem_warns_once_and_switches_the_events_off(tmp_path):
    """An OSError while writing (here tb/ cannot be made: a file holds its name) is a warning, not
    the end of the run: the log switches itself off and later writes do nothing."""
    (tmp_path / TB_DIR).write_text("not a folder")
    log = TensorBoardLog(tmp_path / TB_DIR)
    row = {**dict.fromkeys(SCALAR_TAGS, -100.0), "samples": 100}
    with pytest.warns(UserWarning, match="could not be written"):
        log.write(row, 0.01, 0)
    assert not log.enabled
    log.write(row, 0.01, 0)  # no second warning (pytest's filterwarnings would not hide one)
    log.close()
    assert (tmp_path / TB_DIR).read_text() == "not a folder"


def test_import_vae_utils_does_not_import_tensorboard():
    """tensorboard is imported when the first event is written, not by ``import vae_utils``."""
    code = (
        "import sys, vae_utils, vae_utils.training; "
        "print(sorted(m for m in sys.modules if 'tensorboard' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['vae_utils.tensorboard_log']", out.stdout


def test_sweep_prints_a_dashboard_link_that_serves_and_the_tensorboard_command(tmp_path):
    """With bokeh installed (pinned), a cluster's dashboard link answers HTTP 200 on /status; the
    sweep prints it and the ``tensorboard --logdir`` command of its folder. A scheduler that serves
    no dashboard (``dask scheduler --no-dashboard``) still names an address, which answers 404:
    no dashboard line then. With every point's tensorboard off, no tensorboard line."""
    from distributed import Client, LocalCluster

    grid = {"latent_dim": [2, 3]}
    plan = sweep_plan.plan_sweep(grid, "tiny", sweeps_dir=tmp_path)
    quiet = sweep_plan.plan_sweep(grid, "quiet", fixed={"tensorboard": False}, sweeps_dir=tmp_path)
    for dashboard in (True, False):
        with (
            LocalCluster(
                n_workers=0,
                processes=False,
                dashboard_address=":0",
                scheduler_kwargs={"dashboard": dashboard},
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            link, answers = sweep_engine.dashboard_link(client)
            if dashboard:
                assert answers and link is not None and link.endswith("/status"), link
                with urllib.request.urlopen(link, timeout=30) as response:
                    assert response.status == 200
                assert sweep_engine.live_links(client, quiet) == [f"dashboard: {link}"]
            else:
                assert (link, answers) == (None, False)
            lines = sweep_engine.live_links(client, plan)
        tensorboard = f"live curves: tensorboard --logdir {tmp_path / 'tiny'}"
        assert lines == ([f"dashboard: {link}"] if dashboard else []) + [tensorboard]
