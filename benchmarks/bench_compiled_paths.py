"""The compiled step against the eager step on the paths the paper's figures train: AEVB and
wake-sleep with Adagrad (M = 100) for Figure 2's MNIST model (784-500-N_z, Bernoulli decoder), its
Frey Face model (560-200-N_z, Gaussian decoder) and Figure 3's (784-100-3), and Burda et al.'s Adam
runs of notebook 07 (binarised, and grey levels with the continuous Bernoulli or Gaussian decoder);
and Figure 3's Monte Carlo EM E-step (one HMC transition of 10,000 rows, its log p(x, z) and gradient
compiled).

    python benchmarks/bench_compiled_paths.py            # 1 thread, 8 rounds of 200-step slices
    python benchmarks/bench_compiled_paths.py --only Adam      # the paths whose name says Adam

Each path runs vae_utils' eager ``train_step`` and its compiled step (``TrainConfig(compile=True)``)
from the same initialisation; the two take turns slice by slice and each keeps its fastest slice
(noise on a shared machine only adds time). Printed: seconds per 10^6 training samples, the ratio
eager / compiled from the fastest slices and as the median of the rounds' paired ratios, the first
(compiling) call, and the largest relative difference of the two loops' minibatch ELBOs over the
first slice (the same random numbers: only float rounding differs; for the E-step, of its acceptance
rates).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import time

import torch

from vae_utils import VAE, TrainConfig, load_dataset
from vae_utils.compiled_step import posterior_value_and_grad
from vae_utils.data import batches, data_root
from vae_utils.mcem import LEAPFROG_STEPS, MCEMState, e_step
from vae_utils.presets import BURDA_MODEL
from vae_utils.steps import make_optimizer, train_step

PATHS = {
    "Figure 2, MNIST N_z = 3 (784-500-3, Adagrad)": dict(latent_dim=3, hidden_dim=500),
    "... wake-sleep": dict(latent_dim=3, hidden_dim=500, algorithm="wake_sleep"),
    "Figure 2, MNIST N_z = 20 (784-500-20, Adagrad)": dict(latent_dim=20, hidden_dim=500),
    "... wake-sleep ": dict(latent_dim=20, hidden_dim=500, algorithm="wake_sleep"),
    "Figure 3 (784-100-3, Adagrad)": dict(latent_dim=3, hidden_dim=100),
    "... wake-sleep  ": dict(latent_dim=3, hidden_dim=100, algorithm="wake_sleep"),
    "Figure 2, Frey Face N_z = 10 (560-200-10 Gaussian)": dict(
        dataset="frey_face", decoder="gaussian", sigmoid_mean=True, latent_dim=10, hidden_dim=200, lr=0.01
    ),
    "... wake-sleep   ": dict(
        dataset="frey_face",
        decoder="gaussian",
        sigmoid_mean=True,
        latent_dim=10,
        hidden_dim=200,
        lr=0.01,
        algorithm="wake_sleep",
    ),
    "Burda et al. (784-200-200-50, Adam, M = 20)": {**BURDA_MODEL, "lr_schedule": "constant"},
    "... grey levels, continuous Bernoulli (Adam)": {
        **BURDA_MODEL,
        "lr_schedule": "constant",
        "decoder": "continuous_bernoulli",
        "binarize": "none",
    },
    "... grey levels, Gaussian (Adam)": {
        **BURDA_MODEL,
        "lr_schedule": "constant",
        "decoder": "gaussian",
        "binarize": "none",
    },
    "Figure 3, MCEM E-step (784-100-3, 10,000 rows)": dict(
        algorithm="mcem", latent_dim=3, hidden_dim=100, binarize="none", patience=None
    ),
}
#: Rows of the E-step's benchmark: Figure 3's chunk (vae_utils.mcem.E_STEP_CHUNK) at N = 50,000.
E_STEP_ROWS = 10_000
FIGURE_PROTOCOL = dict(init="paper", optimizer="adagrad", lr=0.02, weight_decay=1e-4, batch_size=100)


class Loop:
    """vae_utils' epoch loop (shuffled minibatches, one step each, results kept on the device),
    resumable slice by slice, a new epoch whenever the last one ends."""

    def __init__(self, data: torch.Tensor, config: TrainConfig):
        torch.manual_seed(0)
        self.model = VAE.from_config(config, data.shape[1])
        self.optimizer = make_optimizer(self.model, config, torch.device("cpu"))
        self.generator = torch.Generator().manual_seed(0)
        self.data, self.config, self.elbos = data, config, []
        self.batches = iter(())
        self.samples_per_step = config.batch_size

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            x = next(self.batches, None)
            if x is None:
                self.batches = batches(self.data, self.config.batch_size, self.generator, False)
                x = next(self.batches)
            self.elbos.append(train_step(self.model, self.optimizer, x, self.config, self.generator)[0])


class EStepLoop:
    """MCEM's E-step (:func:`vae_utils.mcem.e_step`) on ``data``: each step one HMC transition of
    every row's persistent z, N (10 + 1) samples evaluated; its acceptance rates are kept."""

    def __init__(self, data: torch.Tensor, config: TrainConfig):
        torch.manual_seed(0)
        self.decoder = VAE.from_config(config, data.shape[1]).decoder
        self.generator = torch.Generator().manual_seed(0)
        self.state = MCEMState.start(len(data), config.latent_dim, self.generator, data.dtype, data.device)
        self.value_and_grad = posterior_value_and_grad(self.decoder, config) if config.compile else None
        self.data, self.elbos = data, []
        self.samples_per_step = len(data) * (LEAPFROG_STEPS + 1)

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            e_step(self.decoder, self.data, self.state, self.generator, value_and_grad=self.value_and_grad)
            self.elbos.append(torch.tensor(self.state.acceptance))


def timed(loop: Loop | EStepLoop, steps: int) -> float:
    start = time.perf_counter()
    loop(steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (sweep workers use 1)")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed slice")
    parser.add_argument("--rounds", type=int, default=8, help="timed slices per loop (fastest kept)")
    parser.add_argument("--only", default="", help="only the paths whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs, load average {load}; data from {data_root()}"
    )
    data = {name: load_dataset(name).x_train for name in ("mnist", "frey_face")}
    print(
        f"{'path':<52} {'eager':>8} {'compiled':>9} {'x (best)':>9} {'x (median)':>10} "
        f"{'compile':>8} {'ELBO diff':>10}"
    )
    for name, fields in PATHS.items():
        if args.only not in name:
            continue
        base = fields if "Adam" in name else {**FIGURE_PROTOCOL, **fields}
        eager_config = TrainConfig(**base, device="cpu")
        x = data[eager_config.dataset]
        kind: type[Loop] | type[EStepLoop] = Loop
        steps = args.steps
        if eager_config.algorithm == "mcem":  # each step visits 10,000 rows: 2 per slice by default
            kind, x, steps = EStepLoop, x[:E_STEP_ROWS], max(1, args.steps // 100)
        loops = {
            "eager": kind(x, eager_config),
            "compiled": kind(x, dataclasses.replace(eager_config, compile=True)),
        }
        compile_seconds = timed(loops["compiled"], 1)
        loops["eager"](1)
        times: dict[str, list[float]] = {k: [] for k in loops}
        for r in range(args.rounds):
            for key in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
                times[key].append(timed(loops[key], steps))
        e, c = (torch.stack(loops[k].elbos[:steps]) for k in ("eager", "compiled"))
        difference = ((e - c).abs() / e.abs()).max().item()
        samples = steps * loops["eager"].samples_per_step
        per_million = {k: min(v) / samples * 1e6 for k, v in times.items()}
        paired = statistics.median(a / b for a, b in zip(times["eager"], times["compiled"], strict=True))
        print(
            f"{name:<52} {per_million['eager']:7.1f}s {per_million['compiled']:8.1f}s "
            f"{per_million['eager'] / per_million['compiled']:8.2f}x {paired:9.2f}x "
            f"{compile_seconds:7.1f}s {difference:10.1e}"
        )
    print("seconds per 10^6 training samples, fastest slice of each loop; compile: the first compiled step")


if __name__ == "__main__":
    main()
