"""The landing page ``reports/index.html``: one table of every report folder (thumbnail, pages,
headline numbers, date, command), then each folder's details. Headlines come from data: a study's
``study.json`` and ``history.csv``, each report's ``report.json``, and the ``results.json`` its
notebook wrote (:mod:`vae_utils.results`). docs/reports.md describes the folders it recognises.
"""

from __future__ import annotations

import html
import json
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vae_utils.config import REPORTS_DIR, STUDY_NOTEBOOKS
from vae_utils.reports import KEY_FIGURES, THUMBNAIL, THUMBNAIL_WIDTH, write_thumbnail
from vae_utils.results import headline, read_results


def write_index(reports_dir: Path = REPORTS_DIR) -> Path:
    """Write ``reports_dir/index.html``: one table of every report folder (thumbnail, pages,
    headline, date, command), then each folder's details. Plain HTML and inline CSS, no script.

    A folder is listed when it has a ``report.json`` (see the module's docstring), a
    ``study.json``, or notebooks; folders whose name starts with ``_`` or ``.`` are not.
    """
    reports_dir = Path(reports_dir)
    folders = (
        sorted(
            p
            for p in reports_dir.iterdir()
            if p.is_dir() and not p.name.startswith(("_", ".")) and (_is_report(p) or _is_study(p))
        )
        if reports_dir.is_dir()
        else []
    )
    rows, sections = [], []
    for folder in folders:
        entry = _report_entry(folder) if _is_report(folder) else _study_entry(folder)
        rows.append(_summary_row(folder, entry))
        sections.append(
            f'<section id="{html.escape(folder.name)}"><h2>{html.escape(entry["title"])}</h2>'
            f"{entry['details']}</section>\n"
        )
    head = _row(["figure", "report", "headline", "date", "command"], "th")
    table = f'<table class="reports"><thead>{head}</thead><tbody>\n{"".join(rows)}</tbody></table>\n'
    page = (
        _INDEX_HEAD
        + (
            table + "".join(sections)
            if folders
            else "<p>No report yet: run <code>python -m vae_utils.study</code>.</p>"
        )
        + "</body></html>\n"
    )
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "index.html").write_text(page, encoding="utf-8")
    return reports_dir / "index.html"


def _summary_row(folder: Path, entry: dict) -> str:
    """One line of the landing page's table: ``<tr class="report">...</tr>``."""
    thumbnail = ""
    if entry["thumbnail"] and (folder / entry["thumbnail"]).is_file():
        src = html.escape(f"{folder.name}/{entry['thumbnail']}")
        thumbnail = f'<img src="{src}" width="{THUMBNAIL_WIDTH}" alt="{html.escape(entry["alt"])}">'
        if entry["figure_page"]:
            thumbnail = f'<a href="{html.escape(entry["figure_page"])}">{thumbnail}</a>'
    title = (
        f'<a href="#{html.escape(folder.name)}">{html.escape(entry["title"])}</a>'
        + (f"<br><small>{html.escape(entry['note'])}</small>" if entry["note"] else "")
        + f'<br><span class="pages">{entry["short_links"]}</span>'
    )
    headline = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
        for k, v in entry["headline"].items()
    )
    command = f"<code>{html.escape(entry['command'])}</code>" if entry["command"] else ""
    cells = [
        thumbnail,
        title,
        f'<table class="headline">{headline}</table>' if headline else "",
        html.escape(entry["date"]),
        command,
    ]
    return '<tr class="report">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>\n"


def _study_entry(folder: Path) -> dict:
    record = _read_record(folder)
    config, summary, results = record.get("config", {}), study_results(folder, record), read_results(folder)
    top: dict = {
        "dataset": config.get("dataset"),
        "decoder": config.get("decoder"),
        "N_z": config.get("latent_dim"),
        "epochs": summary.get("epochs run"),
        "best test ELBO": summary.get("best test ELBO"),
        **headline(results),
    }
    status = record.get("failure") or record.get("status", "no study.json")
    if not (folder / THUMBNAIL).is_file() and (folder / "05_latent_manifold.ipynb").is_file():
        try:
            write_thumbnail(folder / "05_latent_manifold.ipynb", KEY_FIGURES["05_latent_manifold"])
        except Exception:  # a truncated or hand-made notebook (nbformat's JSON and schema errors)
            pass  # the study is listed without a thumbnail
    links = "".join(f"<li>{_links(folder, nb)}</li>" for nb in STUDY_NOTEBOOKS)
    details = (
        f"<p>status: {html.escape(status)}</p><ol>{links}</ol>"
        + (_table("training", summary) if summary else "")
        + (_results_table(results) if results else "")
        + (_table("configuration", {k: _json_text(v) for k, v in config.items()}) if config else "")
    )
    short = " · ".join(
        f'<a href="{html.escape(folder.name)}/{nb}.html">{nb[:2]}</a>'
        for nb in STUDY_NOTEBOOKS
        if (folder / f"{nb}.html").is_file()
    )
    return {
        "title": folder.name + (" (quick)" if record.get("quick") else ""),
        "note": "" if status == "complete" else status,
        "headline": {k: v for k, v in top.items() if v is not None},
        "date": _date(record.get("finished") or record.get("started") or ""),
        "command": study_command(record) if record else "",
        "thumbnail": THUMBNAIL,
        "alt": "Figure 4: the learned manifold, decoded on a grid of the latent space",
        "figure_page": f"{folder.name}/05_latent_manifold.html",
        "short_links": short,
        "details": details,
    }


def _report_entry(folder: Path) -> dict:
    try:
        info = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        info = {}
    pages = [str(p) for p in info.get("pages", [])]
    links = []
    for page in pages:
        parts = [f'<a href="{html.escape(folder.name)}/{html.escape(page)}">{html.escape(page)}</a>']
        notebook = Path(page).with_suffix(".ipynb")
        if (folder / notebook).is_file() and notebook.as_posix() != page:
            href = html.escape(f"{folder.name}/{notebook.as_posix()}")
            parts.append(f'<a href="{href}">.ipynb</a>')
        missing = "" if (folder / page).is_file() else " (missing)"
        links.append("<li>" + " | ".join(parts) + missing + "</li>")
    headline = {k: v for k, v in dict(info.get("headline") or {}).items() if v is not None}
    short = " · ".join(
        f'<a href="{html.escape(f"{folder.name}/{p}")}">{html.escape(Path(p).stem)}</a>'
        for p in pages
        if (folder / p).is_file()
    )
    return {
        "title": str(info.get("title") or folder.name),
        "note": "" if info else "report.json unreadable",
        "headline": headline,
        "date": str(info.get("date") or ""),
        "command": str(info.get("command") or ""),
        "thumbnail": info.get("thumbnail"),
        "alt": f"{info.get('title') or folder.name}: key figure",
        "figure_page": f"{folder.name}/{pages[0]}" if pages else "",
        "short_links": short,
        "details": f"<ol>{''.join(links)}</ol>" + (_table("headline", headline) if headline else ""),
    }


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _date(iso: str) -> str:
    return iso[:16].replace("T", " ")


_INDEX_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VAE study reports</title>
<style>body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}section{margin-top:2em}caption{text-align:left;font-weight:bold}
table.headline td,table.headline th{border:none;padding:0 .5em 0 0;background:none;font-weight:normal}
table.headline th{color:#555}table.reports img{display:block}code{font-size:.9em}
.pages a{margin-right:.2em}</style></head>
<body><h1>Auto-Encoding Variational Bayes (Kingma &amp; Welling): reports</h1>
<p>Every report below was made headless by the command beside it (a study by
<code>python -m vae_utils.study</code>: the five notebooks of <code>notebooks/</code>, executed). Each page
reads offline; the executed <code>.ipynb</code> beside it keeps the code and the text outputs, its figures
are in the HTML.</p>
"""


def _is_report(folder: Path) -> bool:
    return (folder / "report.json").is_file()


def _is_study(folder: Path) -> bool:
    return (folder / "study.json").is_file() or any(folder.glob("*.ipynb")) or any(folder.glob("*.html"))


def _read_record(folder: Path) -> dict:
    try:
        return json.loads((folder / "study.json").read_text())
    except (OSError, ValueError):
        return {}


def _links(folder: Path, notebook: str) -> str:
    parts = [
        f'<a href="{html.escape(folder.name)}/{notebook}{suffix}">{label}</a>'
        for suffix, label in ((".html", notebook), (".ipynb", ".ipynb"))
        if (folder / f"{notebook}{suffix}").is_file()
    ]
    return " | ".join(parts) if parts else f"{notebook} (not run)"


def _row(cells: Iterable[object], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _table(caption: str, values: dict) -> str:
    """A two-column table of names and values, as plain text."""
    rows = "".join(_row([html.escape(str(k)), html.escape(_format(v))]) for k, v in values.items())
    return f"<table><caption>{caption}</caption>{rows}</table>"


def _results_table(results: list[dict]) -> str:
    """The notebook's ``results.json``: each number with its unit, estimator and data."""
    columns = ("name", "value", "unit", "estimator", "datapoints", "compare")
    head = _row(columns, "th")
    rows = "".join(_row(html.escape(_format(r.get(c, ""))) for c in columns) for r in results)
    return f"<table><caption>results</caption>{head}{rows}</table>"


def _json_text(value: Any) -> str:
    """A configuration value as config.json writes it, strings without quotes: mnist, 0.01, null, true."""
    return value if isinstance(value, str) else json.dumps(value)


def study_results(folder: Path, record: dict) -> dict:
    """Key results from the study's ``history.csv`` (its copy in ``folder``, else the run's)."""
    import pandas as pd

    candidates = [folder / "history.csv"]
    if record.get("config", {}).get("run_dir"):
        from vae_utils.config import resolve_path

        candidates.append(resolve_path(record["config"]["run_dir"]) / "history.csv")
    for path in candidates:
        if path.is_file():
            history = pd.read_csv(path)
            if history.empty:
                return {}
            best = history[history["test_elbo"] == history["test_elbo"].max()].iloc[0]  # as idxmax
            return {
                "epochs run": int(history["epoch"].max()),
                "best epoch": int(best["epoch"]),
                "best test ELBO": round(float(best["test_elbo"]), 2),
                "train ELBO at best": round(float(best["train_elbo"]), 2),
                "test KL at best": round(float(best["test_kl"]), 2),
                "training time": f"{float(history['seconds'].max()) / 60:.1f} min",
            }
    return {}


def study_command(record: dict) -> str:
    """The command that makes a study again, from its ``study.json``: ``python -m vae_utils.study
    --decoder gaussian``. ``--name`` is given only when it is not the configuration's own name;
    ``--resume`` and ``--overwrite``, which say what to do with a run already there and change no
    number, are left out, so that a reader who copies the command never replaces a run of theirs."""
    parts = ["python", "-m", "vae_utils.study"]
    for option, value in (record.get("options") or {}).items():
        flag = "--" + option.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + option.replace("_", "-"))
        else:
            parts += [flag, "none" if value is None else str(value)]
    if record.get("quick") is True:
        parts.append("--quick")
    name = record.get("name")
    if name and name != _default_name(record):
        parts += ["--name", name]
    return " ".join(shlex.quote(part) for part in parts)


def _default_name(record: dict) -> str | None:
    import dataclasses

    from vae_utils.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in (record.get("config") or {}).items() if k in fields})
    except (TypeError, ValueError):
        return None
    return config.name + ("_quick" if record.get("quick") else "")
