"""The main job: run notebooks 01-05 headless (``python -m vae_utils.study``) into
``reports/<name>/``, as HTML that reads offline, and rebuild the landing page. The README's "Install,
test, run" shows the commands; docs/reports.md says what a study folder holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vae_utils import config as _config
from vae_utils.config import (
    ANALYSIS_OPTIONS,
    FIELDS,
    NOTEBOOKS_DIR,
    REPORTS_DIR,
    STUDY_NOTEBOOKS,
    TrainConfig,
    check_analysis_option,
    display_path,
)
from vae_utils.index_page import write_index
from vae_utils.notebook_runner import (
    NotebookError,
    NotebookFailed,
    declared_parameters,
    run_notebook,
    short_parameters,
)
from vae_utils.reports import THUMBNAIL, finalize_report
from vae_utils.results import RESULTS_FILE
from vae_utils.runfiles import existing_run_files, timestamp

NOTEBOOKS = STUDY_NOTEBOOKS
#: Which parameters each notebook takes (the notebooks' parameter contract).
CONTRACT = {
    "01_derivation": ("seed",),
    "02_train": FIELDS + ("overwrite", "resume"),
    "03_loss_curves": ("run_dir", "iw_samples", "iw_subset", "seed", "results_path"),
    "04_reconstruction": ("run_dir", "n_images", "seed"),
    "05_latent_manifold": ("run_dir", "grid_size", "seed"),
}
# The analysis notebooks' own options (name -> (type, minimum, None allowed)) are
# ``vae_utils.config.ANALYSIS_OPTIONS``, imported above, which the notebooks check too.

#: ``--quick``: small enough to finish in a minute or two on a 2-core CPU. Explicit options win.
QUICK_TRAIN = {"train_subset": 2000, "test_subset": 500, "epochs": 3}
QUICK_ANALYSIS = {"iw_samples": 100, "iw_subset": 200}
#: The study's one default beyond TrainConfig's (not with ``--quick``; ``--no-compile`` to leave it):
#: on a CPU each training step is one compiled graph, which pays over the study's 100 epochs even
#: with inductor's cache cold (docs/speed.md). ``compile`` does not change what is trained (a
#: placement field: the run's name and a resume ignore it); the bounds agree to the printed digits.
STUDY_TRAIN = {"compile": True}


class StudyError(NotebookError):
    """The study cannot start: bad options, or an existing run."""


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
    unknown = sorted(set(overrides) - set(FIELDS) - set(ANALYSIS_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown}: allowed TrainConfig fields "
            f"{list(FIELDS)} and {list(ANALYSIS_OPTIONS)}"
        )
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: choose one")
    for option in ANALYSIS_OPTIONS:
        if option in overrides:
            check_analysis_option(option, overrides[option])
    train_values = {
        **(QUICK_TRAIN if quick else STUDY_TRAIN),
        **{k: v for k, v in overrides.items() if k in FIELDS},
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


# ----------------------------------------------------------------------------- executing


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
    folder = Path(reports_dir) / study.name
    study.parameters["03_loss_curves"]["results_path"] = display_path(folder / RESULTS_FILE)
    todo = {
        nb: declared_parameters(notebooks_dir / f"{nb}.ipynb", study.parameters[nb], study.explicit)
        for nb in NOTEBOOKS
    }
    _clear_study_folder(folder)
    record: dict[str, Any] = {
        "name": study.name,
        "quick": quick,
        "overwrite": overwrite,
        "resume": resume,
        "options": study.explicit,
        "config": study.config.to_dict(),
        "parameters": todo,
        "started": timestamp(),
        "status": "running",
        "seconds": {},
    }
    _write_record(folder, record)
    print(f"study {study.name}: run {study.config.run_dir}, reports {display_path(folder)}", flush=True)
    try:
        for i, nb in enumerate(NOTEBOOKS, 1):
            print(f"[{i}/{len(NOTEBOOKS)}] {nb}.ipynb {short_parameters(todo[nb])}", flush=True)
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
        record["finished"] = timestamp()
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
    for f in ("study.json", "config.json", "history.csv", RESULTS_FILE, THUMBNAIL):
        (folder / f).unlink(missing_ok=True)


def _copy_run_files(config: TrainConfig, folder: Path) -> None:
    for f in ("config.json", "history.csv"):
        if (config.path / f).is_file():
            shutil.copyfile(config.path / f, folder / f)


def _write_record(folder: Path, record: dict) -> None:
    (folder / "study.json").write_text(json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- command line


def _converter(field: str, hint: Any) -> Callable[[str], Any]:
    """An argparse ``type`` for a TrainConfig annotation; ``Optional[...]`` also accepts 'none'."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        if base is list:  # lr_candidates: "0.01:0.02:0.1"
            return _config.parse_float_list(field, text)
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
    "autocast": _config.AUTOCASTS,
}


def build_parser() -> argparse.ArgumentParser:
    """The options: one per TrainConfig field (``--latent-dim 5``), the analysis options, and the
    study's own (``--quick``, ``--resume``, ``--overwrite``, ``--name``, ``--reports-dir``,
    ``--notebooks-dir``). Options left out keep the notebooks' defaults (TrainConfig's), but for
    :data:`STUDY_TRAIN`."""
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
        default = repr(STUDY_TRAIN.get(field.name, field.default))
        if field.name in STUDY_TRAIN:
            default += f" ({field.default!r} with --quick)"
        elif field.name == "run_dir":
            default = "runs/<name>"
        text = (f"one of {', '.join(allowed)}; " if allowed else "") + f"default {default}"
        if hints[field.name] is bool:
            train.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        else:  # no argparse `choices`: a bad value gets the package's own message
            train.add_argument(
                flag,
                type=_converter(field.name, hints[field.name]),
                default=argparse.SUPPRESS,
                metavar=field.name.upper(),
                help=text,
            )
    analysis = parser.add_argument_group("analysis (notebooks 03-05; default: the notebooks')")
    for option, (kind, _, optional) in ANALYSIS_OPTIONS.items():
        analysis.add_argument(
            "--" + option.replace("_", "-"),
            default=argparse.SUPPRESS,
            type=_converter(option, (kind | None) if optional else kind),
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
    study.add_argument("--references", action="store_true", help=argparse.SUPPRESS)  # moved: see parse_args
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
    if own.pop("references"):
        parser.error("--references moved out of the package: run `python tests/references.py`")
    try:
        plan_study(overrides, quick=own["quick"], name=own["name"])  # errors before any kernel starts
    except ValueError as error:
        parser.error(str(error))
    return overrides, own


def main(argv: list | None = None) -> int:
    """Run the study; 0 on success, 1 when it fails, 2 on bad options."""
    overrides, own = parse_args(argv)
    try:
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
            f"{display_path(failure.output)} (and its .html)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    except NotebookError as error:  # StudyError included
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        return 1
    index = display_path(Path(own["reports_dir"]) / "index.html")
    print(f"study written to {display_path(folder)}; index: {index}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (``... --dry-run | head``): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
