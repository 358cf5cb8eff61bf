"""The GitHub Actions workflow, checked here since it cannot run here: ``.github/workflows/ci.yml``
validates against GitHub's workflow schema (``check-jsonschema``, its schema vendored: no network),
``zizmor --offline`` has no high-severity finding, its install and test steps are exactly the README's
two commands, its datasets go where ``VAE_DATA_DIR`` points the tests, and the Frey Face MD5 it checks
comes from ``vae_utils``. Both tools are pinned in requirements.txt; each check also fails on a copy
of the workflow given the fault it is meant to catch (an action pinned by tag, a missing ``on:``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from vae_utils.data import EXPECTED_FILES

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
README = ROOT / "README.md"
FREY_MD5 = EXPECTED_FILES["frey_face"]["FreyFace/frey_rawface.mat"]
FREY_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
#: ``owner/repo[/path]@<full commit SHA>  # vX.Y.Z``: the comment names the release the SHA is.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}\s+#\s*v\d+\.\d+\.\d+$")


def tool(name: str) -> str:
    """The console script of this Python's environment (a venv's bin/ need not be on PATH)."""
    found = shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ["PATH"]]))
    assert found, f"{name} not found: pip install -r requirements.txt"
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    command = " ".join([Path(result.args[0]).name, *result.args[1:]])
    return f"$ {command}  (exit status {result.returncode})\n{result.stdout}{result.stderr}"


def check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path))


def zizmor_high(path: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """zizmor's high-severity findings on ``path`` (their audit names), and its run."""
    result = run(tool("zizmor"), "--offline", "--no-progress", "--format", "json", str(path))
    try:
        findings = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail("zizmor gave no JSON report\n" + output(result))
    high = [f["ident"] for f in findings if f["determinations"]["severity"] == "High"]
    return high, result


def zizmor_plain(path: Path) -> str:
    """zizmor's human-readable report, for a failure message."""
    return output(run(tool("zizmor"), "--offline", "--no-progress", "--color", "never", str(path)))


def readme_commands() -> tuple[str, str]:
    """The install and test commands of the README's "Install, test, run" block, comments stripped."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Install, test, run\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    install = [line for line in lines if line.startswith("pip install")]
    test = [line for line in lines if line.split()[:1] == ["pytest"]]
    assert len(install) == 1 and len(test) == 1, f"README's install/test commands: {install}, {test}"
    return install[0], test[0]


def load(path: Path = WORKFLOW) -> dict[Any, Any]:
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(workflow, dict), workflow
    return workflow


def triggers(workflow: dict[Any, Any]) -> Any:
    return workflow["on"] if "on" in workflow else workflow.get(True)  # YAML 1.1 reads `on` as True


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    """The workflow's one job."""
    jobs = load()["jobs"]
    assert len(jobs) == 1, list(jobs)
    return next(iter(jobs.values()))


def step_index(steps: list[dict[str, Any]], **where: str) -> int:
    """The index of the one step whose keys start with the given values (``uses="actions/cache/save@"``)."""
    found = [i for i, s in enumerate(steps) if all(str(s.get(k, "")).startswith(v) for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} steps with {where}: {steps}"
    return found[0]


# ----------------------------------------------------------------------------- the tools pass


def test_workflow_matches_githubs_schema():
    result = check_schema(WORKFLOW)
    assert result.returncode == 0, output(result)


def test_zizmor_has_no_high_finding():
    high, result = zizmor_high(WORKFLOW)
    assert not high, zizmor_plain(WORKFLOW)
    assert result.returncode in (0, 10, 11, 12, 13), output(result)  # 14: a high finding; 1, 2: errors


# ----------------------------------------------------------------------------- what the issue asks for


def test_install_and_test_steps_are_the_readmes_commands(job):
    """The workflow runs exactly the README's install and test commands, in that order, and no other
    ``pip install`` or ``pytest``: editing one without the other fails here."""
    install, test = readme_commands()
    runs = [str(s.get("run", "")).strip() for s in job["steps"]]
    assert runs.count(install) == 1 and runs.count(test) == 1, (install, test, runs)
    assert runs.index(install) < runs.index(test), runs
    others = [r for r in runs if r not in (install, test) and re.search(r"pip install|\bpytest\b", r)]
    assert not others, others


def test_tests_run_on_the_fetched_and_cached_datasets(job):
    """Restore the cache, fetch on a miss (after the install: the fetch needs torchvision and
    vae_utils), save, then test with ``VAE_DATA_DIR`` at the cached folder."""
    steps = job["steps"]
    install, test = readme_commands()
    restore = step_index(steps, uses="actions/cache/restore@")
    save = step_index(steps, uses="actions/cache/save@")
    fetch = step_index(steps, name="Fetch the datasets")
    i_install, i_test = step_index(steps, run=install), step_index(steps, run=test)
    assert i_install < restore < fetch < save < i_test
    path = steps[restore]["with"]["path"]
    assert steps[save]["with"]["path"] == path
    assert steps[save]["with"]["key"] == "${{ steps." + steps[restore]["id"] + ".outputs.cache-primary-key }}"
    hit = f"steps.{steps[restore]['id']}.outputs.cache-hit != 'true'"
    assert steps[fetch]["if"] == hit and steps[save]["if"] == hit
    env = {**load().get("env", {}), **job.get("env", {}), **steps[i_test].get("env", {})}
    assert env.get("VAE_DATA_DIR") in (path, "${{ github.workspace }}/" + path), env
    script = steps[fetch]["run"]
    wanted = ("d.MNIST", "d.FashionMNIST", "download=True", FREY_URL, "md5sum --check", '"$VAE_DATA_DIR"')
    for needed in wanted:
        assert needed in script, f"{needed!r} not in the fetch step:\n{script}"


def test_frey_face_md5_comes_from_the_package(job):
    """The fetch step reads the MD5 from vae_utils (one source of truth) and does not copy it."""
    text = WORKFLOW.read_text(encoding="utf-8")
    assert not re.search(r"\b[0-9a-f]{32}\b", text), "an MD5 written into the workflow"
    script = job["steps"][step_index(job["steps"], name="Fetch the datasets")]["run"]
    commands = re.findall(r'python -c "(from vae_utils[^"]*)"', script)
    assert len(commands) == 1, script
    result = run(sys.executable, "-c", commands[0])
    assert result.returncode == 0 and result.stdout.strip() == FREY_MD5, output(result)


def test_triggers_permissions_and_pins(job):
    workflow = load()
    on = triggers(workflow)
    assert "push" in on and "pull_request" in on, on
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["cancel-in-progress"] is True
    assert str(job["runs-on"]).startswith("ubuntu-") and job["timeout-minutes"] > 0
    steps = job["steps"]
    checkout = steps[step_index(steps, uses="actions/checkout@")]
    assert checkout["with"]["persist-credentials"] is False
    python = steps[step_index(steps, uses="actions/setup-python@")]["with"]
    assert python == {"python-version": "3.11", "cache": "pip"}, python
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(.+)$", WORKFLOW.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(uses) == sum("uses" in s for s in steps)
    unpinned = [u for u in uses if not PINNED.match(u.strip())]
    assert not unpinned, f"not pinned by full commit SHA with a `# vX.Y.Z` comment: {unpinned}"


# ----------------------------------------------------------------------------- the checks bite

CHECKOUT = re.compile(r"actions/checkout@[0-9a-f]{40}\s+#\s*v[\d.]+")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the workflow with one fault each: checkout pinned by tag, and no ``on:``."""
    folder = tmp_path_factory.mktemp("workflow")
    text = WORKFLOW.read_text(encoding="utf-8")
    assert CHECKOUT.search(text) and "\non:\n" in text
    variants = {
        "tag_pinned": CHECKOUT.sub("actions/checkout@v7", text, count=1),
        "no_on": re.sub(r"\non:\n(  .*\n)+", "\n", text, count=1),
    }
    paths = {}
    for name, variant in variants.items():
        assert variant != text
        paths[name] = folder / f"{name}.yml"
        paths[name].write_text(variant, encoding="utf-8")
    return paths


def test_zizmor_fails_on_an_action_pinned_by_tag(broken):
    high, result = zizmor_high(broken["tag_pinned"])
    assert result.returncode == 14 and high == ["unpinned-uses"], output(result)
    assert check_schema(broken["tag_pinned"]).returncode == 0  # valid, but unpinned


def test_schema_check_fails_without_on(broken):
    assert triggers(load(broken["no_on"])) is None
    result = check_schema(broken["no_on"])
    assert result.returncode == 1, output(result)
    assert "'on' is a required property" in result.stdout, output(result)
