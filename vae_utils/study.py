"""The main job: run the five notebooks headless with papermill and publish them as HTML reports.

From the repository root (``VAE_DATA_DIR`` pointing at the datasets when offline)::

    python -m vae_utils.study                        # the original study (TrainConfig's defaults)
    python -m vae_utils.study --latent-dim 5 --decoder gaussian --dataset fashion_mnist
    python -m vae_utils.study --quick                # a smoke run: 2,000 images, 3 epochs
    python -m vae_utils.study --references           # regenerate nbval's tests/notebooks/

A study runs ``notebooks/01_derivation.ipynb`` ... ``05_latent_manifold.ipynb`` in order, each in a
fresh ``python3`` kernel started in ``notebooks/`` (as JupyterLab would), and writes::

    reports/<name>/01_derivation.ipynb ...   the executed notebooks
    reports/<name>/01_derivation.html ...    their HTML (nbconvert, lab template)
    reports/<name>/study.json                configuration, parameters, status, timings, results
    reports/<name>/config.json, history.csv  copied from the run directory
    reports/index.html                       links every study folder under reports/

``<name>`` is the configuration's name (``mnist_bernoulli_z2_h500_s0``), with ``_quick`` appended
in quick mode, or ``--name``. The study's run lives in ``runs/<name>`` unless ``--run-dir`` says
otherwise; an existing run stops the study before anything runs unless ``--resume`` or
``--overwrite`` is given, so nothing is overwritten by accident.

The HTML keeps the code visible: every code cell is a short call into ``vae_utils``, so a reader sees
how each number and figure was made, and papermill's ``injected-parameters`` cell shows the
configuration the study ran with, right under the notebook's defaults.

Each notebook receives only the parameters of its contract (:data:`CONTRACT`) that its
``parameters`` cell declares (``papermill.inspect_notebook``); an explicit option that a notebook
does not declare is an error rather than a silently ignored value.

nbval's references: :data:`CI_REFERENCE_SETS` is the one place where the small CI configurations
live (MNIST with the Bernoulli decoder and N_z = 2; Frey Face with the Gaussian decoder and N_z = 5);
``--references`` executes each set's notebooks into its folder (``tests/notebooks/``,
``tests/notebooks/frey/``), where ``pytest --nbval`` re-executes and compares them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import sys
import time
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TextIO

from vae_utils import config as _config
from vae_utils.config import ANALYSIS_OPTIONS, PROJECT_ROOT, TrainConfig, check_analysis_option
from vae_utils.reports import (
    THUMBNAIL,
    export_html,  # noqa: F401 (re-exported: study.export_html is public)
    finalize_report,
    write_index,
)
from vae_utils.runfiles import existing_run_files

NOTEBOOKS = ("01_derivation", "02_train", "03_loss_curves", "04_reconstruction", "05_latent_manifold")
#: Every notebook of the project: a study runs NOTEBOOKS; the sweeps' presets end with 06 and 07.
ALL_NOTEBOOKS = NOTEBOOKS + ("06_figure2", "07_likelihoods")
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
REPORTS_DIR = PROJECT_ROOT / "reports"
REFERENCES_DIR = PROJECT_ROOT / "tests" / "notebooks"
REFERENCES_COMMAND = "python -m vae_utils.study --references"

TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
#: Which parameters each notebook takes (the notebooks' parameter contract).
CONTRACT = {
    "01_derivation": ("seed",),
    "02_train": TRAIN_FIELDS + ("overwrite", "resume"),
    "03_loss_curves": ("run_dir", "iw_samples", "iw_subset", "seed"),
    "04_reconstruction": ("run_dir", "n_images", "seed"),
    "05_latent_manifold": ("run_dir", "grid_size", "seed"),
}
# The analysis notebooks' own options (name -> (type, minimum, None allowed)) are
# ``vae_utils.config.ANALYSIS_OPTIONS``, imported above, which the notebooks check too.

#: ``--quick``: small enough to finish in a minute or two on a 2-core CPU. Explicit options win.
QUICK_TRAIN = {"train_subset": 2000, "test_subset": 500, "epochs": 3}
QUICK_ANALYSIS = {"iw_samples": 100, "iw_subset": 200}

#: nbval's reference sets (``--references`` writes them all): name -> the set's folder, the run
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
            "03_loss_curves": {"run_dir": _MNIST_RUN, "iw_samples": 50, "iw_subset": 100, "seed": 0},
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
            "03_loss_curves": {"run_dir": _FREY_RUN, "iw_samples": 50, "seed": 0},
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
        "parameters": {"06_figure2": {"run_dirs": None, "seed": 0}},
    },
    "likelihoods": {
        "folder": REFERENCES_DIR / "likelihoods",
        "runs": "likelihoods",
        "parameters": {"07_likelihoods": {"run_dirs": None, "iw_samples": 50, "seed": 0}},
    },
}


def reference_runs(name: str) -> list[TrainConfig]:
    """The tiny runs that reference set ``name`` analyses (empty for a set whose 02 trains its run):
    Figure 2's MNIST N_z = 3 and Frey Face N_z = 2 panels, AEVB and wake-sleep, on 500 training
    images for 3,000 samples; or the five likelihood runs on 500 images for Burda's 8 stages of one
    epoch each. Run directories under ``runs/nbval_<name>/``."""
    from vae_utils import presets

    kind = CI_REFERENCE_SETS[name].get("runs")
    if kind == "figure2":
        configs = [
            c
            for c in presets.figure2_configs(
                3000, train_subset=500, test_subset=100, device="cpu", dtype=CI_DTYPE
            )
            if (c.dataset, c.latent_dim) in (("mnist", 3), ("frey_face", 2))
        ]
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

    from vae_utils.training import train

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


class StudyError(RuntimeError):
    """The study cannot start (bad options, an existing run) or a notebook failed."""


class NotebookFailed(StudyError):
    """A notebook raised; the message names the notebook, the cell and the error.

    ``cell_index`` is papermill's: the 0-based position of the failing cell in the executed
    notebook (markdown cells and the injected-parameters cell count); ``source`` is its code.
    """

    def __init__(
        self, notebook: str, cell_index: int, ename: str, evalue: str, output: Path, source: str = ""
    ):
        self.notebook, self.cell_index, self.output, self.source = notebook, cell_index, output, source
        self.ename, self.evalue = ename, evalue
        super().__init__(f"{notebook}.ipynb failed at cell {cell_index}: {ename}: {evalue}")


@dataclasses.dataclass
class Study:
    """What a study will run: its name, training configuration and each notebook's parameters."""

    name: str
    config: TrainConfig
    quick: bool
    overwrite: bool
    resume: bool
    explicit: dict  # the options given on the command line (or to run_study)
    parameters: dict  # notebook -> {parameter: value}, before filtering by what it declares


# ----------------------------------------------------------------------------- planning


def plan_study(
    overrides: dict | None = None,
    *,
    quick: bool = False,
    name: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Study:
    """Validate the options and decide every notebook's parameters; nothing runs yet.

    ``overrides`` holds TrainConfig fields and the analysis options (:data:`ANALYSIS_OPTIONS`).
    A bad value raises ``ValueError`` with the package's message (field, value, what is allowed).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TRAIN_FIELDS) - set(ANALYSIS_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown}: allowed TrainConfig fields "
            f"{list(TRAIN_FIELDS)} and {list(ANALYSIS_OPTIONS)}"
        )
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: choose one")
    for option in ANALYSIS_OPTIONS:
        if option in overrides:
            check_analysis_option(option, overrides[option])
    train_values = {
        **(QUICK_TRAIN if quick else {}),
        **{k: v for k, v in overrides.items() if k in TRAIN_FIELDS},
    }
    config = TrainConfig(**train_values)  # validates
    name = name or config.name + ("_quick" if quick else "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name = {name!r} is invalid: allowed letters, digits, '.', '_' and '-'")
    if "run_dir" not in overrides:
        config = dataclasses.replace(config, run_dir=f"runs/{name}")
    values = {
        **config.to_dict(),
        "overwrite": overwrite,
        "resume": resume,
        **(QUICK_ANALYSIS if quick else {}),
        **{k: v for k, v in overrides.items() if k in ANALYSIS_OPTIONS},
    }
    parameters = {nb: {k: values[k] for k in keys if k in values} for nb, keys in CONTRACT.items()}
    return Study(name, config, quick, overwrite, resume, overrides, parameters)


def declared_parameters(
    notebook_path: Path, wanted: Mapping[str, Any], explicit: Collection[str] = ()
) -> dict[str, Any]:
    """The part of ``wanted`` that the notebook's ``parameters`` cell declares.

    Raises :class:`StudyError` when the notebook has no ``parameters`` cell, or when an explicit
    option would be dropped because the notebook does not declare it.
    """
    import papermill

    if not notebook_path.is_file():
        raise StudyError(f"notebook {notebook_path} not found")
    declared = papermill.inspect_notebook(str(notebook_path))
    if wanted and not declared:
        raise StudyError(f"{notebook_path.name} has no cell tagged 'parameters'")
    dropped = sorted(k for k in wanted if k not in declared and k in explicit)
    if dropped:
        raise StudyError(
            f"{notebook_path.name} does not declare parameter(s) {dropped}; it declares {sorted(declared)}"
        )
    return {k: v for k, v in wanted.items() if k in declared}


# ----------------------------------------------------------------------------- executing


class _LineStream:
    """Forwards a kernel's stream to ``target``: carriage returns become newlines (no ``\\r`` soup
    in logs) and every line is indented under the notebook's heading."""

    def __init__(self, target: TextIO, prefix: str = "    "):
        self.target, self.prefix, self.at_line_start = target, prefix, True

    def write(self, text: str) -> int:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        out = []
        for piece in text.splitlines(keepends=True):
            out.append((self.prefix if self.at_line_start else "") + piece)
            self.at_line_start = piece.endswith("\n")
        self.target.write("".join(out))
        self.target.flush()
        return len(text)

    def flush(self) -> None:
        self.target.flush()


#: The kernel process's own log (not the notebook's output) is noise in a headless run: "Kernel is
#: running over TCP without encryption", "KeyboardInterrupt caught in kernel" at shutdown. nbval
#: discards it too. A kernel that dies still fails the run (nbclient's DeadKernelError).
_KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=CRITICAL",)


def run_notebook(
    notebook: str,
    parameters: dict,
    output: Path,
    *,
    cwd: Path,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    stream: bool = True,
) -> Path:
    """Execute ``notebooks_dir/<notebook>.ipynb`` with papermill into ``output``, kernel in ``cwd``.

    With ``stream`` the notebook's stdout and stderr are forwarded, line by line, as it runs.
    A failing cell raises :class:`NotebookFailed`; the partly executed notebook stays at ``output``.
    """
    import papermill

    streams = dict(stdout_file=_LineStream(sys.stdout), stderr_file=_LineStream(sys.stderr)) if stream else {}
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(notebooks_dir / f"{notebook}.ipynb"),
            str(output),
            parameters=parameters,
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
            extra_arguments=list(_KERNEL_ARGUMENTS),
            **streams,
        )
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(
            notebook, error.cell_index, error.ename, error.evalue, output, error.source
        ) from error
    finally:
        if output.exists():
            _tidy_metadata(output)
    return output


_IMAGES = ("image/png", "image/jpeg", "image/svg+xml")


def _tidy_metadata(path: Path, reference: bool = False) -> None:
    """Write papermill's input/output paths relative to the project root (no machine's absolute
    paths in committed files). For a ``reference``, also drop timestamps, durations and images
    (nbval never compares images; the reports keep them), so that a reference stays small and
    regenerating it changes only what changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = os.path.relpath(meta[key], PROJECT_ROOT)
    if reference:
        for key in ("start_time", "end_time", "duration"):
            meta.pop(key, None)
        for cell in nb.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.id = "injected-parameters"  # papermill draws a new random id each time
            cell.metadata.pop("execution", None)
            for key in ("start_time", "end_time", "duration"):
                cell.metadata.get("papermill", {}).pop(key, None)
            for output in cell.get("outputs", []):
                for mime in _IMAGES:
                    output.get("data", {}).pop(mime, None)
    nbformat.write(nb, path)


def run_study(
    overrides: dict | None = None,
    *,
    quick: bool = False,
    name: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    reports_dir: Path = REPORTS_DIR,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    stream: bool = True,
) -> Path:
    """Run 01 -> 05 and write ``reports_dir/<name>/`` and ``reports_dir/index.html``; return the folder.

    ``overrides`` are TrainConfig fields (and :data:`ANALYSIS_OPTIONS`), as ``02_train`` takes them.
    Raises ``ValueError`` for a bad option, :class:`StudyError` when the run directory already
    holds a run (unless ``overwrite`` or ``resume``) before anything runs, and
    :class:`NotebookFailed` naming the notebook and cell when one fails.
    """
    study = plan_study(overrides, quick=quick, name=name, overwrite=overwrite, resume=resume)
    found = existing_run_files(study.config)
    if found and not (overwrite or resume):
        raise StudyError(
            f"run directory {study.config.path} already holds a run ({', '.join(found)}); it is "
            "never overwritten silently, so nothing was run: pass --resume to continue it, "
            "--overwrite to replace it, or choose another --name or --run-dir"
        )
    todo = {
        nb: declared_parameters(notebooks_dir / f"{nb}.ipynb", study.parameters[nb], study.explicit)
        for nb in NOTEBOOKS
    }
    folder = Path(reports_dir) / study.name
    _clear_study_folder(folder)
    record: dict[str, Any] = {
        "name": study.name,
        "quick": quick,
        "overwrite": overwrite,
        "resume": resume,
        "options": study.explicit,
        "config": study.config.to_dict(),
        "parameters": todo,
        "started": _now(),
        "status": "running",
        "seconds": {},
    }
    _write_record(folder, record)
    print(f"study {study.name}: run {study.config.run_dir}, reports {_relative(folder)}", flush=True)
    try:
        for i, nb in enumerate(NOTEBOOKS, 1):
            print(f"[{i}/{len(NOTEBOOKS)}] {nb}.ipynb {_short(todo[nb])}", flush=True)
            started = time.perf_counter()
            try:
                run_notebook(
                    nb,
                    todo[nb],
                    folder / f"{nb}.ipynb",
                    cwd=notebooks_dir,
                    notebooks_dir=notebooks_dir,
                    stream=stream,
                )
            finally:
                record["seconds"][nb] = round(time.perf_counter() - started, 1)
                if (folder / f"{nb}.ipynb").exists():
                    finalize_report(folder / f"{nb}.ipynb")  # HTML, thumbnail, slim .ipynb
            print(f"[{i}/{len(NOTEBOOKS)}] {nb}.ipynb done in {record['seconds'][nb]:.1f} s", flush=True)
        record["status"] = "complete"
    except NotebookFailed as failure:
        record["status"] = f"failed at {failure.notebook} cell {failure.cell_index}"
        record["failure"] = str(failure)
        raise
    finally:
        if record["status"] == "running":  # interrupted (Ctrl-C) or an unexpected error
            record["status"] = "interrupted"
        record["finished"] = _now()
        _copy_run_files(study.config, folder)
        _write_record(folder, record)
        write_index(reports_dir)
    return folder


def _clear_study_folder(folder: Path) -> None:
    """Remove what an earlier attempt of this study wrote (and only that), so that the folder
    never mixes notebooks of two attempts."""
    folder.mkdir(parents=True, exist_ok=True)
    for nb in NOTEBOOKS:
        for suffix in (".ipynb", ".html"):
            (folder / f"{nb}{suffix}").unlink(missing_ok=True)
    for f in ("study.json", "config.json", "history.csv", THUMBNAIL):
        (folder / f).unlink(missing_ok=True)


def _copy_run_files(config: TrainConfig, folder: Path) -> None:
    for f in ("config.json", "history.csv"):
        if (config.path / f).is_file():
            shutil.copyfile(config.path / f, folder / f)


def _write_record(folder: Path, record: dict) -> None:
    (folder / "study.json").write_text(json.dumps(record, indent=2) + "\n")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _short(parameters: dict, limit: int = 6) -> str:
    items = [f"{k}={v!r}" for k, v in parameters.items()]
    return (
        "("
        + ", ".join(items[:limit])
        + (f", ... {len(items) - limit} more" if len(items) > limit else "")
        + ")"
    )


# ----------------------------------------------------------------------------- nbval references


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
            print(f"[{set_name} {i}/{len(todo)}] reference {nb}.ipynb {_short(parameters)}", flush=True)
            started = time.perf_counter()
            out = run_notebook(
                nb,
                parameters,
                out_dir / f"{nb}.ipynb",
                cwd=out_dir,
                notebooks_dir=notebooks_dir,
                stream=stream,
            )
            _tidy_metadata(out, reference=True)
            print(
                f"[{set_name} {i}/{len(todo)}] {_relative(out)} in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            written.append(out)
    return written


# ----------------------------------------------------------------------------- command line


def _converter(hint: Any) -> Callable[[str], Any]:
    """An argparse ``type`` for a TrainConfig annotation; ``Optional[...]`` also accepts 'none'."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        if base is list:  # lr_candidates: "0.01,0.02,0.1"
            return [float(v) for v in text.split(",")]
        return base(text)

    convert.__name__ = base.__name__ + (" or 'none'" if optional else "")  # argparse's error names it
    return convert


_CHOICES = {
    "dataset": _config.DATASETS,
    "decoder": _config.DECODERS,
    "activation": _config.ACTIVATIONS,
    "init": _config.INITS,
    "optimizer": _config.OPTIMIZERS,
    "kl": _config.KL_ESTIMATORS,
    "binarize": _config.BINARIZATIONS,
    "device": _config.DEVICES,
    "dtype": _config.DTYPES,
}


def build_parser() -> argparse.ArgumentParser:
    """The options: one per TrainConfig field (``--latent-dim 5``), the analysis options, and the
    study's own (``--quick``, ``--resume``, ``--overwrite``, ``--name``, ``--reports-dir``,
    ``--references``). Options left out keep the notebooks' defaults (TrainConfig's)."""
    parser = argparse.ArgumentParser(
        prog="python -m vae_utils.study",
        usage="%(prog)s [options]",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m vae_utils.study --latent-dim 5 --decoder gaussian",
    )
    train = parser.add_argument_group("training (notebook 02_train; TrainConfig's fields)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        allowed = _CHOICES.get(field.name)
        default = "runs/<name>" if field.name == "run_dir" else repr(field.default)
        text = (f"one of {', '.join(allowed)}; " if allowed else "") + f"default {default}"
        if hints[field.name] is bool:
            train.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        else:  # no argparse `choices`: a bad value gets the package's own message
            train.add_argument(
                flag,
                type=_converter(hints[field.name]),
                default=argparse.SUPPRESS,
                metavar=field.name.upper(),
                help=text,
            )
    analysis = parser.add_argument_group("analysis (notebooks 03-05; default: the notebooks')")
    for option, (kind, _, optional) in ANALYSIS_OPTIONS.items():
        analysis.add_argument(
            "--" + option.replace("_", "-"),
            default=argparse.SUPPRESS,
            type=_converter((kind | None) if optional else kind),
            metavar=option.upper(),
        )
    study = parser.add_argument_group("study")
    study.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_TRAIN} and {QUICK_ANALYSIS}, unless given explicitly",
    )
    mode = study.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the existing run (02_train)")
    mode.add_argument("--overwrite", action="store_true", help="replace the existing run (02_train)")
    study.add_argument(
        "--name",
        help="study folder under the reports dir and runs/<name> "
        "(default: the config's name, plus _quick in quick mode)",
    )
    study.add_argument("--reports-dir", type=Path, default=REPORTS_DIR, help="default reports/")
    study.add_argument(
        "--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help="the notebooks to run; default notebooks/"
    )
    study.add_argument(
        "--references",
        action="store_true",
        help="regenerate nbval's references (tests/notebooks/ and "
        "tests/notebooks/frey/) with their CI configurations, and nothing else",
    )
    return parser


STUDY_OPTIONS = ("quick", "resume", "overwrite", "name", "reports_dir", "notebooks_dir", "references")


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the command line into (overrides, study options), both dicts; overrides holds only the
    TrainConfig fields and analysis options that were given. Bad values exit with status 2 and the
    package's message (``latent_dim = 0 is invalid: allowed an integer >= 1``)."""
    parser = parser or build_parser()
    overrides = vars(parser.parse_args(argv))
    own = {k: overrides.pop(k) for k in STUDY_OPTIONS}
    if own["references"] and (overrides or own["quick"] or own["resume"] or own["overwrite"] or own["name"]):
        parser.error("--references takes no other option: its configurations are CI_REFERENCE_SETS")
    try:
        plan_study(overrides, quick=own["quick"], name=own["name"])  # errors before any kernel starts
    except ValueError as error:
        parser.error(str(error))
    return overrides, own


def main(argv: list | None = None) -> int:
    """Run the study (or regenerate the references); 0 on success, 1 when it fails, 2 on bad options."""
    overrides, own = parse_args(argv)
    try:
        if own["references"]:
            written = generate_references(notebooks_dir=own["notebooks_dir"])
            folders = sorted({_relative(path.parent) for path in written})
            print(f"references written to {', '.join(folders)}", flush=True)
            return 0
        folder = run_study(
            overrides,
            quick=own["quick"],
            name=own["name"],
            overwrite=own["overwrite"],
            resume=own["resume"],
            reports_dir=own["reports_dir"],
            notebooks_dir=own["notebooks_dir"],
        )
    except NotebookFailed as failure:
        source = "\n".join("    " + line for line in failure.source.splitlines()[:8])
        print(
            f"\n{failure}\nthe cell:\n{source}\nthe partly executed notebook is kept: "
            f"{_relative(failure.output)} (and its .html)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except StudyError as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        return 1
    print(
        f"study written to {_relative(folder)}; index: {_relative(Path(own['reports_dir']) / 'index.html')}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
