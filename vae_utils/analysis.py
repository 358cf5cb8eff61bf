"""The computations behind the notebooks' figures and tables: latent grids, PCA, histories in long
form, configuration and metric tables, test data, and the cached log-likelihood estimate. Nothing
here draws (that is :mod:`vae_utils.plotting`); the README's "Package" page lists the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from vae_utils.config import PLACEMENT_FIELDS, TrainConfig, varying_fields

if TYPE_CHECKING:  # annotations only: the functions that need these modules import them when called
    from vae_utils.loss import LatentVariableModel
    from vae_utils.runfiles import Run

#: How notebooks 03 and 07 estimate log p(x) (``loss.importance_weighted_log_likelihood``).
IW_ESTIMATOR = "importance sampling with q(z|x) as proposal (Burda et al.), a lower bound in expectation"
#: One run's training history (``history.csv``), or several by label.
Histories = pd.DataFrame | Mapping[str, pd.DataFrame]


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


def histories_by_label(histories: Histories) -> Mapping[str, pd.DataFrame]:
    """``histories`` as a dict label -> history; a single history is labelled "run"."""
    return histories if isinstance(histories, Mapping) else {"run": histories}


def history_long(histories: Histories) -> pd.DataFrame:
    """Training histories in long form for seaborn: columns run, epoch, samples, split, term, value.

    ``histories`` is one history DataFrame (as in ``history.csv``) or a dict label -> history.
    ``term`` is elbo, recon or kl; ``split`` is train or test.
    """
    frames = []
    for label, history in histories_by_label(histories).items():
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
    differ = varying_fields(configs, ignore=PLACEMENT_FIELDS)
    labels = [", ".join(f"{k}={c.to_dict()[k]}" for k in differ) for c in configs]
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


def cached_likelihood_summary(
    run: Run, x: torch.Tensor, k: int, seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """:func:`likelihood_summary` of ``run.model``, kept in ``run.path / LIKELIHOOD_CACHE`` under a
    SHA-256 of the model's parameters, the images ``x``, k and seed: executing notebook 03 or 07
    again (a study's ``--resume``, a report made again) reads the k = 5000 estimates back (5 minutes
    per run on 2 cores) instead of recomputing them. A different checkpoint, test set or k is a
    different key; a folder that cannot be written is simply not cached; a retrained run
    (``overwrite``) deletes the file with its other run files."""
    import hashlib
    import json

    from vae_utils.runfiles import LIKELIHOOD_CACHE, atomic_write_text

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


def likelihood_results(summaries: Mapping[str, Mapping[str, float]], k: int) -> list[dict]:
    """Notebook 03's headline (:mod:`vae_utils.results`): each run's importance-weighted log p(x)
    from its :func:`likelihood_summary`, named by the run's label when there are several."""
    from vae_utils.results import result

    return [
        result(
            f"log p(x), k={k}" if len(summaries) == 1 else f"{label}: log p(x), k={k}",
            summary[f"log p(x), k={k}"],
            IW_ESTIMATOR,
            datapoints=int(summary["images"]),
        )
        for label, summary in summaries.items()
    ]
