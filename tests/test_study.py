"""The main job, ``python -m vae_utils.study``: options, planning, the index, and a run end to end
on tiny stand-in notebooks (the real notebooks run end to end in nbval, on the CI configuration)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from vae_utils import index_page, notebook_runner, study
from vae_utils.config import PROJECT_ROOT, TrainConfig


def plan(argv: list[str]) -> study.Study:
    overrides, own = study.parse_args(argv)
    return study.plan_study(
        overrides, quick=own["quick"], name=own["name"], overwrite=own["overwrite"], resume=own["resume"]
    )


# ----------------------------------------------------------------------------- options


def test_no_option_is_the_original_study():
    s = plan([])
    c = s.config
    assert (
        c.dataset,
        c.decoder,
        c.hidden_dim,
        c.latent_dim,
        c.batch_size,
        c.epochs,
        c.optimizer,
        c.lr,
        c.patience,
    ) == ("mnist", "bernoulli", 500, 2, 100, 100, "adagrad", 0.01, 3)
    default = TrainConfig(compile=True).to_dict()  # the study's one default of its own: compiled steps
    assert c.to_dict() == default
    assert s.name == "mnist_bernoulli_z2_h500_s0" and c.run_dir == "runs/mnist_bernoulli_z2_h500_s0"
    assert s.parameters["02_train"] == {**default, "overwrite": False, "resume": False}
    assert s.parameters["01_derivation"] == {"seed": 0}
    assert s.parameters["03_loss_curves"] == {"run_dir": c.run_dir, "seed": 0}  # notebook's defaults


def test_options_are_trainconfig_fields_with_their_types():
    s = plan(
        [
            "--latent-dim",
            "5",
            "--decoder",
            "gaussian",
            "--dataset",
            "fashion_mnist",
            "--lr",
            "0.02",
            "--patience",
            "none",
            "--train-subset",
            "500",
            "--sigmoid-mean",
            "--kl",
            "mc",
            "--iw-samples",
            "50",
            "--iw-subset",
            "None",
            "--grid-size",
            "7",
        ]
    )
    c = s.config
    assert (c.latent_dim, c.decoder, c.dataset, c.lr, c.patience, c.train_subset, c.sigmoid_mean, c.kl) == (
        5,
        "gaussian",
        "fashion_mnist",
        0.02,
        None,
        500,
        True,
        "mc",
    )
    assert s.name == "fashion_mnist_gaussian_z5_h500_s0"
    assert s.parameters["03_loss_curves"] == {
        "run_dir": c.run_dir,
        "iw_samples": 50,
        "iw_subset": None,
        "seed": 0,
    }
    assert s.parameters["05_latent_manifold"]["grid_size"] == 7
    assert plan(["--no-sigmoid-mean"]).config.sigmoid_mean is False


def test_quick_mode_is_small_and_named_apart():
    s = plan(["--quick"])
    assert (s.config.train_subset, s.config.test_subset, s.config.epochs) == (2000, 500, 3)
    assert s.name == "mnist_bernoulli_z2_h500_s0_quick" and s.config.run_dir == f"runs/{s.name}"
    assert s.parameters["03_loss_curves"]["iw_samples"] == study.QUICK_ANALYSIS["iw_samples"]
    assert plan(["--quick", "--epochs", "5"]).config.epochs == 5  # explicit options win


def test_the_study_compiles_its_training_step_unless_quick_or_told_not_to():
    """The study's one default beyond TrainConfig's: compile=True (it pays over 100 epochs), not in
    a --quick smoke run (3 short epochs: the compile would cost more than it saves); --no-compile
    and --compile win either way, and --help says so."""
    assert plan([]).config.compile and plan([]).parameters["02_train"]["compile"] is True
    assert not plan(["--quick"]).config.compile
    assert not plan(["--no-compile"]).config.compile and plan(["--quick", "--compile"]).config.compile
    assert "default True (False with --quick)" in " ".join(study.build_parser().format_help().split())


def test_name_run_dir_resume_overwrite():
    s = plan(["--name", "mine", "--overwrite"])
    assert s.config.run_dir == "runs/mine" and s.parameters["02_train"]["overwrite"] is True
    s = plan(["--name", "mine", "--run-dir", "runs/elsewhere", "--resume"])
    assert s.config.run_dir == "runs/elsewhere" and s.parameters["02_train"]["resume"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--latent-dim", "0"], "latent_dim = 0 is invalid: allowed an integer >= 1"),
        (["--decoder", "foo"], "decoder = 'foo' is invalid: allowed one of 'bernoulli', 'gaussian'"),
        (["--lr", "-1"], "lr = -1.0 is invalid"),
        (["--decoder", "gaussian", "--binarize", "dynamic"], "binarize = 'dynamic' is invalid"),
        (["--latent-dim", "x"], "argument --latent-dim: invalid int value: 'x'"),
        (["--patience", "x"], "invalid int or 'none' value"),
        (["--iw-samples", "0"], "iw_samples = 0 is invalid"),
        (["--name", "a/b"], "name = 'a/b' is invalid"),
        (["--resume", "--overwrite"], "not allowed with argument --resume"),
        (["--references"], "--references moved out of the package: run `python tests/references.py`"),
    ],
)
def test_bad_options_exit_with_the_package_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        study.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- tiny notebooks


def tiny_notebook(path: Path, parameters: str, code: str) -> None:
    """A notebook with a parameters cell, a validation-like cell and a body; no vae_utils import,
    so that its kernel starts in a second or two."""
    cells = [new_markdown_cell(f"# {path.stem}"), new_code_cell(parameters), new_code_cell(code)]
    cells[1].metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


TINY_02 = """\
import json, os
os.makedirs(run_dir, exist_ok=True)
assert latent_dim >= 1, "latent_dim"
for f in ("config.json", "history.csv"):
    if os.path.exists(os.path.join(run_dir, f)) and not (overwrite or resume):
        raise FileExistsError(run_dir)
json.dump({"latent_dim": latent_dim}, open(os.path.join(run_dir, "config.json"), "w"))
open(os.path.join(run_dir, "history.csv"), "w").write(
    "epoch,train_elbo,test_elbo,test_kl,seconds\\n1,-200.0,-201.5,5.0,1.0\\n2,-190.0,-189.25,6.0,2.0\\n")
print(f"trained {latent_dim}\\rdone")
"""


@pytest.fixture
def tiny_notebooks(tmp_path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    tiny_notebook(folder / "01_derivation.ipynb", "seed = 0\nn_mc = 10", "print('derivation', seed)")
    tiny_notebook(
        folder / "02_train.ipynb",
        "latent_dim = 2\nepochs = 100\nrun_dir = None\nseed = 0\noverwrite = False\nresume = False",
        TINY_02,
    )
    tiny_notebook(  # writes its headline as notebook 03 does
        folder / "03_loss_curves.ipynb",
        "run_dir = 'x'\niw_samples = 5000\nseed = 0\nresults_path = None",
        "from vae_utils import results\n"
        "entry = results.result(f'log p(x), k={iw_samples}', -190.0, 'importance sampling', datapoints=10)\n"
        "results.write_results(results_path, '03_loss_curves', [entry])",
    )
    for name, extra in (
        ("04_reconstruction", "n_images = 10"),
        ("05_latent_manifold", "grid_size = 20"),
    ):
        tiny_notebook(
            folder / f"{name}.ipynb",
            f"run_dir = 'x'\n{extra}\nseed = 0",
            f"import os\nassert os.path.isdir(run_dir)\nprint('{name}', {extra.split()[0]})",
        )
    return folder


def test_declared_parameters(tiny_notebooks):
    path = tiny_notebooks / "03_loss_curves.ipynb"
    assert study.declared_parameters(path, {"run_dir": "r", "iw_subset": 3}) == {"run_dir": "r"}
    with pytest.raises(
        notebook_runner.NotebookError, match=r"does not declare parameter\(s\) \['iw_subset'\]"
    ):
        study.declared_parameters(path, {"run_dir": "r", "iw_subset": 3}, explicit={"iw_subset": 3})


def test_the_kernel_imports_this_checkouts_package(tmp_path, monkeypatch):
    """Another vae_utils first on the inherited PYTHONPATH (a second checkout, or an editable install
    of one): the kernels of run_notebook still import this one, whose folders the study writes to."""
    other = tmp_path / "other_checkout" / "vae_utils"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other.parent))
    (tmp_path / "nbs").mkdir()
    tiny_notebook(tmp_path / "nbs" / "probe.ipynb", "x = 0", "import vae_utils\nprint(vae_utils.__file__)")
    out = notebook_runner.run_notebook(
        "probe", {}, tmp_path / "probe.ipynb", cwd=tmp_path, notebooks_dir=tmp_path / "nbs", stream=False
    )
    printed = nbformat.read(out, as_version=4).cells[-1].outputs[0].text.strip()
    assert printed == str(PROJECT_ROOT / "vae_utils" / "__init__.py")


def test_run_study_end_to_end(tiny_notebooks, tmp_path, capsys):
    run_dir, reports = tmp_path / "run", tmp_path / "reports"
    folder = study.run_study(
        {"latent_dim": 3, "run_dir": str(run_dir), "iw_samples": 7},
        name="tiny",
        reports_dir=reports,
        notebooks_dir=tiny_notebooks,
    )
    assert folder == reports / "tiny"
    for name in study.NOTEBOOKS:
        assert (folder / f"{name}.ipynb").is_file() and (folder / f"{name}.html").is_file()
    out = capsys.readouterr().out
    assert "[2/5] 02_train.ipynb" in out and "    trained 3\n    done\n" in out  # streamed, no \r
    page = (folder / "04_reconstruction.html").read_text()
    assert "jp-InputArea" in page and "n_images" in page and "04_reconstruction 10" in page  # code shown
    executed = nbformat.read(folder / "03_loss_curves.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters == {
        "run_dir": str(run_dir),
        "iw_samples": 7,
        "seed": 0,
        "results_path": str(folder / "results.json"),
    }
    record = json.loads((folder / "study.json").read_text())
    assert record["status"] == "complete" and record["config"]["latent_dim"] == 3
    assert "n_mc" not in record["parameters"]["01_derivation"]  # only the contract's parameters
    index = (reports / "index.html").read_text()
    assert 'href="tiny/02_train.html"' in index and "-189.25" in index  # best test ELBO, from history.csv
    assert "<tr><th>log p(x), k=7</th><td>-190.00 (10 images)</td></tr>" in index  # from results.json

    # the run exists now: a second study stops before running anything, and changes nothing
    stamp = (run_dir / "history.csv").stat().st_mtime_ns
    with pytest.raises(study.StudyError, match="already holds a run.*--resume.*--overwrite"):
        study.run_study(
            {"run_dir": str(run_dir)}, name="tiny", reports_dir=reports, notebooks_dir=tiny_notebooks
        )
    assert (run_dir / "history.csv").stat().st_mtime_ns == stamp
    assert json.loads((folder / "study.json").read_text())["status"] == "complete"


def test_a_failure_names_notebook_and_cell(tiny_notebooks, tmp_path, capsys):
    argv = [
        "--latent-dim",
        "3",
        "--run-dir",
        str(tmp_path / "run"),
        "--name",
        "broken",
        "--reports-dir",
        str(tmp_path / "reports"),
        "--notebooks-dir",
        str(tiny_notebooks),
    ]
    tiny_notebook(
        tiny_notebooks / "02_train.ipynb", "latent_dim = 2\nrun_dir = None", "print('start')\n1 / 0"
    )
    earlier = tmp_path / "reports" / "broken" / "thumbnail.png"  # left by an earlier attempt
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier attempt's Figure 4")
    assert study.main(argv) == 1
    assert not earlier.exists()  # the index must not show a figure this attempt did not make
    err = capsys.readouterr().err
    # cells: markdown 0, parameters 1, injected-parameters 2, the failing cell 3
    assert "02_train.ipynb failed at cell 3: ZeroDivisionError: division by zero" in err
    folder = tmp_path / "reports" / "broken"
    kept = nbformat.read(folder / "02_train.ipynb", as_version=4)  # partly executed, kept
    assert any(o.get("ename") == "ZeroDivisionError" for c in kept.cells for o in c.get("outputs", []))
    assert not (folder / "03_loss_curves.ipynb").exists()
    record = json.loads((folder / "study.json").read_text())
    assert record["status"] == "failed at 02_train cell 3"


# ----------------------------------------------------------------------------- the index


def test_index_lists_every_study_with_its_configuration(tmp_path):
    reports = tmp_path / "reports"
    a, b, empty = reports / "full_run", reports / "by_hand", reports / "not_a_study"
    for folder in (a, b, empty):
        folder.mkdir(parents=True)
    config = TrainConfig(decoder="gaussian", latent_dim=5).to_dict()
    (a / "study.json").write_text(
        json.dumps(
            {
                "name": "full_run",
                "status": "complete",
                "quick": False,
                "config": config,
                "finished": "2025-01-02T03:04:05+00:00",
            }
        )
    )
    (a / "history.csv").write_text(
        "epoch,train_elbo,test_elbo,test_kl,seconds\n"
        "1,-150.0,-151.0,4.0,60\n2,-140.0,-141.5,5.0,120\n3,-139.0,-142.0,5.5,180\n"
    )
    for name in study.NOTEBOOKS:
        (a / f"{name}.html").write_text("<html></html>")
        (a / f"{name}.ipynb").write_text("{}")
    (b / "02_train.html").write_text("<html></html>")
    index = index_page.write_index(reports).read_text()
    assert index.index("by_hand") < index.index("full_run")  # sorted
    assert "not_a_study" not in index
    for name in study.NOTEBOOKS:
        assert f'href="full_run/{name}.html"' in index and f'href="full_run/{name}.ipynb"' in index
    assert 'href="by_hand/02_train.html"' in index and "01_derivation (not run)" in index
    assert "<td>decoder</td><td>gaussian</td>" in index and "<td>latent_dim</td><td>5</td>" in index
    assert "<td>best test ELBO</td><td>-141.50</td>" in index and "<td>best epoch</td><td>2</td>" in index
    assert "2025-01-02 03:04" in index


# ----------------------------------------------------------------------------- analysis options


def test_analysis_options_live_in_config_and_study_uses_them():
    from vae_utils import config

    assert study.ANALYSIS_OPTIONS is config.ANALYSIS_OPTIONS
    declared = {
        option
        for nb in ("03_loss_curves", "04_reconstruction", "05_latent_manifold")
        for option in study.CONTRACT[nb]
    }
    assert set(config.ANALYSIS_OPTIONS) <= declared


@pytest.mark.parametrize(
    "name, minimum, optional",
    [("iw_samples", 1, False), ("iw_subset", 1, True), ("n_images", 1, False), ("grid_size", 2, False)],
)
def test_check_analysis_option_applies_the_table(name, minimum, optional):
    from vae_utils.config import check_analysis_option

    for good in (minimum, minimum + 1, 10_000):
        check_analysis_option(name, good)
    for bad in (minimum - 1, -5, 2.0, "3", True):
        with pytest.raises(ValueError, match=f"^{name} = .* is invalid: allowed an integer >= {minimum}"):
            check_analysis_option(name, bad)
    if optional:
        check_analysis_option(name, None)
    else:
        with pytest.raises(ValueError, match=f"{name} = None is invalid"):
            check_analysis_option(name, None)


def test_check_analysis_option_rejects_an_unknown_name():
    from vae_utils.config import check_analysis_option

    with pytest.raises(KeyError, match="'seed' is not an analysis option"):
        check_analysis_option("seed", 0)


@pytest.mark.parametrize("notebook", ["03_loss_curves", "04_reconstruction", "05_latent_manifold"])
def test_notebooks_check_their_analysis_options_with_the_config_table(notebook):
    """One place for each minimum: the validation cell (the code cell after 'parameters') checks
    every analysis option it declares with check_analysis_option, and writes no minimum of its own."""
    import re

    from vae_utils.config import ANALYSIS_OPTIONS

    nb = nbformat.read(study.NOTEBOOKS_DIR / f"{notebook}.ipynb", as_version=4)
    (start,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    validation = next(c for c in nb.cells[start + 1 :] if c.cell_type == "code").source
    options = [o for o in study.CONTRACT[notebook] if o in ANALYSIS_OPTIONS]
    assert options
    for option in options:
        assert f'check_analysis_option("{option}", {option})' in validation, option
        assert not re.search(rf'check_int\(\s*"{option}"', validation), option


def test_a_bad_analysis_option_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="grid_size = 1 is invalid: allowed an integer >= 2"):
        study.plan_study({"grid_size": 1})
    with pytest.raises(ValueError, match="iw_subset = 0 is invalid: allowed an integer >= 1 or None"):
        study.plan_study({"iw_subset": 0})
    assert study.plan_study({"iw_subset": None}).parameters["03_loss_curves"]["iw_subset"] is None
