"""bfloat16 autocast inside the compiled step (``TrainConfig(compile=True, autocast="bfloat16")``):
is the whole step faster, and do the curves match float32's within seed noise?

    python benchmarks/bench_autocast.py                 # step times, then 3 seeds x 2 configurations
    python benchmarks/bench_autocast.py --curves-epochs 0   # step times only
    python benchmarks/bench_autocast.py --only "continuous"  # that configuration's curves only

Step times: for each path the eager float32 step, the compiled float32 step and the compiled step
under bfloat16 autocast train from the same initialisation, taking turns slice by slice; each keeps
its fastest slice (as ``bench_compiled_paths.py``, whose loop it uses). Curves: ``vae_utils.train``
runs each configuration (the Bernoulli and continuous Bernoulli decoders) with seeds 0, 1, 2 in
float32 and in bfloat16 (both compiled); printed are the test ELBO at each evaluation (float32 in
both: autocast covers only the training step), the seeds' mean and standard deviation for each, and
the largest difference of the two means against the seeds' spread. Only a CPU with bfloat16 units
(avx512_bf16 or AMX) should gain; elsewhere the matrix multiplies slow down
(``vae_utils.steps.bfloat16_units`` says which this is).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import tempfile

import pandas as pd
import torch
from bench_compiled_paths import FIGURE_PROTOCOL, Loop, timed
from bench_whole_process import EXAMPLE_CONFIG

import vae_utils
from vae_utils import TrainConfig, load_dataset, steps

PATHS = {
    "Figure 2, MNIST N_z = 3 (784-500-3, Adagrad), AEVB": dict(**FIGURE_PROTOCOL, latent_dim=3),
    "... wake-sleep": dict(**FIGURE_PROTOCOL, latent_dim=3, algorithm="wake_sleep"),
    "Figure 3 (784-100-3, Adagrad), AEVB": dict(**FIGURE_PROTOCOL, latent_dim=3, hidden_dim=100),
    "default study (784-500-2 tanh, Adagrad 0.01, M = 100)": {},
    "pytorch example (784-400-20 ReLU, Adam 1e-3, M = 128)": EXAMPLE_CONFIG,
}
CURVES = {
    "pytorch example": EXAMPLE_CONFIG,
    "default study": {},
    "continuous Bernoulli (grey-level MNIST, the example's network)": {
        **EXAMPLE_CONFIG,
        "decoder": "continuous_bernoulli",
    },
}
# The Gaussian decoder is in neither: its bfloat16 curves on Frey Face fell 17 nats below float32's
# (10 seeds; measured at commit 9a72e48 with --only gaussian), so TrainConfig refuses the pair.


def step_times(steps: int, rounds: int) -> None:
    data = {"mnist": load_dataset("mnist").x_train}
    names = ("eager", "compiled", "compiled bf16")
    print(f"{'path':<58} {'eager':>7} {'compiled':>9} {'bf16':>7} {'bf16 vs compiled':>17} {'vs eager':>9}")
    for name, fields in PATHS.items():
        config = TrainConfig(**fields, device="cpu")
        x = data[config.dataset]
        loops = {
            "eager": Loop(x, config),
            "compiled": Loop(x, dataclasses.replace(config, compile=True)),
            "compiled bf16": Loop(x, dataclasses.replace(config, compile=True, autocast="bfloat16")),
        }
        for loop in loops.values():
            loop(2)  # compiles (a warm cache makes this quick)
        times: dict[str, list[float]] = {k: [] for k in names}
        for r in range(rounds):
            for key in names if r % 2 == 0 else names[::-1]:
                times[key].append(timed(loops[key], steps))
        per_million = {k: min(v) / (steps * config.batch_size) * 1e6 for k, v in times.items()}
        paired = statistics.median(
            a / b for a, b in zip(times["compiled"], times["compiled bf16"], strict=True)
        )
        eager, compiled, bf16 = (per_million[k] for k in names)
        print(
            f"{name:<58} {eager:6.1f}s {compiled:8.1f}s {bf16:6.1f}s {compiled / bf16:8.2f}x"
            f" ({paired:.2f}x) {eager / bf16:8.2f}x"
        )
    print("seconds per 10^6 training samples, fastest slice; bf16 vs compiled: best (median of pairs)")


def curves(epochs: int, seeds: int, only: str | None) -> None:
    for name, fields in CURVES.items():
        if only is not None and only.lower() not in name.lower():
            continue
        finals = {}
        with tempfile.TemporaryDirectory() as tmp:
            for autocast in ("none", "bfloat16"):
                rows = []
                for seed in range(seeds):
                    config = TrainConfig(
                        **{**fields, "patience": None},
                        epochs=epochs,
                        seed=seed,
                        compile=True,
                        autocast=autocast,
                        tensorboard=False,
                        run_dir=f"{tmp}/{autocast}_{seed}",
                    )
                    history = vae_utils.train(config, progress=False).history
                    rows.append(history.set_index("epoch")["test_elbo"])
                finals[autocast] = pd.concat(rows, axis=1)
        mean = {k: v.mean(axis=1) for k, v in finals.items()}
        sd = {k: v.std(axis=1) for k, v in finals.items()}
        table = pd.DataFrame(
            {
                "float32 mean": mean["none"],
                "float32 sd": sd["none"],
                "bf16 mean": mean["bfloat16"],
                "bf16 sd": sd["bfloat16"],
                "bf16 - float32": mean["bfloat16"] - mean["none"],
            }
        ).round(2)
        print(f"\n{name}, {epochs} epochs, seeds 0-{seeds - 1}, test ELBO (nats per datapoint):")
        print(table.to_string())
        last = table.iloc[-1]
        print(
            f"at the end: bf16 - float32 = {last['bf16 - float32']:+.2f} nats; the seeds' sd "
            f"{last['float32 sd']:.2f} (float32), {last['bf16 sd']:.2f} (bf16); per seed, float32: "
            + ", ".join(f"{v:.2f}" for v in finals["none"].iloc[-1])
            + "; bf16: "
            + ", ".join(f"{v:.2f}" for v in finals["bfloat16"].iloc[-1])
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the step times")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed slice")
    parser.add_argument("--rounds", type=int, default=6, help="timed slices per loop (fastest kept)")
    parser.add_argument("--curves-epochs", type=int, default=10, help="epochs of each curve run; 0: none")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per curve")
    parser.add_argument("--only", help="run only the curves whose name contains this text, no step times")
    args = parser.parse_args()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{datetime.date.today()}, torch {torch.__version__}, {os.cpu_count()} CPUs, bfloat16 units: "
        f"{steps.bfloat16_units()}, ATen capability {torch.backends.cpu.get_cpu_capability()}, load {load}"
    )
    if args.only is None:
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        step_times(args.steps, args.rounds)
        torch.set_num_threads(threads)
    if args.curves_epochs:
        curves(args.curves_epochs, args.seeds, args.only)


if __name__ == "__main__":
    main()
