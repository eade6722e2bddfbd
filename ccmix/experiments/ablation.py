"""Ablation tables: every grid point's accuracy over seeds with a 95 % confidence interval, and its difference
to a baseline point with the uncertainty of that difference.

Pure functions on the run table of :func:`ccmix.experiments.results.collect_results`
(one row per run folder, its config values as columns); accuracies are in percent,
so differences are in percentage points. For each grid point (the runs that share
every recipe field but the seed) and each metric:

- mean, sample standard deviation (ddof=1) and the half-width of the 95 % confidence
  interval of the mean, ``t(0.975, n-1) * sd / sqrt(n)`` (Student's t);
- against the baseline point (the same values of every other varied field, the
  baseline value of one field): the mean difference and its 95 % CI. When both points
  ran the same seeds the difference is paired by seed (t on the per-seed differences,
  n-1 dof), otherwise Welch's unequal-variance interval with the Welch-Satterthwaite
  dof. The verdict says whether the interval excludes 0 ("outside seed noise") or not.

With one seed the spread cannot be estimated: no interval and no verdict is made up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ccmix.config.rules import ConfigError

# final and best top-1 and the final many/medium/few accuracies (percent)
ABLATION_METRICS = ("final_top1", "best_top1", "final_many", "final_medium", "final_few")
CONFIDENCE = 0.95
NO_SPREAD = "the seed spread cannot be estimated from one seed (no CI)"


# --------------------------------------------------------------------------- statistics of numbers


def t_half_width(sd: float, n: int, dof: float, confidence: float = CONFIDENCE) -> float:
    """Return the half-width of the two-sided t interval ``t(1 - (1-confidence)/2, dof) * sd / sqrt(n)``."""
    return float(stats.t.ppf(0.5 + confidence / 2, dof) * sd / math.sqrt(n))


def mean_interval(values: Sequence[float]) -> dict:
    """Return n, mean, sd (ddof=1) and the 95 % CI half-width ``ci`` of ``values`` (NaNs dropped);
    sd and ci are NaN for fewer than two values."""
    array = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    n = int(array.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci": math.nan}
    if n == 1:
        return {"n": 1, "mean": float(array[0]), "sd": math.nan, "ci": math.nan}
    sd = float(array.std(ddof=1))
    return {"n": n, "mean": float(array.mean()), "sd": sd, "ci": t_half_width(sd, n, n - 1)}


def paired_difference(point: dict[int, float], baseline: dict[int, float]) -> dict:
    """Return the mean difference ``point - baseline`` over the same seeds (``{seed: value}`` each), its 95 % CI
    half-width (t on the per-seed differences, n-1 dof), n and dof; ci NaN for one seed."""
    seeds = sorted(point)
    differences = [point[seed] - baseline[seed] for seed in seeds]
    summary = mean_interval(differences)
    return {"diff": summary["mean"], "ci": summary["ci"], "n": summary["n"], "dof": summary["n"] - 1.0,
            "test": "paired"}


def welch_difference(point: Sequence[float], baseline: Sequence[float]) -> dict:
    """Return the difference of means ``point - baseline``, its 95 % Welch CI half-width and the Welch-Satterthwaite
    dof; ci and dof NaN when either side has fewer than two values."""
    a, b = mean_interval(point), mean_interval(baseline)
    result = {"diff": a["mean"] - b["mean"], "ci": math.nan, "n": min(a["n"], b["n"]), "dof": math.nan,
              "test": "Welch"}
    if a["n"] < 2 or b["n"] < 2:
        return result
    var_a, var_b = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    se = math.sqrt(var_a + var_b)
    if se == 0.0:  # no spread on either side: the difference is exact as far as these seeds can tell
        return dict(result, ci=0.0, dof=float(a["n"] + b["n"] - 2))
    dof = (var_a + var_b) ** 2 / (var_a ** 2 / (a["n"] - 1) + var_b ** 2 / (b["n"] - 1))
    return dict(result, ci=float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * se), dof=float(dof))


def verdict(diff: float, ci: float, digits: int = 2) -> str:
    """Return the difference in words: "+1.20 ± 0.80 points, outside seed noise" when the 95 % CI excludes 0,
    "..., within seed noise" when it does not, and no verdict without a CI (one seed)."""
    if pd.isna(diff):
        return "–"
    if pd.isna(ci):
        return f"{diff:+.{digits}f} points; {NO_SPREAD}"
    where = "outside" if abs(diff) > ci else "within"
    return f"{diff:+.{digits}f} ± {ci:.{digits}f} points, {where} seed noise"


# --------------------------------------------------------------------------- tables of runs


def grid_columns(results: pd.DataFrame) -> list[str]:
    """Return the columns that tell grid points apart: the recipe fields (and preset) whose values differ
    between the completed runs, method and imb always first when present."""
    from ccmix.experiments.results import setting_columns

    completed = _completed(results)
    keys = setting_columns(completed)
    varied = [k for k in keys if k in ("method", "imb") or completed[k].astype(str).nunique() > 1]
    first = [k for k in ("method", "imb") if k in varied]
    return first + [k for k in varied if k not in first and k != "preset"]


def _completed(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "completed"] if "status" in results else results


def _points(results: pd.DataFrame, keys: list[str]):
    """Yield (key values as a dict, that point's runs) for each grid point of the completed runs, in order."""
    completed = _completed(results)
    if not keys:
        yield {}, completed
        return
    as_text = completed.assign(**{k: completed[k].astype(str) for k in keys})
    for _, part in as_text.groupby(keys, dropna=False, sort=False):
        first = completed.loc[part.index[0]]
        yield {k: first[k] for k in keys}, completed.loc[part.index]


def seed_table(results: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS,
               keys: list[str] | None = None) -> pd.DataFrame:
    """Return one row per grid point of the completed runs: the key columns (default :func:`grid_columns`),
    ``runs``, ``seeds`` and for each metric ``<metric>_n``, ``_mean``, ``_sd`` (ddof=1) and ``_ci``
    (95 % CI half-width of the mean; NaN with one seed)."""
    keys = grid_columns(results) if keys is None else list(keys)
    rows = []
    for values, part in _points(results, keys):
        if part.empty:
            continue
        row = dict(values, runs=len(part), seeds=_seeds_text(part))
        for metric in metrics:
            column = pd.to_numeric(part[metric], errors="coerce") if metric in part else pd.Series(dtype=float)
            summary = mean_interval(column.tolist())
            row.update({f"{metric}_{name}": summary[name] for name in ("n", "mean", "sd", "ci")})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["keys"] = keys
    return table


def _seeds_text(part: pd.DataFrame) -> str:
    return ",".join(str(seed) for seed in part["seed"].tolist()) if "seed" in part else ""


def _by_seed(part: pd.DataFrame, metric: str) -> dict:
    """Return ``{seed: value}`` of one point's runs (NaNs dropped); {} when a seed repeats or seeds are unknown."""
    if "seed" not in part or metric not in part:
        return {}
    values = pd.to_numeric(part[metric], errors="coerce")
    pairs = [(seed, value) for seed, value in zip(part["seed"].tolist(), values.tolist()) if not pd.isna(value)]
    seeds = [seed for seed, _ in pairs]
    return dict(pairs) if len(set(seeds)) == len(seeds) else {}


def parse_baseline(text: str, results: pd.DataFrame, runs: str = "completed run") -> tuple[str, object]:
    """Return (field, value) of ``--baseline field=value``, the value parsed by the field's rule and present among
    the completed runs of ``results``; ConfigError (one sentence) otherwise (``runs`` names them in it)."""
    from ccmix.config.fields import check_field_names, field_rule

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--baseline {text!r} is not of the form field=value (e.g. --baseline omega=0)")
    name, raw = (part.strip() for part in text.split("=", 1))
    check_field_names({name: None}, source="--baseline field")
    value = field_rule(name).parse(name, raw, source="--baseline")
    completed = _completed(results)
    present = [_python(v) for v in completed[name].drop_duplicates()] if name in completed else []
    if not any(_matches(name, cell, value) for cell in present):
        shown = ", ".join(str(v) for v in present) or "none"
        raise ConfigError(f"--baseline {name}={raw} is not accepted; no {runs} has {name}={value} "
                          f"(the runs have: {shown})")
    return name, value


def _python(value):
    """Return a table cell as a plain Python value (numpy scalars from pandas become int/float)."""
    return value.item() if isinstance(value, np.generic) else value


def _matches(field: str, cell, value) -> bool:
    """True when a table cell holds ``value`` of config field ``field`` (1.0 read back from a table equals 1)."""
    from ccmix.config.fields import field_names, field_rule

    cell = _python(cell)
    if field in field_names():
        try:
            cell = field_rule(field).coerce(field, cell)
        except ConfigError:
            return False
    return cell == value or str(cell) == str(value)


def baseline_table(results: pd.DataFrame, field: str, value, metrics: Sequence[str] = ABLATION_METRICS,
                   keys: list[str] | None = None) -> pd.DataFrame:
    """Return one row per grid point other than the baseline ones: its key values, the baseline it is compared
    with (``field=value``, the same values of every other key), and for each metric ``<metric>_diff`` (points),
    ``_ci`` (95 % CI half-width; NaN with one seed), ``_dof``, ``_test`` ("paired" when both ran the same
    seeds, else "Welch") and ``_verdict`` (see :func:`verdict`). A point without a baseline is left out."""
    keys = grid_columns(results) if keys is None else list(keys)
    if field not in keys:
        keys = [*keys, field]
    points = [(values, part) for values, part in _points(results, keys)]
    others = [k for k in keys if k != field]

    def is_baseline(values: dict) -> bool:
        return _matches(field, values[field], value)

    baselines = {tuple(str(values[k]) for k in others): part for values, part in points if is_baseline(values)}
    rows = []
    for values, part in points:
        base = baselines.get(tuple(str(values[k]) for k in others))
        if is_baseline(values) or base is None:
            continue
        row = dict(values, runs=len(part), baseline=f"{field}={value}")
        for metric in metrics:
            row.update({f"{metric}_{k}": v for k, v in _difference(part, base, metric).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs.update(keys=keys, baseline=(field, value))
    return table


def _difference(part: pd.DataFrame, base: pd.DataFrame, metric: str) -> dict:
    point_seeds, base_seeds = _by_seed(part, metric), _by_seed(base, metric)
    if point_seeds and set(point_seeds) == set(base_seeds):
        result = paired_difference(point_seeds, base_seeds)
    else:
        numbers = [pd.to_numeric(p[metric], errors="coerce").dropna().tolist() if metric in p else []
                   for p in (part, base)]
        result = welch_difference(*numbers)
    result["verdict"] = verdict(result["diff"], result["ci"])
    return result


# --------------------------------------------------------------------------- text


def format_seed_table(table: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS, digits: int = 2) -> pd.DataFrame:
    """Return :func:`seed_table` as text cells "mean ± CI (sd s)" per metric, "mean (n=1, no CI)" for one seed."""
    keys = table.attrs.get("keys", [])
    shown = table[keys + ["runs", "seeds"]].copy()
    for metric in metrics:
        shown[metric.replace("_", " ")] = [
            _interval_text(row[f"{metric}_mean"], row[f"{metric}_ci"], row[f"{metric}_sd"], row[f"{metric}_n"], digits)
            for _, row in table.iterrows()]
    return shown.set_index(keys) if keys else shown


def _interval_text(mean, ci, sd, n, digits: int) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(ci):
        return f"{mean:.{digits}f} (n={int(n)}, no CI)"
    return f"{mean:.{digits}f} ± {ci:.{digits}f} (sd {sd:.{digits}f})"


def format_baseline_table(table: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS) -> pd.DataFrame:
    """Return :func:`baseline_table` as text: per metric the verdict, and how the difference was taken."""
    keys = table.attrs.get("keys", [])
    shown = table[keys + ["baseline"]].copy()
    tests = [", ".join(sorted({str(row[f"{m}_test"]) for m in metrics if not pd.isna(row[f"{m}_diff"])})) or "–"
             for _, row in table.iterrows()]
    shown["test"] = tests
    for metric in metrics:
        shown[f"Δ {metric.replace('_', ' ')}"] = table[f"{metric}_verdict"]
    return shown.set_index(keys) if keys else shown


def report_text(results: pd.DataFrame, baseline: str | None = None) -> str:
    """Return the ablation report of a run table: the per-point table over seeds and, with ``baseline``
    ("field=value"), every point's difference to its baseline point."""
    table = seed_table(results)
    if table.empty:
        return "no completed runs to report"
    lines = [f"mean ± {CONFIDENCE:.0%} CI half-width over seeds (t, n-1 dof), sd with ddof=1; accuracies in %:",
             format_seed_table(table).to_string()]
    if baseline is not None:
        field, value = parse_baseline(baseline, results)
        differences = baseline_table(results, field, value)
        lines.append(f"\ndifference to {field}={value} with the same other values (points; {CONFIDENCE:.0%} CI, "
                     "paired by seed when the seeds match, Welch otherwise):")
        lines.append(format_baseline_table(differences).to_string() if not differences.empty
                     else f"no grid point has a baseline point with {field}={value} and the same other values")
    return "\n".join(lines)


__all__ = ["ABLATION_METRICS", "CONFIDENCE", "NO_SPREAD", "baseline_table", "format_baseline_table",
           "format_seed_table", "report_text", "grid_columns", "mean_interval",
           "paired_difference", "parse_baseline", "seed_table", "t_half_width", "verdict", "welch_difference"]
