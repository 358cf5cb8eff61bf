"""The notebooks' contract with papermill and nbval.

- ``tests/notebooks/`` (MNIST) and ``tests/notebooks/frey/`` (Frey Face, Gaussian decoder) hold
  nbval's reference sets (``references.CI_REFERENCE_SETS``), which ``pytest --nbval`` re-executes and
  compares; a reference is stale when its code cells differ from its notebook's in ``notebooks/``
  or it ran with other parameters than its set's.
- Every notebook has one ``parameters`` cell, the ``python3`` kernelspec and no stored outputs.
- Bad parameters fail through papermill at the validation cell (the code cell after ``parameters``) with
  the package's message, and an existing run is never touched.

Each papermill call starts a kernel (a few seconds); only fast-failing runs are made here.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest
import references

from vae_utils import config
from vae_utils.runfiles import RUN_FILES

NOTEBOOKS = references.ALL_NOTEBOOKS
REGENERATE = f"regenerate the references with `{references.REFERENCES_COMMAND}`"
SETS = references.CI_REFERENCE_SETS
#: (set, notebook) for every reference of every set.
REFERENCES = [
    (s, nb) for s, reference_set in SETS.items() for nb in NOTEBOOKS if nb in reference_set["parameters"]
]


def source_path(name: str) -> Path:
    path = config.NOTEBOOKS_DIR / f"{name}.ipynb"
    if not path.is_file():
        pytest.fail(f"notebook {path} is missing")
    return path


def read(path: Path):
    return nbformat.read(path, as_version=4)


def tags(cell) -> list:
    return cell.metadata.get("tags", [])


def code_sources(nb) -> list[str]:
    """The code cells' sources, without papermill's injected-parameters cell."""
    return [c.source for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in tags(c)]


def validation_index(nb) -> int:
    """The validation cell: the first code cell after the ``parameters`` cell."""
    (start,) = [i for i, c in enumerate(nb.cells) if "parameters" in tags(c)]
    return next(i for i in range(start + 1, len(nb.cells)) if nb.cells[i].cell_type == "code")


# ----------------------------------------------------------------------------- the notebooks


def test_the_notebook_set_and_the_reference_set_match():
    notebooks = sorted(p.stem for p in config.NOTEBOOKS_DIR.glob("*.ipynb"))
    assert notebooks == list(NOTEBOOKS), f"notebooks/ holds {notebooks}, the project has {NOTEBOOKS}"
    assert list(SETS["mnist"]["parameters"]) == list(config.STUDY_NOTEBOOKS)
    covered = {nb for reference_set in SETS.values() for nb in reference_set["parameters"]}
    assert covered == set(NOTEBOOKS), f"no reference set runs {sorted(set(NOTEBOOKS) - covered)}"
    for name, reference_set in SETS.items():
        folder = Path(reference_set["folder"])
        references = sorted(p.stem for p in folder.glob("*.ipynb"))
        wanted = [nb for nb in NOTEBOOKS if nb in reference_set["parameters"]]
        assert references == wanted, (
            f"{folder.relative_to(config.PROJECT_ROOT)} holds {references}, set {name!r} runs {wanted}: "
            f"{REGENERATE}"
        )


@pytest.mark.parametrize("name", [s for s in SETS if "run_dir" in SETS[s]])
def test_reference_set_is_consistent(name):
    """Each set trains its own run in 02_train and analyses that run in 03-05; nbval runs a folder's
    notebooks in file order (02 before 03), in the folder's own kernel working directory; and
    every folder is under pytest's testpaths (``tests``), where ``pytest`` collects it."""
    reference_set = SETS[name]
    parameters, run_dir = reference_set["parameters"], reference_set["run_dir"]
    folder = Path(reference_set["folder"]).resolve()
    assert set(parameters) <= set(NOTEBOOKS), sorted(set(parameters) - set(NOTEBOOKS))
    assert folder.is_relative_to(config.PROJECT_ROOT / "tests"), folder
    assert parameters["02_train"]["run_dir"] == run_dir and parameters["02_train"]["overwrite"] is True
    for nb in ("03_loss_curves", "04_reconstruction", "05_latent_manifold"):
        assert parameters[nb]["run_dir"] == run_dir, f"{name}: {nb} reads {parameters[nb]['run_dir']}"
    assert sorted(f"{nb}.ipynb" for nb in parameters) == [
        f"{nb}.ipynb" for nb in NOTEBOOKS if nb in parameters
    ]
    others = [s for s in SETS if s != name]
    assert all(SETS[s].get("run_dir") != run_dir for s in others), "two sets share a run directory"
    assert all(Path(SETS[s]["folder"]).resolve() != folder for s in others), "two sets share a folder"


def _sanitize(text: str) -> str:
    """tests/nbval_sanitize.cfg's replacements, in its order, as nbval applies them."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config.PROJECT_ROOT / "tests" / "nbval_sanitize.cfg")
    for section in parser.sections():
        text = re.sub(parser[section]["regex"], parser[section]["replace"], text)
    return text


@pytest.mark.parametrize("name", SETS)
def test_sanitizer_hides_where_the_repository_lives(name):
    # A fresh clone elsewhere prints other absolute paths for the run and the reference folder.
    # (A checkout under /tmp is sanitised by the [tmp] rule instead, as every temporary path is, so
    # the real root is compared only when it lies elsewhere.)
    run = SETS[name].get("run_dir") or references.reference_runs(name)[0].run_dir
    real = [] if str(config.PROJECT_ROOT).startswith("/tmp/") else [str(config.PROJECT_ROOT)]
    for root in (*real, "/somewhere/else/vae", "/home/someone/src/vae"):
        folder = Path(SETS[name]["folder"]).relative_to(config.PROJECT_ROOT)
        printed = f"saved to '{root}/{run}' from {root}/{folder}"
        assert _sanitize(printed) == _sanitize(printed.replace(root, "/elsewhere/clone"))
        assert root not in _sanitize(printed)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean(name):
    nb = read(source_path(name))
    parameter_cells = [c for c in nb.cells if "parameters" in tags(c)]
    assert len(parameter_cells) == 1, f"{name}: {len(parameter_cells)} cells tagged 'parameters', want 1"
    assert parameter_cells[0].cell_type == "code"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec must be python3"
    stored = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not stored, f"{name}: cells {stored} store outputs or execution counts; clear them"
    assert not any("injected-parameters" in tags(c) for c in nb.cells), f"{name}: an executed copy?"
    folders = [Path(s["folder"]) for s in SETS.values() if name in s["parameters"]]
    assert any((f / f"{name}.ipynb").is_file() for f in folders), f"{name} has no reference: {REGENERATE}"


@pytest.mark.parametrize("set_name, name", REFERENCES, ids=[f"{s}-{nb}" for s, nb in REFERENCES])
def test_reference_is_current(set_name, name):
    source = read(source_path(name))
    reference_path = Path(SETS[set_name]["folder"]) / f"{name}.ipynb"
    shown = reference_path.relative_to(config.PROJECT_ROOT)
    assert reference_path.is_file(), f"{shown} is missing: {REGENERATE}"
    reference = read(reference_path)
    ours, theirs = code_sources(source), code_sources(reference)
    if ours != theirs:
        # strict=False: the two lists may differ in length; the first difference is what matters
        pairs = enumerate(zip(ours, theirs, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(ours), len(theirs)))
        pytest.fail(
            f"{shown} is stale: its code cells differ from "
            f"notebooks/{name}.ipynb from code cell {first} on ({len(ours)} code cells "
            f"now, {len(theirs)} in the reference); {REGENERATE}"
        )
    injected = reference.metadata.get("papermill", {}).get("parameters")
    wanted = references.reference_parameters(set_name)[name]
    assert injected == wanted, (
        f"{shown} ran with {injected}, the CI configuration of set {set_name!r} is {wanted}: {REGENERATE}"
    )
    unrun = [i for i, c in enumerate(reference.cells) if c.cell_type == "code" and c.execution_count is None]
    errors = [
        i
        for i, c in enumerate(reference.cells)
        if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)
    ]
    assert not unrun and not errors, f"{name}: reference cells {unrun} unrun, {errors} failed: {REGENERATE}"


def test_references_and_nbval_use_the_same_thread_count():
    # tests/conftest.py exports the thread count that nbval's kernels inherit; the references must
    # have been made with the same one, or their floats may differ in the last digits.
    assert os.environ.get("OMP_NUM_THREADS") == str(references.CI_THREADS), (
        f"tests/conftest.py sets OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"references.CI_THREADS is {references.CI_THREADS}: make them equal and {REGENERATE}"
    )


# ----------------------------------------------------------------------------- bad parameters


def execute(name: str, parameters: dict, tmp_path: Path):
    """Run notebooks/<name>.ipynb through papermill as a user would; return the error it raises."""
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(
            str(source_path(name)),
            str(tmp_path / f"{name}.ipynb"),
            parameters=parameters,
            cwd=str(config.NOTEBOOKS_DIR),
            progress_bar=False,
            kernel_name="python3",
        )
    return failure.value


MISSING_RUN = "runs/no-such-run-for-tests"
BAD_PARAMETERS = [
    ("02_train", {"latent_dim": 0}, "ValueError", "latent_dim = 0 is invalid: allowed an integer >= 1"),
    ("02_train", {"decoder": "foo"}, "ValueError", "decoder = 'foo' is invalid: allowed one of"),
    ("03_loss_curves", {"run_dir": MISSING_RUN}, "FileNotFoundError", MISSING_RUN),
    ("04_reconstruction", {"run_dir": MISSING_RUN}, "FileNotFoundError", MISSING_RUN),
    ("05_latent_manifold", {"run_dir": MISSING_RUN}, "FileNotFoundError", MISSING_RUN),
    ("06_figure2", {"sweep_dir": MISSING_RUN}, "FileNotFoundError", "is not a sweep: "),
    ("06_figure2", {"seed": -1}, "ValueError", "seed = -1 is invalid: allowed an integer >= 0"),
    ("07_likelihoods", {"run_dirs": []}, "ValueError", "run_dirs = [] is invalid: allowed None or a"),
    ("07_likelihoods", {"iw_samples": 0}, "ValueError", "iw_samples = 0 is invalid"),
    ("08_figure3", {"sweep_dir": MISSING_RUN}, "FileNotFoundError", "is not a sweep: "),
    ("08_figure3", {"grid_points": 1}, "ValueError", "grid_points = 1 is invalid: allowed an integer >= 2"),
]


@pytest.mark.parametrize(
    "name, parameters, ename, message",
    BAD_PARAMETERS,
    ids=[f"{n}-{next(iter(p))}={next(iter(p.values()))}" for n, p, _, _ in BAD_PARAMETERS],
)
def test_bad_parameter_fails_at_the_validation_cell(name, parameters, ename, message, tmp_path):
    error = execute(name, parameters, tmp_path)
    assert (error.ename, message in error.evalue) == (ename, True), f"{error.ename}: {error.evalue}"
    source = read(source_path(name))
    validation = validation_index(source)  # in the source; papermill inserts its cell before it
    assert error.cell_index == validation + 1, (
        f"{name} failed at cell {error.cell_index} of the executed notebook, not at its validation "
        f"cell {validation + 1} (the code cell after 'parameters'): {error.ename}: {error.evalue}"
    )
    assert error.source == source.cells[validation].source
    assert not config.PROJECT_ROOT.joinpath(MISSING_RUN).exists()


def test_an_existing_run_is_left_untouched(tmp_path, shared_data):
    run = tmp_path / "run"
    run.mkdir()
    for f in RUN_FILES:
        (run / f).write_bytes(f"earlier run: {f}".encode())
        os.utime(run / f, ns=(1_000_000_000, 1_000_000_000))  # an old mtime that a rewrite would change
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    error = execute(
        "02_train",
        {
            "run_dir": str(run),
            "epochs": 1,
            "train_subset": 200,
            "test_subset": 100,
            "device": "cpu",
            "data_dir": str(shared_data),
        },
        tmp_path,
    )
    assert error.ename == "FileExistsError", f"{error.ename}: {error.evalue}"
    assert "never overwritten" in error.evalue and "resume" in error.evalue
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    assert after == before


@pytest.mark.parametrize("name", [s for s in SETS if SETS[s].get("runs")])
def test_multi_run_sets_name_distinct_tiny_runs(name):
    """06-08's references analyse runs trained before them (tests/notebooks/conftest.py): tiny, on
    the CPU, each in its own directory under runs/nbval_<set>/."""
    configs = references.reference_runs(name)
    assert len({c.run_dir for c in configs}) == len(configs) >= 4
    assert all(c.run_dir.startswith(f"runs/nbval_{name}/") and c.device == "cpu" for c in configs)
    assert all(c.train_subset <= 500 and c.test_subset <= 100 for c in configs)
    parameters = references.reference_parameters(name)
    (notebook,) = parameters
    assert parameters[notebook]["run_dirs"] == [c.run_dir for c in configs]
