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

nbval's references: :data:`CI_PARAMETERS` is the one place where the small CI configuration lives;
``--references`` executes every notebook with it into ``tests/notebooks/``, where ``pytest --nbval``
re-executes and compares them.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import html
import json
import os
import re
import shutil
import sys
import time
import typing
from pathlib import Path
from typing import Optional

from vae_utils import config as _config
from vae_utils.config import PROJECT_ROOT, TrainConfig, check_int
from vae_utils.training import existing_run_files

NOTEBOOKS = ("01_derivation", "02_train", "03_loss_curves", "04_reconstruction", "05_latent_manifold")
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
#: The analysis notebooks' own options: name -> (type, minimum, None allowed).
ANALYSIS_OPTIONS = {"iw_samples": (int, 1, False), "iw_subset": (int, 1, True),
                    "n_images": (int, 1, False), "grid_size": (int, 2, False)}

#: ``--quick``: small enough to finish in a minute or two on a 2-core CPU. Explicit options win.
QUICK_TRAIN = {"train_subset": 2000, "test_subset": 500, "epochs": 3}
QUICK_ANALYSIS = {"iw_samples": 100, "iw_subset": 200}

#: The CI configuration of nbval's references (``--references``), per notebook.
CI_RUN_DIR = "runs/nbval"
CI_THREADS = 1  # must equal tests/conftest.py's OMP_NUM_THREADS: float results depend on it
CI_PARAMETERS = {
    "01_derivation": {"seed": 0},
    "02_train": {"train_subset": 1000, "test_subset": 500, "epochs": 3, "seed": 0, "device": "cpu",
                 "run_dir": CI_RUN_DIR, "overwrite": True},
    "03_loss_curves": {"run_dir": CI_RUN_DIR, "iw_samples": 50, "iw_subset": 100, "seed": 0},
    "04_reconstruction": {"run_dir": CI_RUN_DIR, "seed": 0},
    "05_latent_manifold": {"run_dir": CI_RUN_DIR, "seed": 0},
}


class StudyError(RuntimeError):
    """The study cannot start (bad options, an existing run) or a notebook failed."""


class NotebookFailed(StudyError):
    """A notebook raised; the message names the notebook, the cell and the error.

    ``cell_index`` is papermill's: the 0-based position of the failing cell in the executed
    notebook (markdown cells and the injected-parameters cell count); ``source`` is its code.
    """

    def __init__(self, notebook: str, cell_index: int, ename: str, evalue: str, output: Path,
                 source: str = ""):
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

def plan_study(overrides: Optional[dict] = None, *, quick: bool = False, name: Optional[str] = None,
               overwrite: bool = False, resume: bool = False) -> Study:
    """Validate the options and decide every notebook's parameters; nothing runs yet.

    ``overrides`` holds TrainConfig fields and the analysis options (:data:`ANALYSIS_OPTIONS`).
    A bad value raises ``ValueError`` with the package's message (field, value, what is allowed).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TRAIN_FIELDS) - set(ANALYSIS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: allowed TrainConfig fields "
                         f"{list(TRAIN_FIELDS)} and {list(ANALYSIS_OPTIONS)}")
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other: choose one")
    for option, (_, minimum, optional) in ANALYSIS_OPTIONS.items():
        if option in overrides:
            check_int(option, overrides[option], minimum, optional)
    train_values = {**(QUICK_TRAIN if quick else {}),
                    **{k: v for k, v in overrides.items() if k in TRAIN_FIELDS}}
    config = TrainConfig(**train_values)  # validates
    name = name or config.name + ("_quick" if quick else "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"name = {name!r} is invalid: allowed letters, digits, '.', '_' and '-'")
    if "run_dir" not in overrides:
        config = dataclasses.replace(config, run_dir=f"runs/{name}")
    values = {**config.to_dict(), "overwrite": overwrite, "resume": resume,
              **(QUICK_ANALYSIS if quick else {}),
              **{k: v for k, v in overrides.items() if k in ANALYSIS_OPTIONS}}
    parameters = {nb: {k: values[k] for k in keys if k in values} for nb, keys in CONTRACT.items()}
    return Study(name, config, quick, overwrite, resume, overrides, parameters)


def declared_parameters(notebook_path: Path, wanted: dict, explicit: dict = ()) -> dict:
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
        raise StudyError(f"{notebook_path.name} does not declare parameter(s) {dropped}; "
                         f"it declares {sorted(declared)}")
    return {k: v for k, v in wanted.items() if k in declared}


# ----------------------------------------------------------------------------- executing

class _LineStream:
    """Forwards a kernel's stream to ``target``: carriage returns become newlines (no ``\\r`` soup
    in logs) and every line is indented under the notebook's heading."""

    def __init__(self, target, prefix: str = "    "):
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


def run_notebook(notebook: str, parameters: dict, output: Path, *, cwd: Path,
                 notebooks_dir: Path = NOTEBOOKS_DIR, stream: bool = True) -> Path:
    """Execute ``notebooks_dir/<notebook>.ipynb`` with papermill into ``output``, kernel in ``cwd``.

    With ``stream`` the notebook's stdout and stderr are forwarded, line by line, as it runs.
    A failing cell raises :class:`NotebookFailed`; the partly executed notebook stays at ``output``.
    """
    import papermill

    streams = dict(stdout_file=_LineStream(sys.stdout), stderr_file=_LineStream(sys.stderr)) if stream else {}
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebooks_dir / f"{notebook}.ipynb"), str(output),
                                   parameters=parameters, cwd=str(cwd), progress_bar=False,
                                   log_output=False, extra_arguments=list(_KERNEL_ARGUMENTS), **streams)
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(notebook, error.cell_index, error.ename, error.evalue, output,
                             error.source) from error
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
            cell.metadata.pop("execution", None)
            for key in ("start_time", "end_time", "duration"):
                cell.metadata.get("papermill", {}).pop(key, None)
            for output in cell.get("outputs", []):
                for mime in _IMAGES:
                    output.get("data", {}).pop(mime, None)
    nbformat.write(nb, path)


def export_html(notebook_path: Path) -> Path:
    """Write ``<notebook>.html`` beside it: nbconvert's lab template, images inlined, code shown."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook_path, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(
        nb, resources={"metadata": {"name": notebook_path.stem}})
    out = notebook_path.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def run_study(overrides: Optional[dict] = None, *, quick: bool = False, name: Optional[str] = None,
              overwrite: bool = False, resume: bool = False, reports_dir: Path = REPORTS_DIR,
              notebooks_dir: Path = NOTEBOOKS_DIR, stream: bool = True) -> Path:
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
            "--overwrite to replace it, or choose another --name or --run-dir")
    todo = {nb: declared_parameters(notebooks_dir / f"{nb}.ipynb", study.parameters[nb], study.explicit)
            for nb in NOTEBOOKS}
    folder = Path(reports_dir) / study.name
    _clear_study_folder(folder)
    record = {"name": study.name, "quick": quick, "overwrite": overwrite, "resume": resume,
              "options": study.explicit, "config": study.config.to_dict(), "parameters": todo,
              "started": _now(), "status": "running", "seconds": {}}
    _write_record(folder, record)
    print(f"study {study.name}: run {study.config.run_dir}, reports {_relative(folder)}", flush=True)
    try:
        for i, nb in enumerate(NOTEBOOKS, 1):
            print(f"[{i}/{len(NOTEBOOKS)}] {nb}.ipynb {_short(todo[nb])}", flush=True)
            started = time.perf_counter()
            try:
                run_notebook(nb, todo[nb], folder / f"{nb}.ipynb", cwd=notebooks_dir,
                             notebooks_dir=notebooks_dir, stream=stream)
            finally:
                record["seconds"][nb] = round(time.perf_counter() - started, 1)
                if (folder / f"{nb}.ipynb").exists():
                    export_html(folder / f"{nb}.ipynb")
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
    for f in ("study.json", "config.json", "history.csv"):
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
    return "(" + ", ".join(items[:limit]) + (f", ... {len(items) - limit} more" if len(items) > limit else "") + ")"


# ----------------------------------------------------------------------------- the index

def study_results(folder: Path, record: dict) -> dict:
    """Key results from the study's ``history.csv`` (its copy in ``folder``, else the run's)."""
    import pandas as pd

    candidates = [folder / "history.csv"]
    if record.get("config", {}).get("run_dir"):
        from vae_utils.config import resolve_path

        candidates.append(resolve_path(record["config"]["run_dir"]) / "history.csv")
    for path in candidates:
        if path.is_file():
            history = pd.read_csv(path)
            if history.empty:
                return {}
            best = history.loc[history["test_elbo"].idxmax()]
            return {"epochs run": int(history["epoch"].max()), "best epoch": int(best["epoch"]),
                    "best test ELBO": round(float(best["test_elbo"]), 2),
                    "train ELBO at best": round(float(best["train_elbo"]), 2),
                    "test KL at best": round(float(best["test_kl"]), 2),
                    "training time": f"{float(history['seconds'].max()) / 60:.1f} min"}
    return {}


def write_index(reports_dir: Path = REPORTS_DIR) -> Path:
    """Write ``reports_dir/index.html``: every study folder, its notebooks, configuration and results."""
    reports_dir = Path(reports_dir)
    folders = sorted(p for p in reports_dir.iterdir() if p.is_dir() and _is_study(p)) if reports_dir.is_dir() else []
    summary, sections = [], []
    for folder in folders:
        record = _read_record(folder)
        config, results = record.get("config", {}), study_results(folder, record)
        name = html.escape(folder.name)
        summary.append(_row([f'<a href="#{name}">{name}</a>', html.escape(record.get("status", "?")),
                             *(html.escape(str(config.get(k, ""))) for k in
                               ("dataset", "decoder", "latent_dim", "hidden_dim")),
                             html.escape(str(results.get("epochs run", ""))),
                             html.escape(str(results.get("best test ELBO", ""))),
                             html.escape(record.get("finished", "")[:16].replace("T", " "))]))
        links = "".join(f"<li>{_links(folder, nb)}</li>" for nb in NOTEBOOKS)
        sections.append(
            f'<section id="{name}"><h2>{name}{" (quick)" if record.get("quick") else ""}</h2>'
            f"<p>status: {html.escape(record.get('failure') or record.get('status', 'no study.json'))}</p>"
            f"<ol>{links}</ol>"
            + (_table("results", results) if results else "")
            + (_table("configuration", config) if config else "")
            + "</section>")
    head = _row(["study", "status", "dataset", "decoder", "N_z", "hidden", "epochs", "best test ELBO",
                 "finished"], "th")
    page = (_INDEX_HEAD + f"<table><thead>{head}</thead><tbody>{''.join(summary)}</tbody></table>"
            + ("".join(sections) or "<p>No study yet: run <code>python -m vae_utils.study</code>.</p>")
            + "</body></html>\n")
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "index.html").write_text(page, encoding="utf-8")
    return reports_dir / "index.html"


_INDEX_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VAE study reports</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f3f3f3}section{margin-top:2em}caption{text-align:left;font-weight:bold}</style></head>
<body><h1>Auto-Encoding Variational Bayes (Kingma &amp; Welling): study reports</h1>
<p>Each study ran the five notebooks headless (<code>python -m vae_utils.study</code>); every
notebook is linked as HTML and as the executed <code>.ipynb</code>.</p>
"""


def _is_study(folder: Path) -> bool:
    return (folder / "study.json").is_file() or any(folder.glob("*.ipynb")) or any(folder.glob("*.html"))


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        return {}


def _links(folder: Path, notebook: str) -> str:
    parts = [f'<a href="{html.escape(folder.name)}/{notebook}{suffix}">{label}</a>'
             for suffix, label in ((".html", notebook), (".ipynb", ".ipynb"))
             if (folder / f"{notebook}{suffix}").is_file()]
    return " | ".join(parts) if parts else f"{notebook} (not run)"


def _row(cells, tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _table(caption: str, values: dict) -> str:
    rows = "".join(_row([html.escape(str(k)), html.escape(repr(v) if isinstance(v, str) or v is None else str(v))])
                   for k, v in values.items())
    return f"<table><caption>{caption}</caption>{rows}</table>"


# ----------------------------------------------------------------------------- nbval references

def generate_references(out_dir: Path = REFERENCES_DIR, notebooks_dir: Path = NOTEBOOKS_DIR,
                        stream: bool = True) -> list[Path]:
    """Execute every notebook with :data:`CI_PARAMETERS` into ``out_dir`` (nbval's references).

    The kernels run in ``out_dir``, where nbval starts them, with the thread count of
    ``tests/conftest.py``; timestamps and images are dropped (nbval compares neither).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(CI_THREADS)  # the kernels inherit it
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, nb in enumerate(NOTEBOOKS, 1):
        parameters = declared_parameters(notebooks_dir / f"{nb}.ipynb", CI_PARAMETERS[nb], CI_PARAMETERS[nb])
        print(f"[{i}/{len(NOTEBOOKS)}] reference {nb}.ipynb {_short(parameters)}", flush=True)
        out = run_notebook(nb, parameters, out_dir / f"{nb}.ipynb", cwd=out_dir,
                           notebooks_dir=notebooks_dir, stream=stream)
        _tidy_metadata(out, reference=True)
        written.append(out)
    return written


# ----------------------------------------------------------------------------- command line

def _converter(hint):
    """An argparse ``type`` for a TrainConfig annotation; ``Optional[...]`` also accepts 'none'."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        return base(text)

    convert.__name__ = base.__name__ + (" or 'none'" if optional else "")  # argparse's error names it
    return convert


_CHOICES = {"dataset": _config.DATASETS, "decoder": _config.DECODERS,
            "activation": _config.ACTIVATIONS, "init": _config.INITS,
            "optimizer": _config.OPTIMIZERS, "kl": _config.KL_ESTIMATORS,
            "binarize": _config.BINARIZATIONS, "device": _config.DEVICES}


def build_parser() -> argparse.ArgumentParser:
    """The options: one per TrainConfig field (``--latent-dim 5``), the analysis options, and the
    study's own (``--quick``, ``--resume``, ``--overwrite``, ``--name``, ``--reports-dir``,
    ``--references``). Options left out keep the notebooks' defaults (TrainConfig's)."""
    parser = argparse.ArgumentParser(
        prog="python -m vae_utils.study", usage="%(prog)s [options]", description=__doc__.split("\n\n")[0],
        epilog="Example: python -m vae_utils.study --latent-dim 5 --decoder gaussian")
    train = parser.add_argument_group("training (notebook 02_train; TrainConfig's fields)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        allowed = _CHOICES.get(field.name)
        default = "runs/<name>" if field.name == "run_dir" else repr(field.default)
        text = (f"one of {', '.join(allowed)}; " if allowed else "") + f"default {default}"
        if hints[field.name] is bool:
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=text)
        else:  # no argparse `choices`: a bad value gets the package's own message
            train.add_argument(flag, type=_converter(hints[field.name]), default=argparse.SUPPRESS,
                               metavar=field.name.upper(), help=text)
    analysis = parser.add_argument_group("analysis (notebooks 03-05; default: the notebooks')")
    for option, (kind, _, optional) in ANALYSIS_OPTIONS.items():
        analysis.add_argument("--" + option.replace("_", "-"), default=argparse.SUPPRESS,
                              type=_converter(Optional[kind] if optional else kind),
                              metavar=option.upper())
    study = parser.add_argument_group("study")
    study.add_argument("--quick", action="store_true",
                       help=f"smoke run: {QUICK_TRAIN} and {QUICK_ANALYSIS}, unless given explicitly")
    mode = study.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the existing run (02_train)")
    mode.add_argument("--overwrite", action="store_true", help="replace the existing run (02_train)")
    study.add_argument("--name", help="study folder under the reports dir and runs/<name> "
                                      "(default: the config's name, plus _quick in quick mode)")
    study.add_argument("--reports-dir", type=Path, default=REPORTS_DIR, help="default reports/")
    study.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR,
                       help="the notebooks to run; default notebooks/")
    study.add_argument("--references", action="store_true",
                       help="regenerate nbval's references in tests/notebooks/ with the CI "
                            "configuration, and nothing else")
    return parser


STUDY_OPTIONS = ("quick", "resume", "overwrite", "name", "reports_dir", "notebooks_dir", "references")


def parse_args(argv: Optional[list] = None, parser: Optional[argparse.ArgumentParser] = None):
    """Split the command line into (overrides, study options), both dicts; overrides holds only the
    TrainConfig fields and analysis options that were given. Bad values exit with status 2 and the
    package's message (``latent_dim = 0 is invalid: allowed an integer >= 1``)."""
    parser = parser or build_parser()
    overrides = vars(parser.parse_args(argv))
    own = {k: overrides.pop(k) for k in STUDY_OPTIONS}
    if own["references"] and (overrides or own["quick"] or own["resume"] or own["overwrite"] or own["name"]):
        parser.error("--references takes no other option: its configuration is CI_PARAMETERS")
    try:
        plan_study(overrides, quick=own["quick"], name=own["name"])  # errors before any kernel starts
    except ValueError as error:
        parser.error(str(error))
    return overrides, own


def main(argv: Optional[list] = None) -> int:
    """Run the study (or regenerate the references); 0 on success, 1 when it fails, 2 on bad options."""
    overrides, own = parse_args(argv)
    try:
        if own["references"]:
            generate_references(notebooks_dir=own["notebooks_dir"])
            print(f"references written to {_relative(REFERENCES_DIR)}", flush=True)
            return 0
        folder = run_study(overrides, quick=own["quick"], name=own["name"], overwrite=own["overwrite"],
                           resume=own["resume"], reports_dir=own["reports_dir"],
                           notebooks_dir=own["notebooks_dir"])
    except NotebookFailed as failure:
        source = "\n".join("    " + line for line in failure.source.splitlines()[:8])
        print(f"\n{failure}\nthe cell:\n{source}\nthe partly executed notebook is kept: "
              f"{_relative(failure.output)} (and its .html)", file=sys.stderr, flush=True)
        return 1
    except StudyError as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"study written to {_relative(folder)}; index: "
          f"{_relative(Path(own['reports_dir']) / 'index.html')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
