"""nbval's reference notebooks: ``pytest`` re-executes every ``*.ipynb`` here and compares outputs.

They are generated, never edited by hand: ``python tests/references.py`` executes
``notebooks/*.ipynb`` with the CI configurations (``references.CI_REFERENCE_SETS``) into this
folder (MNIST, Bernoulli decoder) and into ``frey/`` (Frey Face, Gaussian decoder, N_z = 5); nbval
runs each folder's notebooks in file order, 02_train (which trains the set's run) first.

Matplotlib prints "Matplotlib is building the font cache" to stderr the first time it is imported
on a machine; in a kernel that line would be an extra stderr output and fail nbval. Building the
cache here, in the pytest process that starts the kernels, keeps it out of the notebooks.
"""
import matplotlib.font_manager  # noqa: F401  (builds the font cache once)


def pytest_terminal_summary(terminalreporter):
    """After nbval failures, say how to accept an intended change."""
    failed = [r for r in terminalreporter.stats.get("failed", []) if ".ipynb::" in r.nodeid]
    if failed:
        terminalreporter.write_sep("-", "nbval")
        terminalreporter.write_line(
            f"{len(failed)} notebook cell(s) differ from their reference in tests/notebooks/. If the "
            "change is intended, regenerate the references with `python "
            "tests/references.py` and commit them with the change; otherwise the code changed behaviour.")


_TRAINED: set = set()


def pytest_runtest_setup(item):
    """Before the first cell of a reference set that analyses several runs (06, 07), train those
    tiny runs as ``tests/references.py`` did (in this process, one thread), so that the notebook finds them
    and sees the same numbers."""
    from pathlib import Path

    import references

    path = Path(str(item.fspath)).resolve()
    for name, reference_set in references.CI_REFERENCE_SETS.items():
        if reference_set.get("runs") and path.parent == Path(reference_set["folder"]).resolve():
            if name not in _TRAINED:
                references.train_reference_runs(name)
                _TRAINED.add(name)
