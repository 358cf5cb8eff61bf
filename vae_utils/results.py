"""A report's headline numbers as data. Each report notebook (03, 06, 07) ends by writing its
``results.json`` through :func:`write_results`; the landing page and the sweep's report record read
it back with :func:`read_results`. No number is ever read back out of a notebook's HTML.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from vae_utils.config import resolve_path
from vae_utils.runfiles import atomic_write_text

RESULTS_FILE = "results.json"
NATS = "nats per datapoint"


def result(
    name: str,
    value: float,
    estimator: str,
    datapoints: int | None = None,
    unit: str = NATS,
    compare: str | None = None,
) -> dict:
    """One headline number: ``name`` says what it is of ("test NLL: VAE, dynamic binarisation"),
    ``estimator`` how it was estimated ("importance sampling, k = 5000"), ``datapoints`` on how
    many images, ``compare`` a published number to set it beside. A NaN or infinite value is an
    error: a headline is a finished number."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"result {name!r} = {value} is invalid: allowed a finite number")
    entry: dict = {"name": name, "value": value, "unit": unit, "estimator": estimator}
    if datapoints is not None:
        entry["datapoints"] = int(datapoints)
    if compare is not None:
        entry["compare"] = compare
    return entry


def write_results(path: str | Path | None, notebook: str, results: Sequence[dict]) -> Path | None:
    """Write ``{"notebook": ..., "results": [...]}`` to ``path`` (relative to the project root),
    atomically; ``path=None`` (a notebook run by hand) writes nothing and returns None."""
    if path is None:
        return None
    target = resolve_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({"notebook": notebook, "results": list(results)}, indent=2) + "\n")
    return target


def read_results(folder: str | Path) -> list[dict]:
    """The results in ``folder/results.json``; [] when there is none. A file that is not a results
    file is an error naming it, not an empty headline."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        return []
    try:
        results = json.loads(path.read_text(encoding="utf-8"))["results"]
        if not all(isinstance(r["name"], str) and isinstance(r["value"], (int, float)) for r in results):
            raise TypeError
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a results file: expected "
            "{'notebook': ..., 'results': [{'name': ..., 'value': ..., ...}]}"
        ) from error
    return list(results)


def headline(results: Sequence[dict]) -> dict[str, str]:
    """The results as a landing page shows them: name -> "-148.99 (10,000 images; compare: ...)"."""
    out = {}
    for r in results:
        notes = [f"{r['datapoints']:,} images"] if "datapoints" in r else []
        notes += [r["compare"]] if "compare" in r else []
        out[r["name"]] = f"{r['value']:.2f}" + (f" ({'; '.join(notes)})" if notes else "")
    return out
