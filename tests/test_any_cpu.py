"""The nbval references hold on another CPU, and still catch what they exist to catch.

A reference that holds only on the CPU that made it fails on the next user's machine. Here ``pytest``
re-executes every reference set under an instruction set other than the one it runs under
(``ATEN_CPU_CAPABILITY`` selects ATen's kernels, ``MKL_CBWR`` MKL's code path), so that such a
reference fails when it is committed. Under both instruction sets it also executes two mutants of the
package and checks that the references reject them: the ELBO without its KL term (the ``mnist`` set)
and the Gaussian density without its 1/2 log 2 pi (the ``frey`` set).

Each check is a real ``pytest --nbval`` run in a child process, whose environment is set before torch
is imported there and is inherited by the kernels nbval starts. docs/reproducibility.md has the
measurements behind the choice of float64 references and the command to run these checks by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_utils.config import PROJECT_ROOT
from vae_utils.data import data_root

#: The mutants: (reference set's 02_train, file, the line as written, the line mutated).
MUTANTS = {
    "kl": (
        "tests/notebooks/02_train.ipynb",
        "vae_utils/loss.py",
        "return ELBO(recon - kl_term, recon, kl_term)",
        "return ELBO(recon, recon, kl_term)",
    ),
    "log_2pi": (
        "tests/notebooks/frey/02_train.ipynb",
        "vae_utils/loss.py",
        "LOG_2PI = math.log(2 * math.pi)",
        "LOG_2PI = 0.0",
    ),
}


def own_instruction_set() -> dict[str, str]:
    """The environment this process computes under, as the knobs that select it."""
    return {
        "ATEN_CPU_CAPABILITY": torch.backends.cpu.get_cpu_capability().lower(),
        "MKL_CBWR": os.environ.get("MKL_CBWR", "AUTO"),
    }


def other_instruction_set() -> dict[str, str]:
    """Another instruction set that a machine of this project's kinds could compute with: ATen's
    AVX2 kernels where this process uses AVX-512 (else AVX-512 where the CPU has it), and MKL's
    portable SSE code path (``COMPATIBLE``) where this process uses its own choice (else ``AUTO``).
    ATen's ``default`` (no vector unit) is not used: no machine of these kinds lacks AVX2."""
    own = own_instruction_set()
    aten = own["ATEN_CPU_CAPABILITY"]
    if aten.startswith("avx512"):
        aten = "avx2"
    elif torch.backends.cpu.get_cpu_capability() != "AVX512" and _cpu_has("avx512f"):
        aten = "avx512"
    mkl = "COMPATIBLE" if own["MKL_CBWR"] != "COMPATIBLE" else "AUTO"
    return {"ATEN_CPU_CAPABILITY": aten, "MKL_CBWR": mkl}


def _cpu_has(flag: str) -> bool:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(rf"^flags\s*:.*\b{flag}\b", cpuinfo, re.M) is not None


def run_nbval(root: Path, paths: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    """``pytest --nbval`` (pyproject's options) on ``paths`` under ``root``, in a child process
    whose environment adds ``environment``; ``root``'s own vae_utils is imported, by the child and
    by its kernels."""
    env = {
        **os.environ,
        **environment,
        "VAE_DATA_DIR": str(data_root()),  # absolute: a copy's project root is elsewhere
        "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the child's conftest picks one for its instruction set
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_other_instruction_set_differs_from_this_one():
    own, other = own_instruction_set(), other_instruction_set()
    assert own["MKL_CBWR"] != other["MKL_CBWR"]
    assert other["ATEN_CPU_CAPABILITY"] in ("avx2", "avx512")


def test_references_hold_under_another_instruction_set(shared_data):
    """Every reference set, re-executed under :func:`other_instruction_set`, prints the committed
    outputs (the same comparison, sanitiser and thread count as the plain run)."""
    emulated = other_instruction_set()
    result = run_nbval(PROJECT_ROOT, ["tests/notebooks"], emulated)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, (
        f"the references fail under {emulated}, so they would fail on a machine with that "
        f"instruction set: {summary}\n{result.stdout[-6000:]}"
    )
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The package, notebooks and tests copied out, for mutants (runs go to the copy's runs/)."""
    root = tmp_path_factory.mktemp("mutants") / "repo"
    for name in ("vae_utils", "notebooks", "tests"):
        shutil.copytree(
            PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pt")
        )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    return root


@pytest.mark.parametrize("which", ["own", "other"])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_references_reject_the_mutant(shared_data, source_copy, mutant, which):
    notebook, file, line, mutated = MUTANTS[mutant]
    source = (PROJECT_ROOT / file).read_text()
    assert source.count(line) == 1, f"{file} no longer holds {line!r}: update MUTANTS"
    (source_copy / file).write_text(source.replace(line, mutated))
    try:
        environment = {} if which == "own" else other_instruction_set()
        result = run_nbval(source_copy, [notebook], environment)
    finally:
        (source_copy / file).write_text(source)
    assert result.returncode == 1, f"mutant {mutant!r} passed {notebook}:\n{result.stdout[-3000:]}"
    # It fails because the trained numbers differ, not because something broke.
    assert re.search(r"^\s*- .*test ELBO", result.stdout, re.M), result.stdout[-3000:]
    assert re.search(r"^\s*\+ .*test ELBO", result.stdout, re.M), result.stdout[-3000:]
