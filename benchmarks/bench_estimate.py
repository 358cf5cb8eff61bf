"""The k = 5000 importance-sampled log p(x) (Burda et al.'s estimate, notebooks 03 and 07) against
this machine's matrix-multiply peak: how close to the arithmetic's limit is it?

    python benchmarks/bench_estimate.py              # the default study's model, 40 test images
    python benchmarks/bench_estimate.py --images 100 --threads 1

Almost all of the estimate's arithmetic is the decoder's output layer, one (k x H) @ (H x D) matrix
multiply per image (H = 500 hidden units, D = 784 pixels: 3.9 GFLOP per image at k = 5000, 39
TFLOP for MNIST's 10,000 test images). Printed: seconds per image of
``loss.importance_weighted_log_likelihood`` as the notebooks call it (a float32 model's linear
layers on oneDNN, ``loss.onednn_inference_copy``), the same with every matmul on MKL (that copy
skipped), and the same computation compiled into one fused graph by ``torch.compile`` (its matmuls
on MKL; its first call compiles); their FLOP rate against the best 4096^3 float32 matmul of the
same run (MKL's or oneDNN's, whichever is faster here: both are printed), and what the 10,000
images would take at each rate and at the peak.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time
from collections.abc import Callable
from unittest import mock

import torch
from bench_train import matmul_rates

from vae_utils import VAE, load_dataset, loss
from vae_utils.loss import (
    gaussian_log_density,
    importance_weighted_log_likelihood,
    standard_normal_log_density,
)

TEST_IMAGES = 10_000


def fused_weights(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``loss.log_weights`` from given noise eps (k, B, N_z), for torch.compile to fuse."""
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    return model.decoder.log_prob(x, z) + standard_normal_log_density(z) - gaussian_log_density(z, mu, logvar)


def fused_estimate(
    step: Callable[..., torch.Tensor], model: VAE, x: torch.Tensor, k: int, chunk: int
) -> torch.Tensor:
    """The estimate of one image at a time with ``step`` (compiled :func:`fused_weights`), from the
    noise the library draws (the same seed, chunks and order)."""
    generator = torch.Generator().manual_seed(0)
    out = torch.empty(len(x), dtype=torch.float64)
    for i in range(len(x)):
        running = torch.tensor(-math.inf, dtype=torch.float64)
        for done in range(0, k, chunk):
            eps = torch.randn(min(chunk, k - done), 1, model.latent_dim, generator=generator)
            w = step(model, x[i : i + 1], eps).double()
            running = torch.logaddexp(running, torch.logsumexp(w, dim=0)[0])
        out[i] = running - math.log(k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40, help="test images timed")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per image")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (fastest kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), ATen "
        f"capability {torch.backends.cpu.get_cpu_capability()}, load {load}"
    )
    torch.manual_seed(0)
    model = VAE(784, 500, 2).eval()
    x = load_dataset("mnist", train=False).x_test[: args.images]
    chunk = (1 << 21) // x.shape[1]  # the chunk importance_weighted_log_likelihood draws on a CPU
    compiled = torch.compile(fused_weights, dynamic=False)
    with torch.no_grad():
        start = time.perf_counter()
        fused_estimate(compiled, model, x[:1], args.k, chunk)
        compile_seconds = time.perf_counter() - start
        times: dict[str, list[float]] = {
            "the library (oneDNN)": [],
            "all on MKL": [],
            "compiled, fused (MKL)": [],
        }
        for _ in range(args.rounds):
            start = time.perf_counter()
            library = importance_weighted_log_likelihood(model, x, k=args.k, progress=False)
            times["the library (oneDNN)"].append(time.perf_counter() - start)
            with mock.patch.object(loss, "onednn_inference_copy", lambda model, _: model):
                start = time.perf_counter()
                on_mkl = importance_weighted_log_likelihood(model, x, k=args.k, progress=False)
                times["all on MKL"].append(time.perf_counter() - start)
            start = time.perf_counter()
            fused = fused_estimate(compiled, model, x, args.k, chunk)
            times["compiled, fused (MKL)"].append(time.perf_counter() - start)
    rates = matmul_rates()
    peak = max(rates.values())
    print("4096^3 float32 matmul: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()))
    flops = 2 * args.k * 500 * 784 * (1 + 2 / 784)  # output layer, plus the first (2 -> 500) layer
    print(
        f"matmul peak {peak / 1e9:.0f} GFLOP/s (the faster); {flops / 1e9:.2f} GFLOP per image, k = {args.k}"
    )
    print(f"{'estimate':<22} {'s/image':>8} {'GFLOP/s':>8} {'% of peak':>10} {'10,000 images':>14}")
    for name, values in times.items():
        per_image = min(values) / args.images
        rate = flops / per_image
        print(
            f"{name:<22} {per_image:8.4f} {rate / 1e9:8.0f} {100 * rate / peak:9.0f}% "
            f"{per_image * TEST_IMAGES / 60:11.1f} min"
        )
    at_peak = flops / peak
    print(f"{'the peak itself':<22} {at_peak:8.4f} {'':>8} {'':>10} {at_peak * TEST_IMAGES / 60:11.1f} min")
    print(
        f"compiling took {compile_seconds:.1f} s; against the library's mean, the MKL one differs by "
        f"{abs(library.mean() - on_mkl.mean()).item():.1e} nats and the fused one by "
        f"{abs(library.mean() - fused.mean()).item():.1e} (the same draws: float rounding only)"
    )


if __name__ == "__main__":
    main()
