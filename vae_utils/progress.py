"""Progress that reads well both in a terminal and headless (papermill, nbval, CI, a Dask worker).

In a terminal it is a tqdm bar; otherwise a plain line at each tenth of the work, because tqdm's
carriage returns turn into unreadable soup in a notebook's stored output or a log file. Every layer
of the package may use it: it imports nothing from ``vae_utils``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """True when a person watches a terminal; False under papermill, nbval, CI and pipes."""
    return sys.stderr.isatty()


def progress_bar(
    iterable: Iterable[T], enabled: bool = True, desc: str = "", unit: str = "it", total: int | None = None
) -> Iterable[T]:
    """A tqdm bar in a terminal; plain lines at each tenth when not interactive; nothing if disabled."""
    if not enabled:
        return iterable
    if interactive():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, unit=unit, total=total, leave=False)
    return _plain_progress(iterable, desc, unit, total)


def _plain_progress(iterable: Iterable[T], desc: str, unit: str, total: int | None) -> Iterator[T]:
    if total is None:
        total = len(iterable) if isinstance(iterable, Sized) else 0
    marks = {math.ceil(total * i / 10) for i in range(1, 11)}
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if i in marks:
            print(f"{desc}: {i}/{total} {unit} [{time.perf_counter() - start:.1f} s]", flush=True)
