"""Executing a notebook headless with papermill, for the study, the sweep and the nbval references:
which parameters a notebook declares, its output streamed line by line, a failing cell reported by
notebook, cell and error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TextIO

from vae_utils.config import NOTEBOOKS_DIR, PROJECT_ROOT, display_path


class NotebookError(RuntimeError):
    """A notebook cannot run as asked: it is missing, has no ``parameters`` cell, or does not
    declare an explicitly given parameter."""


class NotebookFailed(NotebookError):
    """A notebook raised; the message names the notebook, the cell and the error.

    ``cell_index`` is papermill's: the 0-based position of the failing cell in the executed
    notebook (markdown cells and the injected-parameters cell count); ``source`` is its code.
    """

    def __init__(
        self, notebook: str, cell_index: int, ename: str, evalue: str, output: Path, source: str = ""
    ):
        self.notebook, self.cell_index, self.output, self.source = notebook, cell_index, output, source
        self.ename, self.evalue = ename, evalue
        super().__init__(f"{notebook}.ipynb failed at cell {cell_index}: {ename}: {evalue}")


def declared_parameters(
    notebook_path: Path, wanted: Mapping[str, Any], explicit: Collection[str] = ()
) -> dict[str, Any]:
    """The part of ``wanted`` that the notebook's ``parameters`` cell declares.

    Raises :class:`NotebookError` when the notebook has no ``parameters`` cell, or when an explicit
    option would be dropped because the notebook does not declare it.
    """
    import papermill

    if not notebook_path.is_file():
        raise NotebookError(f"notebook {notebook_path} not found")
    declared = papermill.inspect_notebook(str(notebook_path))
    if wanted and not declared:
        raise NotebookError(f"{notebook_path.name} has no cell tagged 'parameters'")
    dropped = sorted(k for k in wanted if k not in declared and k in explicit)
    if dropped:
        raise NotebookError(
            f"{notebook_path.name} does not declare parameter(s) {dropped}; it declares {sorted(declared)}"
        )
    return {k: v for k, v in wanted.items() if k in declared}


class _LineStream:
    """Forwards a kernel's stream to ``target``: carriage returns become newlines (no ``\\r`` soup
    in logs) and every line is indented under the notebook's heading."""

    def __init__(self, target: TextIO, prefix: str = "    "):
        self.target, self.prefix, self.at_line_start = target, prefix, True

    def write(self, text: str) -> int:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        out = []
        for piece in text.splitlines(keepends=True):
            out.append((self.prefix if self.at_line_start else "") + piece)
            self.at_line_start = piece.endswith("\n")
        self.target.write("".join(out))
        self.target.flush()
        return len(text)

    def flush(self) -> None:
        self.target.flush()


#: The kernel process's own log (not the notebook's output) is noise in a headless run: "Kernel is
#: running over TCP without encryption", "KeyboardInterrupt caught in kernel" at shutdown. nbval
#: discards it too. A kernel that dies still fails the run (nbclient's DeadKernelError).
_KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=CRITICAL",)


def run_notebook(
    notebook: str,
    parameters: dict,
    output: Path,
    *,
    cwd: Path,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    stream: bool = True,
) -> Path:
    """Execute ``notebooks_dir/<notebook>.ipynb`` with papermill into ``output``, kernel in ``cwd``.

    With ``stream`` the notebook's stdout and stderr are forwarded, line by line, as it runs.
    A failing cell raises :class:`NotebookFailed`; the partly executed notebook stays at ``output``.
    The kernel imports this ``vae_utils`` (the one running this function), not whichever the
    environment's install points at: ``PROJECT_ROOT`` goes first on the ``PYTHONPATH`` it inherits.
    """
    import papermill

    _import_this_package_in_subprocesses()
    streams = dict(stdout_file=_LineStream(sys.stdout), stderr_file=_LineStream(sys.stderr)) if stream else {}
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(notebooks_dir / f"{notebook}.ipynb"),
            str(output),
            parameters=parameters,
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
            extra_arguments=list(_KERNEL_ARGUMENTS),
            **streams,
        )
    except papermill.PapermillExecutionError as error:
        raise NotebookFailed(
            notebook, error.cell_index, error.ename, error.evalue, output, error.source
        ) from error
    finally:
        if output.exists():
            tidy_metadata(output)
    return output


def _import_this_package_in_subprocesses() -> None:
    """Put ``PROJECT_ROOT`` first on this process's ``PYTHONPATH`` (once), so that the kernels it
    starts import the same checkout's package: with two checkouts, an editable install of the other
    one would otherwise hand the kernels that one's code, and its folders for runs and reports."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if paths[0] != str(PROJECT_ROOT):
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, paths)])


_IMAGES = ("image/png", "image/jpeg", "image/svg+xml")


def tidy_metadata(path: Path, reference: bool = False) -> None:
    """Write papermill's input/output paths relative to the project root (no machine's absolute
    paths in committed files). For a ``reference``, also drop timestamps, durations and images
    (nbval never compares images; the reports keep them), so that a reference stays small and
    regenerating it changes only what changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = display_path(meta[key])
    if reference:
        for key in ("start_time", "end_time", "duration"):
            meta.pop(key, None)
        for cell in nb.cells:
            if "injected-parameters" in cell.metadata.get("tags", []):
                cell.id = "injected-parameters"  # papermill draws a new random id each time
            cell.metadata.pop("execution", None)
            for key in ("start_time", "end_time", "duration"):
                cell.metadata.get("papermill", {}).pop(key, None)
            for output in cell.get("outputs", []):
                for mime in _IMAGES:
                    output.get("data", {}).pop(mime, None)
    nbformat.write(nb, path)


def short_parameters(parameters: dict, limit: int = 6) -> str:
    """``(a=1, b='x', ... 3 more)``: a notebook's parameters on one progress line."""
    items = [f"{k}={v!r}" for k, v in parameters.items()]
    return (
        "("
        + ", ".join(items[:limit])
        + (f", ... {len(items) - limit} more" if len(items) > limit else "")
        + ")"
    )
