"""Epoch time of vae_utils training against the common PyTorch-example loop, and the fraction of
this machine's matrix-multiply peak each reaches. A script, not a test: run it on a quiet machine.

    python benchmarks/bench_train.py            # all three configurations, 5 timed epochs each
    python benchmarks/bench_train.py --epochs 1 # quicker, noisier
    python benchmarks/bench_train.py --only burda --threads 1 --epochs 2

The third configuration is Burda et al.'s one-stochastic-layer VAE (two hidden layers of 200,
N_z = 50, minibatch 20, Adam with eps 1e-4, dynamic binarisation): per-step overhead rather than
arithmetic dominates it. ``benchmarks/bench_small_batch.py`` compares it with a compiled step.

The reference loop is written the way pytorch/examples' vae/main.py does it: a torchvision MNIST
dataset with ``ToTensor``, ``DataLoader(shuffle=True)``, sigmoid outputs fed to
``F.binary_cross_entropy(reduction="sum")``, ``loss.item()`` every step and the optimizer's default
implementation (with the configuration's Adam eps); for dynamic binarisation it draws
``torch.bernoulli`` of each batch. Both loops train the same ``vae_utils.VAE`` with the same batch
size and optimizer algorithm and step size. Only the training pass is timed (no evaluation, no
checkpoints). The two loops alternate epoch by epoch and each keeps its fastest epoch (noise only
adds time).

FLOPs count the matrix multiplies of one training step (forward, weight gradients, and input
gradients for every layer but the first): 2 per multiply-add. Peak is the best of a few
4096x4096 float32 matmuls in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from vae_utils import VAE, TrainConfig, load_dataset, presets
from vae_utils.config import BURDA_EPOCHS
from vae_utils.data import data_root
from vae_utils.steps import make_optimizer, train_epoch

CONFIGS = {
    "default (784-500-2 tanh, Adagrad 0.01, M=100)": TrainConfig(),
    "pytorch example (784-400-20 ReLU, Adam 1e-3, M=128)": TrainConfig(
        hidden_dim=400, latent_dim=20, activation="relu", optimizer="adam", lr=1e-3, batch_size=128
    ),
    "burda (784-200-200-50 tanh, Adam 1e-3 eps 1e-4, M=20, dynamic binarisation)": TrainConfig(
        **{**presets.BURDA_MODEL, "binarize": "dynamic", "epochs": BURDA_EPOCHS}
    ),
}


def matmul_rates(n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of the best of ``repeats`` n x n float32 matmuls by each library torch has: ``a @ b``
    (torch's BLAS, MKL in the x86 wheels, which every float32 matmul of the project goes through)
    and oneDNN (torch's private ``mkldnn_linear``, on oneDNN's own tensors). On AMD CPUs MKL does
    not use AVX-512, so oneDNN can be twice as fast there (docs/speed.md)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    rates = {"torch.mm (MKL)": lambda: a @ b}
    if torch.backends.mkldnn.is_available():
        a_dnn, b_dnn, bias = a.to_mkldnn(), b.to_mkldnn(), torch.zeros(n).to_mkldnn()
        rates["oneDNN"] = lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn, bias)
    out = {}
    for name, fn in rates.items():
        fn()
        out[name] = 2 * n**3 / min(_timed(fn) for _ in range(repeats))
    return out


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of the fastest float32 matmul on this machine: the best of :func:`matmul_rates`."""
    return max(matmul_rates(n, repeats).values())


def step_flops(model: VAE, batch_size: int) -> int:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    macs = [batch_size * m.in_features * m.out_features for m in linears]
    return 2 * (2 * macs[0] + 3 * sum(macs[1:]))  # the first layer needs no input gradient


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def reference_step(model: VAE, optimizer, x: torch.Tensor, config: TrainConfig) -> float:
    """One step the pytorch/examples way (plus torch.bernoulli for dynamic binarisation)."""
    x = x.view(-1, 784)
    if config.binarize == "dynamic":
        x = torch.bernoulli(x)
    optimizer.zero_grad()
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    recon = torch.sigmoid(model.decoder(z))
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    loss = F.binary_cross_entropy(recon, x, reduction="sum") + kld
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_epoch(model: VAE, optimizer, loader, config: TrainConfig) -> float:
    """One epoch the pytorch/examples way; returns the summed loss like the example prints it."""
    model.train()
    return sum(reference_step(model, optimizer, x, config) for x, _ in loader)


def bench(config: TrainConfig, epochs: int, data) -> dict:
    """Epoch times of both loops, alternating epochs so that both see the same machine state.
    The fastest epoch of each is kept: on a shared machine, noise only ever adds time."""
    torch.manual_seed(0)
    # vae_utils: tensors in memory, slices of a shuffled index, fused optimizer.
    ours = VAE.from_config(config, 784)
    ours_opt = make_optimizer(ours, config, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    # reference: torchvision dataset + ToTensor + DataLoader, the optimizer's default implementation.
    ref = VAE.from_config(config, 784)
    if config.optimizer == "adagrad":
        ref_opt = torch.optim.Adagrad(ref.parameters(), lr=config.lr)
    else:
        ref_opt = torch.optim.Adam(ref.parameters(), lr=config.lr, eps=config.adam_eps)
    dataset = torchvision.datasets.MNIST(
        str(data_root()), train=True, transform=torchvision.transforms.ToTensor()
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
    loops = {
        "vae_utils": lambda: train_epoch(ours, ours_opt, data, config, generator),
        "reference": lambda: reference_epoch(ref, ref_opt, loader, config),
    }
    times = {name: [] for name in loops}
    for epoch in range(epochs + 1):  # the first round warms up
        for name, loop in loops.items():
            seconds = _timed(loop)
            if epoch:
                times[name].append(seconds)
    n_batches = -(-len(data.x_train) // config.batch_size)
    return {
        "times": {k: min(v) for k, v in times.items()},
        "median": {k: statistics.median(v) for k, v in times.items()},
        "flops": step_flops(ours, config.batch_size) * n_batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per loop (fastest kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data from {data_root()}")
    data = load_dataset("mnist")
    rates = matmul_rates()
    peak = max(rates.values())
    print(
        "float32 matmul (4096^3): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items()) + " GFLOP/s"
    )
    print(f"peak: the faster, {peak / 1e9:.1f} GFLOP/s\n")
    for name, config in CONFIGS.items():
        if args.only not in name:
            continue
        r = bench(config, args.epochs, data)
        t_ours, t_ref = r["times"]["vae_utils"], r["times"]["reference"]
        print(f"{name}: {r['flops'] / 1e9:.0f} GFLOP per epoch")
        for label, t in (("vae_utils", t_ours), ("reference", t_ref)):
            rate = r["flops"] / t
            print(
                f"  {label:<10} {t:6.2f} s/epoch (median {r['median'][label]:.2f})  "
                f"{rate / 1e9:6.1f} GFLOP/s  {100 * rate / peak:5.1f} % of matmul peak"
            )
        print(f"  speed-up over reference: {t_ref / t_ours:.2f}x\n")


if __name__ == "__main__":
    main()
