"""nbval's reference sets: the small CI configurations under which ``pytest --nbval`` re-executes
the notebooks, and the script that regenerates them (from the repository root)::

    python tests/references.py

It executes each set's notebooks into its folder (``tests/notebooks/``, ``tests/notebooks/frey/``,
``.../figure2/``, ``.../likelihoods/``), in kernels started there with the thread count of
``tests/conftest.py``, and drops timestamps and images (nbval compares neither). Commit the result
with the change that made it; docs/testing.md says when that is right.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from vae_utils.config import NOTEBOOKS_DIR, PROJECT_ROOT, STUDY_NOTEBOOKS, TrainConfig, display_path
from vae_utils.notebook_runner import declared_parameters, run_notebook, short_parameters, tidy_metadata
from vae_utils.training import train

#: Every notebook of the project: a study runs 01-05; the sweeps' presets end with 06, 07 and 08.
ALL_NOTEBOOKS = STUDY_NOTEBOOKS + ("06_figure2", "07_likelihoods", "08_figure3")
REFERENCES_DIR = PROJECT_ROOT / "tests" / "notebooks"
REFERENCES_COMMAND = "python tests/references.py"

#: nbval's reference sets (this script writes them all): name -> the set's folder, the run
#: directory its 02_train writes and 03-05 read, and each notebook's parameters. nbval re-executes
#: a folder's notebooks in file order, so 02 trains the set's run before 03-05 analyse it.
CI_THREADS = 1  # must equal tests/conftest.py's OMP_NUM_THREADS: float results depend on it
#: The references train in float64: in float32 a last-bit difference between two CPUs' kernels grows
#: past the printed digits within a few hundred steps (Frey Face: 100x per epoch); in float64 it
#: stays below them for these short runs (docs/reproducibility.md has the measurements).
CI_DTYPE = "float64"
_MNIST_RUN, _FREY_RUN = "runs/nbval", "runs/nbval_frey"
CI_REFERENCE_SETS: dict[str, dict[str, Any]] = {
    # MNIST, Bernoulli decoder, N_z = 2: labelled classes, square images, Figure 4's manifold.
    "mnist": {
        "folder": REFERENCES_DIR,
        "run_dir": _MNIST_RUN,
        "parameters": {
            "01_derivation": {"seed": 0},
            "02_train": {
                "train_subset": 1000,
                "test_subset": 500,
                "epochs": 3,
                "seed": 0,
                "device": "cpu",
                "dtype": CI_DTYPE,
                "run_dir": _MNIST_RUN,
                "overwrite": True,
            },
            "03_loss_curves": {
                "run_dir": _MNIST_RUN,
                "iw_samples": 50,
                "iw_subset": 100,
                "seed": 0,
                "results_path": f"{_MNIST_RUN}/results.json",
            },
            "04_reconstruction": {"run_dir": _MNIST_RUN, "seed": 0},
            "05_latent_manifold": {"run_dir": _MNIST_RUN, "seed": 0},
        },
    },
    # Frey Face (all 1,765 training and 200 test faces), the paper's Frey Face model (Gaussian
    # decoder with a sigmoid mean, 200 hidden units) with N_z = 5: the Gaussian log density, no
    # classes, 28x20 images and the N_z > 2 paths. 01 does not depend on the run: MNIST's set has it.
    "frey": {
        "folder": REFERENCES_DIR / "frey",
        "run_dir": _FREY_RUN,
        "parameters": {
            "02_train": {
                "dataset": "frey_face",
                "decoder": "gaussian",
                "sigmoid_mean": True,
                "latent_dim": 5,
                "hidden_dim": 200,
                "epochs": 4,
                "seed": 0,
                "device": "cpu",
                "dtype": CI_DTYPE,
                "run_dir": _FREY_RUN,
                "overwrite": True,
            },
            "03_loss_curves": {
                "run_dir": _FREY_RUN,
                "iw_samples": 50,
                "seed": 0,
                "results_path": f"{_FREY_RUN}/results.json",
            },
            "04_reconstruction": {"run_dir": _FREY_RUN, "seed": 0},
            "05_latent_manifold": {"run_dir": _FREY_RUN, "seed": 0},
        },
    },
    # 06 and 07 analyse several runs: tiny versions of their presets' runs (both datasets and both
    # algorithms for Figure 2; the five likelihood runs for 07), trained in-process first by
    # :func:`train_reference_runs` (here and, before nbval executes the notebook, in
    # tests/notebooks/conftest.py).
    "figure2": {
        "folder": REFERENCES_DIR / "figure2",
        "runs": "figure2",
        "parameters": {
            "06_figure2": {"run_dirs": None, "seed": 0, "results_path": "runs/nbval_figure2/results.json"}
        },
    },
    "figure3": {
        "folder": REFERENCES_DIR / "figure3",
        "runs": "figure3",
        "parameters": {
            "08_figure3": {
                "run_dirs": None,
                "n_images": 20,
                "grid_images": 3,
                "grid_points": 12,
                "iw_samples": 100,
                "seed": 0,
                "results_path": "runs/nbval_figure3/results.json",
            }
        },
    },
    "likelihoods": {
        "folder": REFERENCES_DIR / "likelihoods",
        "runs": "likelihoods",
        "parameters": {
            "07_likelihoods": {
                "run_dirs": None,
                "iw_samples": 50,
                "seed": 0,
                "results_path": "runs/nbval_likelihoods/results.json",
            }
        },
    },
}


def reference_runs(name: str) -> list[TrainConfig]:
    """The tiny runs that reference set ``name`` analyses (empty for a set whose 02 trains its run):
    Figure 2's MNIST N_z = 3 and Frey Face N_z = 2 panels, AEVB and wake-sleep, seeds 0 and 1, on
    500 training images for 3,000 samples; Figure 3's six curves on 100 and 300 training images for
    6,000 samples, log p(x) on 10 + 10 images; or the five likelihood runs on 500 images for Burda's
    8 stages of one epoch each. Run directories under ``runs/nbval_<name>/``."""
    from vae_utils import presets

    kind = CI_REFERENCE_SETS[name].get("runs")
    if kind == "figure2":
        configs = [  # two seeds, so that 06's means, bands and per-seed claims run too
            c
            for seed in (0, 1)
            for c in presets.figure2_configs(
                3000,
                train_subset=500,
                test_subset=100,
                device="cpu",
                dtype=CI_DTYPE,
                seed=seed,
                compile=False,
            )
            if (c.dataset, c.latent_dim) in (("mnist", 3), ("frey_face", 2))
        ]
    elif kind == "figure3":
        configs = [
            c
            for size in (100, 300)
            for c in presets.figure3_configs(
                6000,
                train_subset=size,
                test_subset=50,
                device="cpu",
                dtype=CI_DTYPE,
                eval_marginal=10,
                compile=False,
            )
        ]
        for c in configs:
            c.run_dir = f"runs/nbval_figure3/{c.name}_n{c.train_subset}"
        return configs
    elif kind == "likelihoods":
        configs = presets.likelihood_configs(
            8,
            train_subset=500,
            test_subset=100,
            device="cpu",
            eval_iw_samples=20,
            compile=False,
            dtype=CI_DTYPE,
        )
    else:
        return []
    for c in configs:
        c.run_dir = f"runs/nbval_{name}/{c.name}" + (f"_{c.binarize}" if c.binarize != "none" else "")
    return configs


def train_reference_runs(name: str) -> list[str]:
    """Train (again, replacing them) the runs of reference set ``name`` with ``CI_THREADS`` threads, as
    nbval's references saw them; return their run directories."""
    import torch

    torch.set_num_threads(CI_THREADS)
    run_dirs = []
    for config in reference_runs(name):
        assert config.run_dir is not None  # reference_runs sets it
        train(config, overwrite=True, progress=False)
        run_dirs.append(config.run_dir)
    return run_dirs


def reference_parameters(name: str) -> dict:
    """Each notebook's parameters in reference set ``name``, with ``run_dirs`` filled in."""
    runs = [c.run_dir for c in reference_runs(name)]
    return {
        nb: {k: (runs if k == "run_dirs" else v) for k, v in values.items()}
        for nb, values in CI_REFERENCE_SETS[name]["parameters"].items()
    }


def generate_references(
    sets: dict[str, dict[str, Any]] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR, stream: bool = True
) -> list[Path]:
    """Execute each reference set's notebooks with its parameters into its folder (nbval's
    references); ``sets`` defaults to :data:`CI_REFERENCE_SETS`, in the form of its entries.

    The kernels run in the set's folder, where nbval starts them, with the thread count of
    ``tests/conftest.py``; timestamps and images are dropped (nbval compares neither). A notebook
    the set does not run has its earlier reference removed, so a folder holds exactly its set.
    """
    sets = CI_REFERENCE_SETS if sets is None else sets
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(CI_THREADS)  # the kernels inherit it
    written = []
    for set_name, reference_set in sets.items():
        out_dir = Path(reference_set["folder"])
        todo = (
            reference_parameters(set_name) if set_name in CI_REFERENCE_SETS else reference_set["parameters"]
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        for nb in ALL_NOTEBOOKS:
            if nb not in todo:
                (out_dir / f"{nb}.ipynb").unlink(missing_ok=True)
        if reference_set.get("runs"):
            print(f"[{set_name}] training its runs: {', '.join(train_reference_runs(set_name))}", flush=True)
        for i, nb in enumerate((nb for nb in ALL_NOTEBOOKS if nb in todo), 1):
            parameters = declared_parameters(notebooks_dir / f"{nb}.ipynb", todo[nb], todo[nb])
            print(
                f"[{set_name} {i}/{len(todo)}] reference {nb}.ipynb {short_parameters(parameters)}",
                flush=True,
            )
            started = time.perf_counter()
            out = run_notebook(
                nb,
                parameters,
                out_dir / f"{nb}.ipynb",
                cwd=out_dir,
                notebooks_dir=notebooks_dir,
                stream=stream,
            )
            tidy_metadata(out, reference=True)
            print(
                f"[{set_name} {i}/{len(todo)}] {display_path(out)} in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            written.append(out)
    return written


def main() -> int:
    written = generate_references()
    folders = sorted({display_path(path.parent) for path in written})
    print(f"references written to {', '.join(folders)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
