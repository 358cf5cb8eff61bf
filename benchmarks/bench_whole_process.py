"""Whole-process time of training pytorch/examples' VAE configuration (784-400-20 ReLU, Adam 1e-3,
M = 128, 10 epochs, a test evaluation after each) with vae_utils against a script written the way
the example's vae/main.py is: interpreter start, imports, data loading, training, evaluation and the
files each writes, all in the time. A script, not a test: run it on a quiet machine.

    VAE_DATA_DIR=data python benchmarks/bench_whole_process.py                # eager float32 step
    VAE_DATA_DIR=data python benchmarks/bench_whole_process.py --project compile=True \\
        --project autocast="'bfloat16'"                                     # TrainConfig options
    VAE_DATA_DIR=data python benchmarks/bench_whole_process.py --epochs 1 --repeats 1   # smoke run

The reference is ``python benchmarks/reference_example_vae.py --epochs E --out <tmp>`` (torchvision's
MNIST with ``ToTensor`` through a shuffled ``DataLoader``, ``loss.item()`` every step, after each
epoch the test loss and two PNG files). The project is ``vae_utils.train(TrainConfig(...))`` in a
``python -c`` program, the way the project trains: after each epoch it evaluates the train and test
ELBO and writes history.csv, checkpoints and TensorBoard events into a fresh run directory. Each
``--project key=value`` adds a TrainConfig field (the value read with ``ast.literal_eval``, else
taken as a string). Both processes inherit this one's environment; ``VAE_DATA_DIR`` must point at
the folder that holds ``MNIST/raw/``.

One untimed warm-up run of each comes first (it fills the OS file cache and torch.compile's
on-disk cache; printed as the cold time), then ``--repeats`` rounds that alternate reference and
project, each process timed with ``time.perf_counter()`` around ``subprocess.run``. Printed: every
run's seconds, the median of each, the ratio reference median / project median (the figure
reported), each round's own ratio (its two processes ran back to back, so a slow drift of the
machine's speed cancels more in it), and a Markdown table for docs/speed.md. Nothing is kept
(temporary folders, removed after each run).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vae_utils import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPT = "benchmarks/reference_example_vae.py"
#: pytorch/examples' configuration, as TrainConfig fields (patience=None: every epoch runs).
EXAMPLE_CONFIG = dict(
    hidden_dim=400, latent_dim=20, activation="relu", optimizer="adam", lr=1e-3, batch_size=128, patience=None
)
#: The project's process: argv[1] is the run directory, argv[2] the epochs, argv[3] the options.
PROJECT_PROGRAM = (
    "import ast, sys; import vae_utils; "
    "vae_utils.train(vae_utils.TrainConfig(**{base}, epochs=int(sys.argv[2]), run_dir=sys.argv[1], "
    "**ast.literal_eval(sys.argv[3])))"
)


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` -> (key, value): the value as a Python literal when it is one, else the string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--project {text!r}: expected key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def reference_command(epochs: int, tmp: Path) -> list[str]:
    return [sys.executable, REFERENCE_SCRIPT, "--epochs", str(epochs), "--out", str(tmp)]


def project_command(epochs: int, tmp: Path, options: dict[str, object]) -> list[str]:
    program = PROJECT_PROGRAM.format(base=repr(EXAMPLE_CONFIG))
    return [sys.executable, "-c", program, str(tmp / "run"), str(epochs), repr(options)]


def run_once(name: str, command_for: Callable[[Path], list[str]]) -> tuple[float, str]:
    """Seconds of one whole process (in a fresh temporary folder, removed afterwards) and its output's
    last line; a failing process ends the benchmark with its output's tail."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_whole_{name}_"))
    try:
        command = command_for(tmp)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        sys.exit(f"the {name} process failed (exit status {done.returncode}):\n{tail}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return seconds, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (reference, then project)")
    parser.add_argument(
        "--project",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainConfig field for the project's run (repeatable), e.g. compile=True",
    )
    args = parser.parse_args()
    if not os.environ.get("VAE_DATA_DIR"):
        sys.exit(
            "VAE_DATA_DIR is not set: set it to the folder that holds MNIST/raw/ (torchvision's "
            "layout); both processes read MNIST from there"
        )
    options = dict(args.project)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    taken = sorted(set(options) & {*EXAMPLE_CONFIG, "epochs", "run_dir"})
    if unknown or taken:
        sys.exit(
            f"--project: no TrainConfig field {', '.join(unknown)} in this checkout"
            if unknown
            else f"--project: {', '.join(taken)} fixed by the benchmark (the example's configuration)"
        )

    described = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options (eager float32 step)"
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"CPU: {cpu_model()}; os.cpu_count() = {os.cpu_count()}; torch threads: {torch.get_num_threads()}")
    print(f"torch {torch.__version__}, Python {platform.python_version()}")
    print(f"VAE_DATA_DIR = {os.environ['VAE_DATA_DIR']}")
    print(f"epochs: {args.epochs}, timed rounds: {args.repeats}, project options: {described}")
    print()

    commands: dict[str, Callable[[Path], list[str]]] = {
        "reference": lambda tmp: reference_command(args.epochs, tmp),
        "project": lambda tmp: project_command(args.epochs, tmp, options),
    }
    cold: dict[str, float] = {}
    for name, command_for in commands.items():
        cold[name], last = run_once(name, command_for)
        print(f"warm-up {name:9} {cold[name]:8.2f} s (cold; not in the medians)   last line: {last}")
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(args.repeats):
        for name, command_for in commands.items():
            seconds, _ = run_once(name, command_for)
            times[name].append(seconds)
            print(f"round {i + 1}   {name:9} {seconds:8.2f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["reference"] / medians["project"]
    print()
    for name in commands:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:9} median {medians[name]:8.2f} s   (runs: {runs})")
    print(f"reference median / project median: {ratio:.2f}x")
    paired = [r / p for r, p in zip(times["reference"], times["project"], strict=True)]
    print(
        f"each round's own ratio: {', '.join(f'{x:.2f}' for x in paired)} (median "
        f"{statistics.median(paired):.2f}x; the ratio of the medians above is the figure reported)"
    )

    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    print()
    print(
        f"| whole process ({epochs} of 784-400-20 ReLU, Adam 1e-3, M = 128, test each epoch) "
        "| cold | runs (s) | median | speed-up |"
    )
    print("|---|---|---|---|---|")
    rows = {
        "reference": f"`{REFERENCE_SCRIPT}` (as pytorch/examples' vae/main.py)",
        "project": f"`vae_utils.train`, {described}",
    }
    for name, label in rows.items():
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        speedup = f"**{ratio:.2f}×**" if name == "project" else "1.00"
        print(f"| {label} | {cold[name]:.1f} s | {runs} | {medians[name]:.1f} s | {speedup} |")


if __name__ == "__main__":
    main()
