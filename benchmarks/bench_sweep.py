"""Throughput of a sweep: training samples per second of a small grid run three ways, in one run.

    python benchmarks/bench_sweep.py                      # 4 MNIST points, 10,000 images, 2 epochs
    python benchmarks/bench_sweep.py --epochs 1 --points 2   # quicker

1. sequential: one process trains the points one after another with ``vae_utils.train`` (no
   papermill, no Dask), torch using ``--threads`` threads (default: every core), as a single
   script would;
2. the sweep on a LocalCluster of 1 worker (one torch thread): papermill's kernel start and the
   notebook's own cells are the overhead;
3. the sweep on the default LocalCluster (``os.cpu_count()`` workers of one thread each).

Samples are training samples (epochs x n_train per point, the pilot and evaluations not counted);
the time is the wall time of the whole grid, data loading, kernels and evaluations included. A
script, not a test: run it on a quiet machine. Nothing is kept (a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import vae_utils
from vae_utils import sweep
from vae_utils.config import TrainConfig
from vae_utils.data import data_root

LATENTS = (3, 5, 10, 20)


def grid(points: int, train_subset: int, test_subset: int, epochs: int) -> list[TrainConfig]:
    return [
        TrainConfig(
            latent_dim=z,
            train_subset=train_subset,
            test_subset=test_subset,
            epochs=epochs,
            patience=None,
            device="cpu",
            data_dir=str(data_root()),
        )
        for z in LATENTS[:points]
    ]


def sequential(configs: list[TrainConfig], folder: Path, threads: int) -> float:
    """Wall seconds to train every config in this process, one after another."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for config in configs:
        vae_utils.train(dataclasses.replace(config, run_dir=str(folder / config.name)), progress=False)
    return time.perf_counter() - start


def swept(configs: list[TrainConfig], folder: Path, name: str, workers: int) -> float:
    """Wall seconds of run_sweep on a LocalCluster of ``workers`` single-threaded workers."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        table = sweep.run_sweep(
            configs, name, sweeps_dir=folder, workers=workers, threads=1, poll_seconds=3600
        )
    seconds = time.perf_counter() - start
    if not (table["status"] == "done").all():
        raise RuntimeError(f"sweep {name} failed:\n{table[['point', 'status', 'error']]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=4, choices=range(1, len(LATENTS) + 1))
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--test-subset", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of the sequential run (default: every core)",
    )
    args = parser.parse_args()
    configs = grid(args.points, args.train_subset, args.test_subset, args.epochs)
    samples = sum(c.epochs * sweep.n_train(c.dataset, c.train_subset) for c in configs)
    default_workers = os.cpu_count() or 1
    print(
        f"{len(configs)} MNIST points, {args.train_subset} images, {args.epochs} epochs: "
        f"{samples:,} training samples; {default_workers} cores",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, workers, threads, run in (
            (
                "sequential, vae_utils.train",
                1,
                args.threads,
                lambda: sequential(configs, tmp / "runs", args.threads),
            ),
            ("sweep, 1 worker", 1, 1, lambda: swept(configs, tmp, "one", 1)),
            (
                "sweep, default workers",
                default_workers,
                1,
                lambda: swept(configs, tmp, "default", default_workers),
            ),
        ):
            seconds = run()
            rows.append(
                {
                    "mode": label,
                    "workers": workers,
                    "threads": threads,
                    "seconds": round(seconds, 1),
                    "samples/s": round(samples / seconds),
                }
            )
            print(f"{label}: {seconds:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    table["vs sequential"] = (table["samples/s"] / table["samples/s"].iloc[0]).round(2)
    table["vs 1 worker"] = (table["samples/s"] / table["samples/s"].iloc[1]).round(2)
    print()
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
