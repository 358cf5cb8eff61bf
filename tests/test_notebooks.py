"""The notebooks' contract with papermill and nbval.

- ``tests/notebooks/`` holds nbval's references, which ``pytest --nbval`` re-executes and compares;
  a reference is stale when its code cells differ from its notebook's in ``notebooks/``.
- Every notebook has one ``parameters`` cell, the ``python3`` kernelspec and no stored outputs.
- Bad parameters fail through papermill at the validation cell (the code cell after ``parameters``) with
  the package's message, and an existing run is never touched.

Each papermill call starts a kernel (a few seconds); only fast-failing runs are made here.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import papermill
import pytest

from vae_utils import study
from vae_utils.training import RUN_FILES

NOTEBOOKS = study.NOTEBOOKS
REGENERATE = f"regenerate the references with `{study.REFERENCES_COMMAND}`"


def source_path(name: str) -> Path:
    path = study.NOTEBOOKS_DIR / f"{name}.ipynb"
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
    notebooks = sorted(p.stem for p in study.NOTEBOOKS_DIR.glob("*.ipynb"))
    references = sorted(p.stem for p in study.REFERENCES_DIR.glob("*.ipynb"))
    assert notebooks == list(NOTEBOOKS), f"notebooks/ holds {notebooks}, the study runs {NOTEBOOKS}"
    assert references == list(NOTEBOOKS), f"tests/notebooks/ holds {references}: {REGENERATE}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean(name):
    nb = read(source_path(name))
    parameter_cells = [c for c in nb.cells if "parameters" in tags(c)]
    assert len(parameter_cells) == 1, f"{name}: {len(parameter_cells)} cells tagged 'parameters', want 1"
    assert parameter_cells[0].cell_type == "code"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec must be python3"
    stored = [i for i, c in enumerate(nb.cells)
              if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not stored, f"{name}: cells {stored} store outputs or execution counts; clear them"
    assert not any("injected-parameters" in tags(c) for c in nb.cells), f"{name}: an executed copy?"
    assert (study.REFERENCES_DIR / f"{name}.ipynb").is_file(), f"{name} has no reference: {REGENERATE}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_reference_is_current(name):
    source = read(source_path(name))
    reference_path = study.REFERENCES_DIR / f"{name}.ipynb"
    assert reference_path.is_file(), f"{reference_path} is missing: {REGENERATE}"
    reference = read(reference_path)
    ours, theirs = code_sources(source), code_sources(reference)
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        pytest.fail(f"tests/notebooks/{name}.ipynb is stale: its code cells differ from "
                    f"notebooks/{name}.ipynb from code cell {first} on ({len(ours)} code cells "
                    f"now, {len(theirs)} in the reference); {REGENERATE}")
    injected = reference.metadata.get("papermill", {}).get("parameters")
    assert injected == study.CI_PARAMETERS[name], (
        f"tests/notebooks/{name}.ipynb ran with {injected}, the CI configuration is "
        f"{study.CI_PARAMETERS[name]}: {REGENERATE}")
    unrun = [i for i, c in enumerate(reference.cells) if c.cell_type == "code" and c.execution_count is None]
    errors = [i for i, c in enumerate(reference.cells) if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.outputs)]
    assert not unrun and not errors, f"{name}: reference cells {unrun} unrun, {errors} failed: {REGENERATE}"


def test_references_and_nbval_use_the_same_thread_count():
    # tests/conftest.py exports the thread count that nbval's kernels inherit; the references must
    # have been made with the same one, or their floats may differ in the last digits.
    assert os.environ.get("OMP_NUM_THREADS") == str(study.CI_THREADS), (
        f"tests/conftest.py sets OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"vae_utils.study.CI_THREADS is {study.CI_THREADS}: make them equal and {REGENERATE}")


# ----------------------------------------------------------------------------- bad parameters

def execute(name: str, parameters: dict, tmp_path: Path):
    """Run notebooks/<name>.ipynb through papermill as a user would; return the error it raises."""
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(str(source_path(name)), str(tmp_path / f"{name}.ipynb"),
                                   parameters=parameters, cwd=str(study.NOTEBOOKS_DIR),
                                   progress_bar=False, kernel_name="python3")
    return failure.value


MISSING_RUN = "runs/no-such-run-for-tests"
BAD_PARAMETERS = [
    ("02_train", {"latent_dim": 0}, "ValueError", "latent_dim = 0 is invalid: allowed an integer >= 1"),
    ("02_train", {"decoder": "foo"}, "ValueError", "decoder = 'foo' is invalid: allowed one of"),
    ("03_loss_curves", {"run_dir": MISSING_RUN}, "FileNotFoundError", MISSING_RUN),
    ("04_reconstruction", {"run_dir": MISSING_RUN}, "FileNotFoundError", MISSING_RUN),
    ("05_latent_manifold", {"run_dir": MISSING_RUN}, "FileNotFoundError", MISSING_RUN),
]


@pytest.mark.parametrize("name, parameters, ename, message", BAD_PARAMETERS,
                         ids=[f"{n}-{next(iter(p))}={next(iter(p.values()))}" for n, p, _, _ in BAD_PARAMETERS])
def test_bad_parameter_fails_at_the_validation_cell(name, parameters, ename, message, tmp_path):
    error = execute(name, parameters, tmp_path)
    assert (error.ename, message in error.evalue) == (ename, True), f"{error.ename}: {error.evalue}"
    source = read(source_path(name))
    validation = validation_index(source)  # in the source; papermill inserts its cell before it
    assert error.cell_index == validation + 1, (
        f"{name} failed at cell {error.cell_index} of the executed notebook, not at its validation "
        f"cell {validation + 1} (the code cell after 'parameters'): {error.ename}: {error.evalue}")
    assert error.source == source.cells[validation].source
    assert not study.PROJECT_ROOT.joinpath(MISSING_RUN).exists()


def test_an_existing_run_is_left_untouched(tmp_path, shared_data):
    run = tmp_path / "run"
    run.mkdir()
    for f in RUN_FILES:
        (run / f).write_bytes(f"earlier run: {f}".encode())
        os.utime(run / f, ns=(1_000_000_000, 1_000_000_000))  # an old mtime that a rewrite would change
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    error = execute("02_train", {"run_dir": str(run), "epochs": 1, "train_subset": 200,
                                 "test_subset": 100, "device": "cpu", "data_dir": str(shared_data)},
                    tmp_path)
    assert error.ename == "FileExistsError", f"{error.ename}: {error.evalue}"
    assert "never overwritten" in error.evalue and "resume" in error.evalue
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    assert after == before
