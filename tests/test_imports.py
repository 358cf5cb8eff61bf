"""The package's imports run one way, from config and data at the bottom to the study and the sweep
at the top (README, "The package"): no module imports one above it, at the top of a file or inside a
function, so the imports form no circle."""

import ast
from pathlib import Path

from vae_utils.config import PROJECT_ROOT

#: Bottom to top; a module may import only modules before it in this list.
LAYERS = (
    "config",
    "progress",
    "data",
    "continuous_bernoulli",
    "loss",
    "model",
    "hmc",
    "marginal_likelihood",
    "mcem",
    "runfiles",
    "results",
    "tensorboard_log",
    "compiled_step",
    "steps",
    "training",
    "presets",
    "linear_gaussian",
    "analysis",
    "plotting",
    "figure2",
    "prior_mismatch",
    "figure3",
    "likelihoods",
    "mathml",
    "reports",
    "index_page",
    "notebook_runner",
    "study",
    "sweep_plan",
    "sweep_table",
    "sweep_engine",
    "sweep",
)


def imported_modules(path: Path) -> set[str]:
    return imported_modules_of(path.read_text()) & set(LAYERS)


def imported_modules_of(code: str) -> set[str]:
    """The vae_utils modules that ``code`` imports, by name."""
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae_utils"):
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vae_utils.")}
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in (PROJECT_ROOT / "vae_utils").glob("*.py")} - {"__init__"}
    assert modules == set(LAYERS), f"place {sorted(modules - set(LAYERS))} in LAYERS"


def test_imports_run_one_way():
    upward = {}
    for i, name in enumerate(LAYERS):
        above = imported_modules(PROJECT_ROOT / "vae_utils" / f"{name}.py") & set(LAYERS[i:])
        if above:
            upward[name] = sorted(above)
    assert not upward, f"modules importing their own layer or one above it: {upward}"


def test_the_check_sees_a_function_level_import(tmp_path):
    scratch = tmp_path / "m.py"
    scratch.write_text("def f():\n    from vae_utils.training import train\n    return train\n")
    assert imported_modules(scratch) == {"training"}


def test_each_module_says_its_concern_and_stays_readable():
    """A module opens with a docstring of a few lines and stays under about 500 lines (README,
    "The package"): a longer one holds more than one concern."""
    for name in LAYERS:
        path = PROJECT_ROOT / "vae_utils" / f"{name}.py"
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        assert doc, f"{name}.py has no module docstring"
        assert len(doc.splitlines()) <= 8, f"{name}.py's docstring is {len(doc.splitlines())} lines"
        lines = len(path.read_text().splitlines())
        assert lines <= 520, f"{name}.py is {lines} lines: split it by concern"


def test_the_analysis_notebooks_do_not_import_the_dask_engine():
    """06 and 07 read a sweep's table; the engine (Dask, kernels) is for running one."""
    import json
    import subprocess
    import sys

    for name in ("06_figure2", "07_likelihoods"):
        nb = json.loads((PROJECT_ROOT / "notebooks" / f"{name}.ipynb").read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        modules = imported_modules_of(code)
        assert modules.isdisjoint({"sweep", "sweep_engine", "study"}), (name, sorted(modules))
        assert "sweep_table" in modules, (name, sorted(modules))
    probe = "import sys, vae_utils.sweep_table, vae_utils.figure2, vae_utils.likelihoods\n"
    probe += "print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
