"""Monte Carlo EM through train(): its cost count, Figure 3's evaluation, exact resumption, the
same seed giving the same history, and the NaN guard, as for AEVB and wake-sleep."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from small_runs import small_run_config, train_interrupted
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

import vae_utils.mcem as M
from vae_utils.config import TrainConfig
from vae_utils.data import load_dataset
from vae_utils.runfiles import TB_DIR, load_run
from vae_utils.tensorboard_log import PRIOR_SAMPLES_TAG, SCALAR_TAGS
from vae_utils.training import TrainingDiverged, train

N_TRAIN, N_TEST = 300, 100
PER_EPOCH = N_TRAIN * (M.LEAPFROG_STEPS + 1) + M.M_STEPS * 100  # one iteration: HMC, then 5 updates


def mcem_config(run_dir, shared_data, **overrides) -> TrainConfig:
    fields = dict(
        algorithm="mcem",
        latent_dim=3,
        hidden_dim=20,
        train_subset=N_TRAIN,
        test_subset=N_TEST,
        patience=None,
        eval_marginal=20,
        tensorboard=False,
        dtype="float64",
    )
    return small_run_config(run_dir, shared_data, **{**fields, **overrides})


@pytest.fixture(scope="module")
def data(shared_data):
    return load_dataset("mnist", shared_data, train_subset=N_TRAIN, test_subset=N_TEST, dtype="float64")


def without_seconds(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns="seconds")


def test_mcem_counts_its_evaluations_and_is_judged_by_its_marginal_likelihood(tmp_path, shared_data, data):
    config = mcem_config(tmp_path / "run", shared_data, epochs=3, tensorboard=True)
    run = train(config, progress=False, data=data)
    h = run.history
    assert h["samples"].tolist() == [PER_EPOCH * e for e in (1, 2, 3)]  # HMC included
    assert h[["train_elbo", "test_elbo", "test_log_px"]].isna().all().all()  # no encoder
    assert h[["train_log_px_hmc", "test_log_px_hmc"]].notna().all().all()
    # importance sampling from a Student-t fitted to the same draws: close to App. D's estimate
    assert (h["test_log_px_hmc_is"] - h["test_log_px_hmc"]).abs().max() < 1.0
    assert h["train_log_px_hmc"].iloc[-1] > h["train_log_px_hmc"].iloc[0] + 5  # it learns
    assert (h["minibatch_elbo"] < 0).all()  # the mean log p(x, z) of its updates
    assert run.best_epoch == int(h.loc[h["test_log_px_hmc"].idxmax(), "epoch"])
    assert run.config.name.endswith("_mcem")
    events = EventAccumulator(str(config.path / TB_DIR), size_guidance={SCALARS: 0, IMAGES: 0})
    events.Reload()
    for column in ("train_log_px_hmc", "test_log_px_hmc"):  # live, against its cost
        points = events.Scalars(SCALAR_TAGS[column])
        assert [p.step for p in points] == h["samples"].tolist()
        assert [p.value for p in points] == pytest.approx(h[column].tolist(), rel=1e-6)
    assert "elbo/test" not in events.Tags()["scalars"]  # no encoder, no ELBO
    assert events.Tags()["images"] == [PRIOR_SAMPLES_TAG]  # nor reconstructions


def test_an_interrupted_mcem_run_resumes_exactly(tmp_path, shared_data, data, monkeypatch):
    """Interrupt a 3-epoch run in epoch 2's M-step (after its E-step has moved every z); resuming
    from last.pt (persistent z, HMC step size, optimizer and generator state) gives the history
    and weights of a run never interrupted."""
    full = train(mcem_config(tmp_path / "full", shared_data), progress=False, data=data)
    config = mcem_config(tmp_path / "cut", shared_data)
    train_interrupted(monkeypatch, M, "m_step", 2, config, data=data)  # in epoch 2's M-step
    assert len(pd.read_csv(config.path / "history.csv")) == 1
    saved = torch.load(config.path / "last.pt", weights_only=False)["state"]["mcem"]
    assert saved["z"].shape == (N_TRAIN, 3) and saved["evaluations"] == PER_EPOCH
    resumed = train(config, resume=True, progress=False, data=data)
    pd.testing.assert_frame_equal(
        without_seconds(resumed.history), without_seconds(full.history), check_exact=True
    )
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_compiled_mcem_matches_the_eager_e_step_reproduces_and_resumes_exactly(
    tmp_path, shared_data, data, monkeypatch
):
    """compile=True computes the E-step's log p(x, z) and its gradient as one compiled graph. From
    the same state one E-step moves every z as the eager one does, to float rounding, with the same
    acceptances and step size; two compiled runs give the same history; a compiled run interrupted
    in epoch 2's M-step resumes exactly."""
    from vae_utils.compiled_step import posterior_value_and_grad
    from vae_utils.model import VAE

    config = mcem_config(tmp_path / "step", shared_data, compile=True)
    torch.manual_seed(0)
    decoder = VAE.from_config(config, data.dim).decoder.double()
    states = []
    for value_and_grad in (None, posterior_value_and_grad(decoder, config)):
        generator = torch.Generator().manual_seed(1)
        state = M.MCEMState.start(N_TRAIN, 3, generator, torch.float64, torch.device("cpu"))
        for _ in range(2):
            M.e_step(decoder, data.x_train, state, generator, value_and_grad=value_and_grad)
        states.append(state)
    eager, compiled = states
    assert 0.5 < compiled.acceptance == eager.acceptance and compiled.step_size == eager.step_size
    torch.testing.assert_close(compiled.z, eager.z, rtol=0, atol=1e-12)
    assert not torch.equal(
        compiled.z,
        M.MCEMState.start(N_TRAIN, 3, torch.Generator().manual_seed(1), torch.float64, torch.device("cpu")).z,
    )

    full, twin = (
        train(mcem_config(tmp_path / n, shared_data, compile=True), progress=False, data=data) for n in "ab"
    )
    pd.testing.assert_frame_equal(
        without_seconds(full.history), without_seconds(twin.history), check_exact=True
    )
    config = mcem_config(tmp_path / "cut", shared_data, compile=True)
    train_interrupted(monkeypatch, M, "m_step", 2, config, data=data)  # in epoch 2's M-step
    resumed = train(config, resume=True, progress=False, data=data)
    pd.testing.assert_frame_equal(
        without_seconds(resumed.history), without_seconds(full.history), check_exact=True
    )
    # and it is the eager run's history, to float rounding (no acceptance flipped here, in float64)
    eager_run = train(mcem_config(tmp_path / "eager", shared_data), progress=False, data=data)
    pd.testing.assert_frame_equal(
        without_seconds(eager_run.history), without_seconds(full.history), rtol=1e-9
    )


def test_an_mcem_evaluation_that_fails_is_never_the_best(tmp_path, shared_data, data, monkeypatch):
    """MCEM is judged by its test log p(x) (App. D). An evaluation whose estimate came out NaN must
    not replace best.pt, nor stop later evaluations from becoming the best."""
    import vae_utils.training as T

    real, calls = T.hmc_log_px, {"n": 0}

    def failing_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        estimate = real(*args, **kwargs)
        return estimate._replace(log_px=estimate.log_px * math.nan) if calls["n"] in (3, 4) else estimate

    monkeypatch.setattr(T, "hmc_log_px", failing_in_epoch_2)
    run = train(mcem_config(tmp_path / "run", shared_data, epochs=3), progress=False, data=data)
    scores = run.history["test_log_px_hmc"]
    assert math.isnan(scores[1]) and not scores.drop(1).isna().any()
    best = int(run.history.loc[scores.idxmax(), "epoch"])
    assert run.best_epoch == best and best in (1, 3)
    saved = torch.load(run.path / "best.pt", weights_only=False)
    assert saved["state"]["best_epoch"] == best


def test_the_same_seed_gives_the_same_mcem_history(tmp_path, shared_data, data):
    a, b = (train(mcem_config(tmp_path / n, shared_data, epochs=2), progress=False, data=data) for n in "ab")
    pd.testing.assert_frame_equal(without_seconds(a.history), without_seconds(b.history), check_exact=True)


def test_a_nan_in_the_m_step_stops_mcem_and_keeps_the_last_good_checkpoint(
    tmp_path, shared_data, data, monkeypatch
):
    config = mcem_config(tmp_path / "run", shared_data)
    real, calls = M.m_step, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        values = real(*args, **kwargs)
        return values * math.nan if calls["n"] == 2 else values

    monkeypatch.setattr(M, "m_step", poisoned)
    with pytest.raises(
        TrainingDiverged, match=r"at epoch 2, batch 1 of 5.*The last good checkpoint \(epoch 1\)"
    ):
        train(config, progress=False, data=data)
    assert load_run(config.path, checkpoint="last").history["epoch"].tolist() == [1]


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"lr_candidates": [0.01, 0.02]},
            "lr_candidates = [0.01, 0.02] is invalid: allowed None with algorithm='mcem'",
        ),
        (
            {"patience": 3, "eval_marginal": None},
            "patience = 3 is invalid: allowed None with algorithm='mcem' unless",
        ),
        (
            {"binarize": "dynamic"},
            "binarize = 'dynamic' is invalid: allowed 'none' or 'static' with algorithm='mcem'",
        ),
        ({"eval_marginal": 0}, "eval_marginal = 0 is invalid: allowed an integer >= 1"),
    ],
)
def test_what_mcem_cannot_do_is_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        TrainConfig(**{"algorithm": "mcem", "patience": None, **fields})
