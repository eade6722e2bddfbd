"""Ablation grids: any recipe field varied over a list of values, on top of a sweep's methods x imbalances x seeds.

``--grid omega=0,0.0078,0.1 --grid topk=1,3`` varies two config fields; the sweep
trains the cartesian product of those values with its methods, imbalances and
seeds. Values are parsed and checked by the field's own rule (the same as
``--set``), so a bad field or value is one sentence before anything runs. Only
recipe fields can be varied: they are what a run learns, and what results are
grouped by; the method, imbalance and seed have their own sweep options.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

from ccmix.config.fields import RECIPE, check_field_names, field_role, field_rule
from ccmix.config.rules import ConfigError

# The sweep chooses these itself, from --methods, --imbs and --seeds.
SWEEP_FIELDS = {"method": "--methods", "imb": "--imbs", "seed": "--seeds"}
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")  # what may not appear in a run folder name (nor "_", the separator)


def parse_grid_argument(item: str) -> tuple[str, list]:
    """Return (field, values) of one ``--grid field=v1,v2,...``, each value parsed by the field's rule."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--grid {item!r} is not of the form field=value1,value2,... (e.g. --grid omega=0,0.1)")
    name, text = (part.strip() for part in item.split("=", 1))
    _check_grid_field(name, source="--grid")
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"--grid {item!r} is not accepted; give at least one value after {name}=")
    rule = field_rule(name)
    return name, [rule.check(name, rule.parse(name, part, source="--grid"), source="--grid") for part in parts]


def parse_grid_arguments(items: list[str]) -> dict[str, list]:
    """Return ``{field: values}`` of repeated ``--grid`` options; a field given twice is refused."""
    grid: dict[str, list] = {}
    for item in items:
        name, values = parse_grid_argument(item)
        if name in grid:
            raise ConfigError(f"--grid {name} is given twice; list every value of a field in one --grid {name}=...")
        grid[name] = values
    return grid


def check_grid(grid: Mapping | None, base_overrides: Mapping | None = None) -> dict[str, list]:
    """Return the grid as ``{field: [checked values]}`` ({} for None): every key a recipe field that the sweep
    does not choose itself nor ``base_overrides`` fixes, every value converted and checked by the field's rule,
    repeats dropped; ConfigError (one sentence) otherwise."""
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"grid={grid!r} is not accepted; give a mapping of config fields to lists of values, "
                          "e.g. {'omega': [0, 0.1]}")
    checked: dict[str, list] = {}
    for name, values in grid.items():
        _check_grid_field(name, source="grid")
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"grid {name}={values!r} is not accepted; give a non-empty list of values")
        if base_overrides and name in base_overrides:
            raise ConfigError(f"grid field {name!r} is also set by the overrides ({name}={base_overrides[name]!r}); "
                              "vary it in the grid only")
        coerced = [field_rule(name).coerce(name, value, source="grid") for value in values]
        checked[name] = [value for index, value in enumerate(coerced) if value not in coerced[:index]]
    return checked


def _check_grid_field(name, source: str) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source} field {name!r} is not accepted; give a config field name")
    if name in SWEEP_FIELDS:
        raise ConfigError(f"{source} field {name!r} is not accepted; the sweep varies {name} itself: use "
                          f"{SWEEP_FIELDS[name]}")
    check_field_names({name: None}, source=f"{source} field")
    if field_role(name) != RECIPE:
        raise ConfigError(f"{source} field {name!r} is not accepted; it is a {field_role(name)} field (how a run "
                          "goes, not what it learns), and a grid varies recipe fields "
                          "(see `python -m ccmix presets --fields`)")


def grid_combinations(grid: Mapping[str, list]) -> list[dict]:
    """Return every combination of the grid's values as ``{field: value}``, in order ([{}] for an empty grid)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def shown_grid_value(value) -> str:
    """Return a grid value as it appears in a run folder name: short, readable and safe in a file name."""
    if isinstance(value, (list, tuple)):
        text = "-".join(shown_grid_value(item) for item in value)
    else:
        text = str(value)
    return _UNSAFE.sub("-", text).strip("-") or "none"


def grid_run_name(default_name: str, seed: int, values: Mapping) -> str:
    """Return the run folder name of a grid point: the default name with ``<field><value>`` parts before
    ``_seed<seed>``, e.g. ``synthetic_concutmix_imb100_omega0.1_topk3_seed0``."""
    if not values:
        return default_name
    suffix = f"_seed{seed}"
    stem = default_name[: -len(suffix)] if default_name.endswith(suffix) else default_name
    parts = [f"{name}{shown_grid_value(value)}" for name, value in values.items()]
    return "_".join([stem, *parts]) + suffix


__all__ = ["SWEEP_FIELDS", "check_grid", "grid_combinations", "grid_run_name", "parse_grid_argument",
           "parse_grid_arguments", "shown_grid_value"]
