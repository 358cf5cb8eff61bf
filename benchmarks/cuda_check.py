"""A short check of ``device="cuda"`` on a GPU machine: training, determinism, resumption,
binarisation, the Gaussian decoder, importance-weighted log p(x) at k = 5000 on the whole MNIST
test set, loading a GPU run on the CPU, and the epoch time of both benchmark configurations.

    VAE_DATA_DIR=... python benchmarks/cuda_check.py [--out DIR]

Prints one line per check and exits non-zero when one fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import vae_utils.training as training
from vae_utils import VAE, TrainConfig, load_dataset, load_run, train
from vae_utils.loss import evaluate, importance_weighted_log_likelihood

FAILED = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def same_history(a, b) -> bool:
    cols = [c for c in a.columns if c != "seconds"]
    return a[cols].equals(b[cols])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    out = parser.parse_args().out
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    data = load_dataset("mnist", device="cuda")
    base = dict(device="cuda", latent_dim=20)

    t = time.perf_counter()
    run = train(TrainConfig(epochs=5, run_dir=str(out / "z20"), **base), progress=True, data=data)
    check(
        "5 epochs, latent_dim=20, test ELBO > -130",
        run.final["test_elbo"] > -130,
        f"{run.final['test_elbo']:.2f} in {time.perf_counter() - t:.1f} s",
    )

    a = train(TrainConfig(epochs=2, run_dir=str(out / "a"), **base), progress=False, data=data)
    b = train(TrainConfig(epochs=2, run_dir=str(out / "b"), **base), progress=False, data=data)
    check(
        "same seed, same history on the GPU",
        same_history(a.history, b.history),
        a.history["test_elbo"].round(4).tolist().__repr__(),
    )

    # Interrupt a 3-epoch run during its third epoch, resume it, compare with an uninterrupted one.
    full = train(TrainConfig(epochs=3, run_dir=str(out / "full"), **base), progress=False, data=data)
    calls, real_epoch = [0], training.train_epoch

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    config = TrainConfig(epochs=3, run_dir=str(out / "resumed"), **base)
    training.train_epoch = interrupted
    try:
        train(config, progress=False, data=data)
    except KeyboardInterrupt:
        pass
    training.train_epoch = real_epoch
    resumed = train(config, resume=True, progress=False, data=data)
    check(
        "resumed run equals uninterrupted run",
        same_history(full.history, resumed.history),
        f"{len(resumed.history)} epochs",
    )

    on_cpu = load_run(out / "full", device="cpu")
    x = data.x_test[:500]
    gpu_elbo = evaluate(full.model, x, seed=3)["elbo"]
    cpu_elbo = evaluate(on_cpu.model, x.cpu(), seed=3)["elbo"]
    check(
        "a GPU run loads on the CPU",
        abs(gpu_elbo - cpu_elbo) < 1.0,
        f"ELBO GPU {gpu_elbo:.3f}, CPU {cpu_elbo:.3f} (different noise streams)",
    )

    for binarize in ("dynamic", "static"):
        d = load_dataset("mnist", binarize=binarize, device="cuda", train_subset=5000, test_subset=1000)
        r = train(
            TrainConfig(
                epochs=2,
                binarize=binarize,
                run_dir=str(out / binarize),
                train_subset=5000,
                test_subset=1000,
                **base,
            ),
            progress=False,
            data=d,
        )
        check(
            f"binarize={binarize} trains",
            bool(r.history["test_elbo"].notna().all()),
            f"test ELBO {r.final['test_elbo']:.2f}",
        )
    g = train(
        TrainConfig(epochs=2, decoder="gaussian", run_dir=str(out / "gauss"), **base),
        progress=False,
        data=data,
    )
    check(
        "Gaussian decoder trains",
        bool(g.history["test_elbo"].notna().all()),
        f"test ELBO {g.final['test_elbo']:.2f}",
    )

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    log_px = importance_weighted_log_likelihood(run.model, data.x_test, k=5000, progress=False)
    torch.cuda.synchronize()
    elbo = evaluate(run.model, data.x_test)["elbo"]
    check(
        "log p(x), k=5000, 10,000 test images",
        log_px.mean().item() >= elbo,
        f"{log_px.mean().item():.2f} >= ELBO {elbo:.2f}; {time.perf_counter() - t:.1f} s, peak "
        f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
    )

    for name, config in {
        "default": TrainConfig(device="cuda"),
        "pytorch example": TrainConfig(
            device="cuda",
            hidden_dim=400,
            latent_dim=20,
            activation="relu",
            optimizer="adam",
            lr=1e-3,
            batch_size=128,
        ),
    }.items():
        torch.manual_seed(0)
        model = VAE.from_config(config, 784).cuda()
        optimizer = training.make_optimizer(model, config, torch.device("cuda"))
        generator = torch.Generator("cuda").manual_seed(0)
        times = []
        for _ in range(4):
            t = time.perf_counter()
            losses = training.train_epoch(model, optimizer, data, config, generator)
            losses.sum().item()  # wait for the device
            times.append(time.perf_counter() - t)
        check(f"epoch time, {name} configuration", True, f"{min(times[1:]):.2f} s (fastest of 3)")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
