"""Small-batch overhead: Burda et al.'s one-stochastic-layer VAE (784-200-200-50-200-200-784 tanh,
Adam 1e-3 with eps 1e-4, minibatch 20, dynamic binarisation), eager vae_utils against one
``torch.compile``'d training step and against the DataLoader-style reference loop.

    python benchmarks/bench_small_batch.py             # 1 thread, 8 rounds of 300-step slices
    python benchmarks/bench_small_batch.py --check     # also: compiled == eager, determinism, resume

With M = 20 an eager step is dominated by per-step overhead (Python, autograd, ~60 ATen calls),
not by its 44.5 MFLOP of matrix multiplies. The compiled step puts forward, backward and the Adam
update of every parameter into one graph (``torch.func.grad_and_value`` + inductor): 17 matrix
multiplies and ~13 fused C++ loops, the Adam update of each weight fused into the loop that reads
its gradient. It keeps vae_utils' random stream (the same ``torch.bernoulli`` binarisation and
the same eps draw per step, from the same generator) and works on ``torch.optim.Adam``'s own
state tensors, so checkpoints are interchangeable with the eager path.

Timing: every loop runs slices of ``--steps`` steps, the loops take turns slice by slice (the order
rotates each round), and each keeps its fastest slice (noise on a shared machine only adds time);
an epoch is 3,000 steps, so the slice times are scaled by 3,000 / steps. CPU seconds (this
process) are printed too: with other jobs on the cores they are less inflated than wall time.
The reference loop's slices include its DataLoader (per-image PIL -> tensor, collate).

FLOPs are the matrix multiplies of a step (forward, weight gradients, input gradients except for
the first layer), against the best 4096^3 float32 matmul at the same thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import os
import statistics
import sys
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import matmul_peak, reference_step, step_flops

from vae_utils import VAE, TrainConfig, compiled_step, load_dataset, presets
from vae_utils.config import BURDA_EPOCHS
from vae_utils.data import batches, data_root
from vae_utils.steps import make_optimizer, train_step

CONFIG = TrainConfig(**{**presets.BURDA_MODEL, "binarize": "dynamic", "epochs": BURDA_EPOCHS})
EPOCH_STEPS = 3000


# ----------------------------------------------------------------------------- the compiled step

_COMPILED: dict = {}


def compiled_train_step(model, optimizer, x, config, generator, mode="default", cpp_wrapper=False):
    """:func:`vae_utils.compiled_step.compiled_train_step` with vae_utils' graph compiled with another
    ``mode`` or with the C++ wrapper (what vae_utils uses), to compare them."""
    key = mode, cpp_wrapper
    if key not in _COMPILED:  # mode "reduce-overhead" on a CPU: no CUDA graphs, no input size asserts
        how = {"options": {"cpp_wrapper": True}} if cpp_wrapper else {"mode": mode}  # not both
        _COMPILED[key] = torch.compile(compiled_step.adam_step, fullgraph=True, dynamic=False, **how)
    return compiled_step.compiled_train_step(model, optimizer, x, config, generator, step=_COMPILED[key])


# ----------------------------------------------------------------------------- the loops, in slices


def _fresh(config: TrainConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = VAE.from_config(config, 784)
    return model, make_optimizer(model, config, torch.device("cpu"))


class VaeUtilsLoop:
    """train_epoch's loop (vae_utils.data.batches, one step per batch, results kept on the device),
    resumable slice by slice; ``step`` is train_step or compiled_train_step."""

    def __init__(self, data, config, step, seed=0):
        self.model, self.optimizer = _fresh(config, seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.data, self.config, self.step = data, config, step
        self.out = torch.empty(EPOCH_STEPS, 2)
        self._epoch()

    def _epoch(self):
        self.i = 0
        self.batches = batches(
            self.data.x_train, self.config.batch_size, self.generator, self.config.binarize == "dynamic"
        )

    def __call__(self, steps):
        for _ in range(steps):
            if self.i == EPOCH_STEPS:
                self._epoch()
            x = next(self.batches)
            self.out[self.i, 0], self.out[self.i, 1] = self.step(
                self.model, self.optimizer, x, self.config, self.generator
            )
            self.i += 1


class ReferenceLoop:
    """bench_train's reference loop (torchvision MNIST + ToTensor + DataLoader(shuffle=True),
    torch.bernoulli per batch, sigmoid + BCE, loss.item() each step, Adam's default
    implementation), resumable slice by slice."""

    def __init__(self, config):
        torch.manual_seed(0)
        self.model = VAE.from_config(config, 784)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=config.adam_eps)
        dataset = torchvision.datasets.MNIST(
            str(data_root()), train=True, transform=torchvision.transforms.ToTensor()
        )
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
        self.config, self.it = config, iter(self.loader)

    def __call__(self, steps):
        for _ in range(steps):
            try:
                x, _ = next(self.it)
            except StopIteration:
                self.it = iter(self.loader)
                x, _ = next(self.it)
            reference_step(self.model, self.optimizer, x, self.config)


def _timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


# ----------------------------------------------------------------------------- checks


def _eager(config):
    """``config`` for the eager step (compile=False once TrainConfig has that field)."""
    return dataclasses.replace(config, compile=False) if hasattr(config, "compile") else config


def check_equal_to_eager(data, config, step, steps=50):
    """Compiled and eager steps from the same initialisation and generator seed: the largest
    relative difference of the losses and the largest parameter difference after ``steps`` steps."""
    eager = VaeUtilsLoop(data, _eager(config), train_step)
    comp = VaeUtilsLoop(data, config, step)
    eager(steps), comp(steps)
    rel = ((eager.out[:steps] - comp.out[:steps]).abs() / eager.out[:steps].abs()).max().item()
    dp = max(
        (a - b).abs().max().item()
        for a, b in zip(eager.model.parameters(), comp.model.parameters(), strict=True)
    )
    # one step from identical states: the loss (same eps) and the update
    model, opt = _fresh(config, 1)
    model2, opt2 = _fresh(config, 1)
    x = torch.bernoulli(data.x_train[: config.batch_size], generator=torch.Generator().manual_seed(3))
    e1, l1 = train_step(model, opt, x, _eager(config), torch.Generator().manual_seed(4))
    e2, l2 = step(model2, opt2, x, config, torch.Generator().manual_seed(4))
    dp1 = max(
        (a - b).abs().max().item() for a, b in zip(model.parameters(), model2.parameters(), strict=True)
    )
    return rel, dp, abs(l1.item() - l2.item()) / abs(l1.item()), dp1


def check_determinism(data, loop, other, steps=300):
    """Same seed twice -> bit-identical losses and parameters: ``loop``'s step (and configuration)
    both times, or ``loop``'s and ``other``'s."""
    a = VaeUtilsLoop(data, loop.config, loop.step)
    b = VaeUtilsLoop(data, other.config, other.step)
    a(steps), b(steps)
    return torch.equal(a.out[:steps], b.out[:steps]) and all(
        torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )


def check_resume(data, config, step, steps=150):
    """Stop after ``steps`` steps, save model, optimizer and generator as train()'s checkpoints do,
    load them into fresh objects and go on: bit-identical to the run that did not stop? train()
    checkpoints at epoch ends, so both runs start a new epoch (a new batches() call) there."""
    full = VaeUtilsLoop(data, config, step)
    part = VaeUtilsLoop(data, config, step)
    full(steps), part(steps)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": part.model.state_dict(),
            "optimizer": part.optimizer.state_dict(),
            "rng": part.generator.get_state(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = VaeUtilsLoop(data, config, step, seed=123)
    resumed.model.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.generator.set_state(saved["rng"])
    for loop in (full, resumed):  # an epoch boundary at the same point in both
        loop._epoch()
    full(steps), resumed(steps)
    return torch.equal(full.out[:steps], resumed.out[:steps]) and all(
        torch.equal(p, q) for p, q in zip(full.model.parameters(), resumed.model.parameters(), strict=True)
    )


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (sweep workers use 1)")
    parser.add_argument("--steps", type=int, default=300, help="steps per timed slice")
    parser.add_argument("--rounds", type=int, default=8, help="timed slices per loop (fastest kept)")
    parser.add_argument(
        "--check", action="store_true", help="also check compiled == eager, determinism and resumption"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs, load average {load}; data from {data_root()}"
    )
    config = CONFIG
    data = load_dataset("mnist", binarize="dynamic")
    peak = matmul_peak()
    flops = step_flops(VAE.from_config(config, 784), config.batch_size) * EPOCH_STEPS
    print(
        f"float32 matmul peak (4096^3, {torch.get_num_threads()} thread(s), the faster of MKL and oneDNN): "
        f"{peak / 1e9:.1f} GFLOP/s; "
        f"model: {flops / 1e9:.1f} GFLOP per epoch of {EPOCH_STEPS} steps (M = {config.batch_size})"
    )

    loops = {
        "vae_utils eager (train_epoch)": VaeUtilsLoop(data, config, train_step),
        "compiled step": VaeUtilsLoop(data, config, compiled_train_step),
        "compiled step, reduce-overhead": VaeUtilsLoop(
            data, config, lambda *a: compiled_train_step(*a, mode="reduce-overhead")
        ),
        "compiled step, cpp_wrapper": VaeUtilsLoop(
            data, config, lambda *a: compiled_train_step(*a, cpp_wrapper=True)
        ),
        "reference (DataLoader loop)": ReferenceLoop(config),
    }
    if "compile" in {f.name for f in dataclasses.fields(TrainConfig)}:  # once vae_utils has it
        compiled_config = dataclasses.replace(config, compile=True)
        loops = {
            **{k: v for k, v in loops.items() if not k.startswith("reference")},
            "vae_utils compile=True (train_epoch)": VaeUtilsLoop(data, compiled_config, train_step),
            "reference (DataLoader loop)": loops["reference (DataLoader loop)"],
        }
    for name, loop in loops.items():  # warm-up; the first compiled call compiles
        seconds, _ = _timed(loop, 1)
        if "compile" in name:
            print(f"{name}: first call (compilation) {seconds:.1f} s")
        loop(20)
    if args.check:
        first = loops["compiled step"]
        for name, loop in loops.items():
            if "compile" not in name:
                continue
            rel, dp, rel1, dp1 = check_equal_to_eager(data, loop.config, loop.step)
            same = check_determinism(data, loop, loop)
            same_as_first = check_determinism(data, loop, first)
            resume = check_resume(data, loop.config, loop.step)
            print(
                f"check {name}: vs eager, one step from the same state and eps: loss rel. diff "
                f"{rel1:.1e}, params max |diff| {dp1:.1e}; 50 steps from the same seed: losses max "
                f"rel. diff {rel:.1e}, params max |diff| {dp:.1e}. Same seed twice: "
                f"{'bit-identical' if same else 'DIFFERENT'}; vs 'compiled step': "
                f"{'bit-identical' if same_as_first else 'DIFFERENT'}; resumed from a checkpoint into "
                f"fresh model/optimizer/generator: {'bit-identical' if resume else 'DIFFERENT'}"
            )

    names = list(loops)
    times = {name: [] for name in names}
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_timed(loops[name], args.steps))
        peak = max(peak, 2 * 4096**3 / _timed(torch.mm, a, b)[0])  # the peak, sampled every round
    print(f"float32 matmul peak, best of the above and one MKL matmul per round: {peak / 1e9:.1f} GFLOP/s")
    scale = EPOCH_STEPS / args.steps
    best = {name: min(w for w, _ in t) * scale for name, t in times.items()}
    eager, ref = best[names[0]], best[names[-1]]
    print(
        f"\nepoch of {EPOCH_STEPS} steps, from the fastest of {args.rounds} slices of {args.steps} "
        f"steps per loop, loops interleaved:"
    )
    print(
        f"{'loop':<37} {'s/epoch':>8} {'(median)':>9} {'CPU s':>7} {'x eager':>8} {'x ref.':>7} "
        f"{'GFLOP/s':>8} {'% peak':>7}"
    )
    for name in names:
        wall = best[name]
        median = statistics.median(w for w, _ in times[name]) * scale
        cpu = min(c for _, c in times[name]) * scale
        rate = flops / wall
        print(
            f"{name:<37} {wall:8.2f} {median:9.2f} {cpu:7.2f} {eager / wall:7.2f}x {ref / wall:6.2f}x "
            f"{rate / 1e9:8.1f} {100 * rate / peak:6.1f}%"
        )
    paired = {
        name: statistics.median(e / w for (e, _), (w, _) in zip(times[names[0]], times[name], strict=True))
        for name in names
    }
    print(
        "median over rounds of the paired ratio eager / loop: "
        + ", ".join(f"{name} {v:.2f}x" for name, v in paired.items() if name != names[0])
    )


if __name__ == "__main__":
    main()
