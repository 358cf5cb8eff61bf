"""nbval's reference notebooks: ``pytest`` re-executes every ``*.ipynb`` here and compares outputs.

They are generated, never edited by hand: ``python -m vae_utils.study --references`` executes
``notebooks/*.ipynb`` with the CI configuration (``vae_utils.study.CI_PARAMETERS``) into this folder.

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
            "change is intended, regenerate the references with `python -m vae_utils.study "
            "--references` and commit them with the change; otherwise the code changed behaviour.")
