"""The code-quality checks, enforced by ``pytest``: ``ruff check``, ``ruff format --check`` and ``mypy``
pass on the project with the settings in pyproject.toml; and each of them fails on a copy of a module
given the one fault it is meant to catch (an unused import, a mis-formatted line, a wrong argument type
between two functions), so a broken configuration cannot pass silently.

mypy keeps its cache in the project's ``.mypy_cache/`` (gitignored): the first run takes up to a minute,
later ones a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
#: The module the fault tests copy: it imports only the standard library, so mypy checks it alone.
MODULE = ROOT / "vae_utils" / "config.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args[2:])}  (exit status {result.returncode})\n{result.stdout}{result.stderr}"


def ruff_check(*paths: str) -> subprocess.CompletedProcess[str]:
    return run("ruff", "check", "--config", str(PYPROJECT), "--output-format", "concise", *paths)


def ruff_format_check(*paths: str) -> subprocess.CompletedProcess[str]:
    return run("ruff", "format", "--config", str(PYPROJECT), "--check", *paths)


def mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    return run("mypy", "--config-file", str(PYPROJECT), *paths)


# ----------------------------------------------------------------------------- the project passes


def test_ruff_check_passes():
    """pyflakes, pycodestyle, isort, bugbear, pyupgrade on vae_utils/, tests/, benchmarks/, notebooks/."""
    result = ruff_check()
    assert result.returncode == 0, output(result)


def test_ruff_format_check_passes():
    result = ruff_format_check()
    assert result.returncode == 0, output(result) + "\nrun `ruff format` to reformat"


def test_mypy_passes():
    """mypy on vae_utils/ (pyproject's ``files``), every function annotated."""
    result = mypy()
    assert result.returncode == 0, output(result)


# ----------------------------------------------------------------------------- the checks bite

UNUSED_IMPORT = "import keyword  # the fault: never used\n"
MISFORMATTED = "LIMITS = {'low':1,'high' : 2}  # the fault: quotes and spacing\n"
WRONG_TYPE = """

def _minimum_seed() -> str:
    return "0"


def _check_seed(seed: int) -> None:
    check_int("seed", seed, _minimum_seed())  # the fault: a str where check_int takes an int
"""


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The module as is (``clean.py``), and with each fault (``unused_import.py``, ...)."""
    folder = tmp_path_factory.mktemp("code_quality")
    source = MODULE.read_text(encoding="utf-8")
    anchor = "import math\n"  # the unused import goes where isort would put it: no I001 as well
    assert anchor in source and "\nimport keyword" not in source and "_minimum_seed" not in source
    variants = {
        "clean": source,
        "unused_import": source.replace(anchor, UNUSED_IMPORT + anchor, 1),
        "misformatted": source + "\n\n" + MISFORMATTED,  # two blank lines after a function, as ruff wants
        "wrong_type": source + WRONG_TYPE,
    }
    paths = {}
    for name, text in variants.items():
        paths[name] = folder / f"{name}.py"
        paths[name].write_text(text, encoding="utf-8")
    return paths


def reported(result: subprocess.CompletedProcess[str], copies: dict[str, Path]) -> set[str]:
    """The copies the output names."""
    text = result.stdout + result.stderr
    return {name for name, path in copies.items() if path.name in text}


def test_ruff_check_fails_on_an_unused_import(copies):
    result = ruff_check(*map(str, copies.values()))
    assert result.returncode == 1, output(result)
    assert reported(result, copies) == {"unused_import"}, output(result)
    assert "F401" in result.stdout, output(result)


def test_ruff_format_check_fails_on_a_misformatted_line(copies):
    result = ruff_format_check(*map(str, copies.values()))
    assert result.returncode == 1, output(result)
    assert reported(result, copies) == {"misformatted"}, output(result)


def test_mypy_fails_on_a_wrong_argument_type(copies):
    result = mypy(*map(str, copies.values()))
    assert result.returncode == 1, output(result)
    assert reported(result, copies) == {"wrong_type"}, output(result)
    message = 'Argument 3 to "check_int" has incompatible type "str"; expected "int"  [arg-type]'
    assert message in result.stdout, output(result)
