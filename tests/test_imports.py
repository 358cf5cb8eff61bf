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
    "loss",
    "model",
    "runfiles",
    "tensorboard_log",
    "training",
    "presets",
    "linear_gaussian",
    "plotting",
    "reports",
    "study",
    "sweep",
)


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae_utils"):
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vae_utils.")}
    return found & set(LAYERS)


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
