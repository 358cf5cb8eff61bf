"""A sweep's grid and plan: command-line values read as TrainConfig fields, the grid expanded into
validated configs, each point named, and a folder of another grid refused before anything runs.
docs/sweeps.md shows the commands.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shutil
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from vae_utils.config import (
    FIELDS,
    SWEEPS_DIR,
    TrainConfig,
    display_path,
    fail,
    parse_float_list,
    resolve_path,
    varying_fields,
)
from vae_utils.presets import BUDGETS, PRESETS, budget_epochs, budget_samples
from vae_utils.runfiles import RunLocked, lock_run_dir

#: The fields that TrainConfig.name already spells out; other axes are added to a point's name.
NAMED_FIELDS = ("dataset", "decoder", "latent_dim", "hidden_dim", "hidden_layers", "seed", "algorithm")
#: Fields a preset derives from others (the training set's size, the algorithm, the budget): a name
#: adds them only when nothing else tells two points apart.
DERIVED_FIELDS = ("epochs", "weight_decay", "lr", "lr_candidates", "pilot_samples", "eval_every")


class SweepError(RuntimeError):
    """The sweep cannot start: its folder holds points of another grid, or the cluster is unfit."""


@dataclasses.dataclass
class SweepPlan:
    """What a sweep will run; making one validates everything and touches nothing."""

    name: str
    folder: Path
    points: dict[str, TrainConfig]  # point name -> config (run_dir = its folder), in grid order
    axes: list[str]  # the fields that define the grid: its columns in sweep.csv
    grid: dict  # the declared axes (field -> values), empty for a list of configs
    fixed: dict  # the fixed fields of a declared grid
    budget: str | int | float | None
    preset: str | None = None

    def point_dir(self, point: str) -> Path:
        return self.folder / "points" / point


def parse_budget(text: str | None) -> str | int | None:
    """``--budget``: a name of :data:`BUDGETS`, or a number of samples (``3e6``) as an int."""
    if text is None or text in BUDGETS:
        return text
    return budget_samples(text, "mnist")


def parse_value(field: str, text: str) -> Any:
    """A command-line value read as ``field``'s type (see the module docstring). A value that does
    not read as that type is returned as the string, so that TrainConfig reports it."""
    if field not in FIELDS:
        raise ValueError(f"unknown TrainConfig field {field!r}: allowed {list(FIELDS)}")
    hint = typing.get_type_hints(TrainConfig)[field]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        if base is bool:
            return {"true": True, "false": False}[text.lower()]
        if base is int:
            try:
                return int(text)
            except ValueError:
                number = float(text)  # 1e6 is an int; 2.5 stays a float for TrainConfig to refuse
                return int(number) if number.is_integer() else number
        if base is float:
            return float(text)
        if base is list:
            return parse_float_list(field, text)
    except (KeyError, ValueError):
        return text
    return text


def parse_assignment(text: str, grid: bool) -> tuple[str, Any]:
    """``FIELD=VALUE`` (``--set``) or ``FIELD=V1,V2,...`` (``--grid``: a list of values)."""
    field, sep, values = text.partition("=")
    field = field.strip().replace("-", "_")
    if not sep or not field:
        raise ValueError(
            f"{'--grid' if grid else '--set'} {text!r} is invalid: allowed FIELD=VALUE"
            + (",VALUE..." if grid else "")
        )
    if grid:
        return field, [parse_value(field, v) for v in values.split(",")]
    return field, parse_value(field, values)


def _check_fields(names: Collection[str], what: str) -> None:
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown} in {what}: allowed {list(FIELDS)}")
    if "run_dir" in names:
        raise ValueError(
            "run_dir cannot be set in a sweep: each point's run directory is sweeps/<name>/points/<point>"
        )


def expand_grid(
    grid: Mapping[str, Sequence],
    fixed: Mapping[str, Any] | None = None,
    budget: str | int | float | None = None,
    preset: str | None = None,
) -> list[TrainConfig]:
    """Every combination of the ``grid``'s axes (the first axis varies slowest), with the ``fixed``
    fields, as validated TrainConfigs. A ``budget`` sets each point's epochs from its dataset and
    train_subset; a ``preset`` (``"figure2"``) is the base grid that the axes multiply.

    Raises ``ValueError`` with TrainConfig's message for a bad value, and naming the allowed fields
    for an unknown one, before anything runs.
    """
    fixed = dict(fixed or {})
    _check_fields(grid, "the grid")
    _check_fields(fixed, "the fixed fields")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise ValueError(f"field(s) {both} are both a grid axis and fixed: choose one")
    empty = [k for k, v in grid.items() if isinstance(v, (str, bytes)) or len(list(v)) == 0]
    if empty:
        raise ValueError(f"grid axis/axes {empty} need a non-empty list of values")
    if preset is not None and preset not in PRESETS:
        fail("preset", preset, "one of " + ", ".join(repr(p) for p in PRESETS))
    if budget is not None and "epochs" in {*grid, *fixed} and preset is None:
        raise ValueError("epochs and budget both set the training length: give one of them")
    configs = []
    for combo in itertools.product(*(list(v) for v in grid.values())):
        values = {**fixed, **dict(zip(grid, combo, strict=True))}
        if preset is not None:
            configs.extend(PRESETS[preset]("cpu" if budget is None else budget, **values))
            continue
        if budget is not None:
            dataset, subset = values.get("dataset", "mnist"), values.get("train_subset")
            values["epochs"] = budget_epochs(budget, dataset, subset)
        configs.append(TrainConfig(**values))
    return configs


def _slug(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}".replace("e+", "e")
    elif isinstance(value, list):
        text = "+".join(f"{v:g}".replace("e+", "e") for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", text)


def point_names(configs: Sequence[TrainConfig], axes: Sequence[str] = ()) -> list[str]:
    """Short, unique, filesystem-safe names: ``config.name`` plus ``_<field>-<value>`` for each of
    ``axes`` that the name does not say, and for any field that differs between configs that would
    otherwise share a name (only the :data:`DERIVED_FIELDS` when nothing else differs). Raises
    ``ValueError`` for duplicate points."""
    groups: dict[str, list[dict]] = {}
    for config in configs:
        groups.setdefault(config.name, []).append(config.to_dict())
    declared = [a for a in axes if a not in NAMED_FIELDS]
    extra = {}
    for name, members in groups.items():
        differ = [
            f
            for f in FIELDS
            if f not in NAMED_FIELDS and f != "run_dir" and len({json.dumps(m[f]) for m in members}) > 1
        ]
        primary = [f for f in differ if f not in DERIVED_FIELDS]
        extra[name] = [f for f in FIELDS if f in declared or f in (primary or differ)]
    names = [
        config.name + "".join(f"_{f}-{_slug(getattr(config, f))}" for f in extra[config.name])
        for config in configs
    ]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(
                f"the grid holds point {name} twice (points {seen[name] + 1} and {i + 1}): "
                "remove the duplicate"
            )
        seen[name] = i
    return names


def plan_sweep(
    points: Sequence[TrainConfig] | Mapping[str, Sequence],
    name: str,
    *,
    fixed: Mapping[str, Any] | None = None,
    budget: str | int | float | None = None,
    sweeps_dir: str | Path = SWEEPS_DIR,
    preset: str | None = None,
) -> SweepPlan:
    """Validate a sweep and name its points; nothing is written. ``points`` is a list of TrainConfigs
    or a grid ``{field: values}`` (with ``fixed``, ``budget`` and ``preset`` as in :func:`expand_grid`)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        fail("name", name, "letters, digits, '.', '_' and '-'")
    if isinstance(points, Mapping):
        grid = {k: list(v) for k, v in points.items()}
        configs = expand_grid(grid, fixed, budget, preset)
        axes = [f for f in FIELDS if f in grid or (preset is not None and f in varying_fields(configs))]
    else:
        if fixed or budget is not None or preset is not None:
            raise ValueError("fixed, budget and preset apply to a grid, not to a list of TrainConfigs")
        grid, configs = {}, list(points)
        bad = [c for c in configs if not isinstance(c, TrainConfig)]
        if bad or not configs:
            raise ValueError(
                f"points = {bad[0] if bad else configs!r} is invalid: allowed a non-empty "
                "list of TrainConfig or a grid {field: values}"
            )
        for config in configs:
            config.validate()
        axes = varying_fields(configs)
    folder = resolve_path(sweeps_dir) / name
    names = point_names(configs, list(grid))  # a list's points are named apart by what differs
    planned = {
        n: dataclasses.replace(c, run_dir=str(folder / "points" / n))
        for n, c in zip(names, configs, strict=True)
    }
    return SweepPlan(name, folder, planned, axes, grid, dict(fixed or {}), budget, preset)


def check_existing(plan: SweepPlan, overwrite: bool = False) -> None:
    """Refuse a sweep folder that holds points of another grid (before anything starts), or with
    ``overwrite`` delete the sweep's points, table and record, saying so."""
    points_dir = plan.folder / "points"
    if not points_dir.is_dir():
        return
    if overwrite:
        locks = []
        try:  # a point that a kernel still trains is not deleted under it
            for folder in sorted(p for p in points_dir.iterdir() if p.is_dir()):
                locks.append(lock_run_dir(folder))
        except RunLocked as held:
            for lock in locks:
                lock.release()
            raise SweepError(f"--overwrite: point {held.path.name} is still being trained: {held}") from None
        print(
            f"--overwrite: deleting {len(locks)} point folder(s) of sweep "
            f"{plan.name} in {display_path(points_dir)}",
            flush=True,
        )
        shutil.rmtree(points_dir)  # the locks go with their folders; closing them releases them
        for lock in locks:
            lock.release()
        for f in ("sweep.csv", "sweep.json"):
            (plan.folder / f).unlink(missing_ok=True)
        return
    problems = [
        f"{p.name}: not a point of this grid"
        for p in sorted(points_dir.iterdir())
        if p.is_dir() and p.name not in plan.points
    ]
    for point, config in plan.points.items():
        saved = plan.point_dir(point) / "config.json"
        if saved.is_file():
            differ = config.differences(json.loads(saved.read_text()))
            if differ:
                problems.append(
                    f"{point}: config.json differs in "
                    + ", ".join(f"{k} (saved {a!r}, asked {b!r})" for k, (a, b) in differ.items())
                )
    if problems:
        raise SweepError(
            f"sweep {plan.name} ({display_path(plan.folder)}) holds points of another grid, so nothing was "
            "run:\n  "
            + "\n  ".join(problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
            + "\npass --overwrite (overwrite=True) to delete this sweep's points and start again, or "
            "choose another --name"
        )
