"""Reprocessing: run a job's recipe again on its scan with some parameters changed.

A reprocessed job is a new ProcessingJob on the same DataCollection, with all its parameters
recorded (the original job's, with the changes applied), run through the normal dispatcher
(:func:`hpcproc.jobs.run_plan`). ISPyB's ProcessingJob has no parent column, so the link to the
original job is the ProcessingJobParameter :data:`REPROCESS_OF` (and a note in the job's
comments); :func:`reprocess_of` reads it back from a :class:`~hpcproc.lims.records.JobRecord`.

A *sweep* makes one linked job per point of the cartesian product of several parameters'
values, each given as an inclusive range ``start:stop:step`` (int and float parameters) or a
list ``v1,v2,...`` (``;`` separates the values when they contain commas, e.g. lists of element
lines). Sweeps are capped at :data:`MAX_POINTS` jobs.

Everything is checked before anything is recorded or run: an unknown job, a recipe that is not
found, an unknown parameter or a bad value raise before the first job is created.

    from hpcproc.reprocess import reprocess, reprocess_sweep
    reprocess(3, {"npt": 4000}, lims=lims, client=client)
    reprocess_sweep(3, {"npt": "1000:3000:1000", "method": ["csr", "histogram"]},
                    lims=lims, client=client)
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from distributed import Client

from hpcproc.dispatch.plan import JobPlan, make_plan
from hpcproc.errors import InputError
from hpcproc.job_keys import REPROCESS_OF
from hpcproc.jobs import JobOutcome, ProgressFn, prepare, run_plan
from hpcproc.lims import Lims
from hpcproc.lims.records import JobRecord
from hpcproc.recipes import Parameter, Recipe, find_recipe
from hpcproc.recipes.model import show

__all__ = [
    "MAX_POINTS",
    "REPROCESS_OF",
    "Reprocessing",
    "parse_sweep",
    "plan_reprocessing",
    "reprocess",
    "reprocess_of",
    "reprocess_sweep",
    "run_reprocessings",
    "sweep_options",
    "sweep_points",
]

MAX_POINTS = 1000  # the most jobs one sweep may make
_SHA = re.compile(r"sha256 ([0-9a-f]{64})")

SweepSpec = str | Sequence[Any]  # "210:230:0.5", "1000,2000" or a sequence of values


@dataclass(frozen=True)
class Reprocessing:
    """One checked reprocessing, ready to run: the plan and what changed from the parent."""

    parent: int  # the job it reprocesses
    plan: JobPlan
    changes: dict[str, Any]  # the parameters asked for (typed as the recipe types them)
    display_name: str
    warnings: tuple[str, ...] = field(default=())


def reprocess_of(record: JobRecord | Mapping[str, Any]) -> int | None:
    """The id of the job that ``record`` (a JobRecord or its parameters) reprocesses, or None."""
    params = record if isinstance(record, Mapping) else record.parameters
    value = params.get(REPROCESS_OF)
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- sweeps


def sweep_options(texts: Iterable[str]) -> dict[str, str]:
    """``["npt=1000,2000", "centre=210:230:0.5"]`` (CLI ``--sweep``) -> {name: spec}."""
    sweeps: dict[str, str] = {}
    for text in texts:
        name, sep, spec = text.partition("=")
        name = name.strip()
        if not sep or not name or not spec.strip():
            raise InputError(
                f"--sweep {text!r} is not like name=start:stop:step or name=value1,value2"
            )
        if name in sweeps:
            raise InputError(f"--sweep {name} is given twice: give all its values in one --sweep")
        sweeps[name] = spec.strip()
    return sweeps


def _number(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InputError(f"{where}: {text.strip()!r} is not a number") from None
    if not value.is_finite():
        raise InputError(f"{where}: {text.strip()!r} is not a finite number")
    return value


def _range(name: str, p: Parameter, spec: str) -> list[Any]:
    where = f"--sweep {name}={spec}"
    parts = spec.split(":")
    if len(parts) == 2 and p.type == "int":
        parts.append("1")
    if len(parts) != 3:
        raise InputError(f"{where}: a range is start:stop:step (inclusive), e.g. 210:230:0.5")
    start, stop, step = (_number(x, where) for x in parts)
    if p.type == "int" and any(x != x.to_integral_value() for x in (start, stop, step)):
        raise InputError(f"{where}: {name} is an int parameter, so start, stop and step are ints")
    if step == 0:
        raise InputError(f"{where}: the step is 0")
    span = (stop - start) / step
    if span < 0:
        raise InputError(f"{where}: a step of {step} never goes from {start} to {stop}")
    count = int(span) + 1  # span >= 0: int() is floor
    if count > MAX_POINTS:
        raise InputError(
            f"{where} has {count} points; a sweep makes at most {MAX_POINTS} jobs "
            "(use a larger step)"
        )
    values = (start + i * step for i in range(count))
    if p.type == "int":
        return [int(v) for v in values]
    return [float(v) for v in values]


def parse_sweep(name: str, spec: SweepSpec, recipe: Recipe) -> list[Any]:
    """The values of one swept parameter of ``recipe``: from a range ``start:stop[:step]``
    (int and float parameters; inclusive; Decimal arithmetic, so 0.1 steps land exactly), a
    list ``v1,v2`` (``;``-separated when the values themselves contain commas) or a sequence
    of values. Values are checked later, with the rest of the parameters."""
    p = recipe.parameters.get(name)
    if p is None:
        raise InputError(
            f"cannot sweep {name!r}: no such parameter in recipe {recipe.name!r} "
            f"(parameters: {', '.join(recipe.parameters) or 'none'})"
        )
    if isinstance(spec, str):
        if p.type in ("int", "float") and ":" in spec:
            values = _range(name, p, spec)
        else:
            sep = ";" if ";" in spec else ","
            values = [v.strip() for v in spec.split(sep) if v.strip()]
    else:
        values = list(spec)
    if not values:
        raise InputError(f"--sweep {name}: no values")
    if len(values) > MAX_POINTS:
        raise InputError(
            f"--sweep {name} has {len(values)} values; a sweep makes at most {MAX_POINTS} jobs"
        )
    return values


def sweep_points(sweeps: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the swept values, one dict per point (first sweep slowest);
    InputError beyond :data:`MAX_POINTS` points."""
    if not sweeps:
        return [{}]
    total = math.prod(len(v) for v in sweeps.values())
    if total > MAX_POINTS:
        sizes = " x ".join(str(len(v)) for v in sweeps.values())
        raise InputError(
            f"the sweep has {sizes} = {total} points; a sweep makes at most {MAX_POINTS} jobs"
        )
    names = list(sweeps)
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*sweeps.values())]


# ---------------------------------------------------------------- planning


def _recipe_of(record: JobRecord, recipe: Recipe | str | Path | None) -> Recipe:
    if isinstance(recipe, Recipe):
        found = recipe
    elif recipe is not None:
        found = find_recipe(str(recipe))
    else:
        if not record.recipe:
            raise InputError(f"job {record.id} has no recipe recorded: cannot reprocess it")
        try:
            found = find_recipe(record.recipe)
        except InputError as exc:
            raise InputError(
                f"job {record.id} ran recipe {record.recipe!r}, which is not on the recipe "
                f"path ({exc}); give its file with --recipe"
            ) from None
    if record.recipe and found.name != record.recipe:
        raise InputError(
            f"job {record.id} ran recipe {record.recipe!r}, not {found.name!r}: "
            "a reprocessing runs the same recipe"
        )
    return found


def _summary(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={show(v)}" for k, v in changes.items())


def plan_reprocessing(
    job_id: int,
    changes: Mapping[str, Any] | None = None,
    sweeps: Mapping[str, SweepSpec] | None = None,
    *,
    lims: Lims,
    recipe: Recipe | str | Path | None = None,
    wait: float = 0.0,
) -> list[Reprocessing]:
    """Check a reprocessing of job ``job_id`` (one per sweep point) without recording anything.

    The recipe is the job's, found by name on the recipe path (or ``recipe``: a Recipe or a
    file, which must have the same name); the scan is the job's data collection's file; the
    parameters are the job's recorded ones with ``changes`` (CLI strings or typed values) and
    the sweep point applied. LimsError for an unknown job; InputError for anything else wrong.
    """
    record = lims.job(job_id)
    if record.scan_file is None:
        raise InputError(f"job {job_id} has no scan file recorded: cannot reprocess it")
    found = _recipe_of(record, recipe)
    changes = dict(changes or {})
    swept = {name: parse_sweep(name, spec, found) for name, spec in (sweeps or {}).items()}
    both = sorted(set(changes) & set(swept))
    if both:
        raise InputError(f"parameter {both[0]!r} is both set and swept: give it once")
    points = sweep_points(swept)
    # The job's parameters that the recipe still has (reserved hpcproc.* keys are not).
    base = {k: v for k, v in record.parameters.items() if k in found.parameters}
    warnings: list[str] = []
    m = _SHA.search(record.comments)
    if m and m.group(1) != found.sha256:
        warnings.append(
            f"recipe {found.name!r} has changed since job {job_id} ran "
            f"(sha256 {m.group(1)[:12]}... -> {found.sha256[:12]}...)"
        )
    out: list[Reprocessing] = []
    scan = None
    for i, point in enumerate(points, start=1):
        asked = {**changes, **point}
        overrides = {**base, **asked}
        try:
            if scan is None:
                plan = prepare(found, record.scan_file, overrides, wait)
                scan = plan.scan
            else:
                plan = make_plan(found, scan, overrides)
        except InputError as exc:
            where = f"sweep point {i} of {len(points)} ({_summary(point)}): " if point else ""
            raise InputError(f"reprocessing job {job_id}: {where}{exc}") from None
        typed = {k: plan.parameters[k] for k in asked}
        what = _summary(typed) or "same parameters"
        out.append(
            Reprocessing(
                parent=job_id,
                plan=plan,
                changes=typed,
                display_name=f"{found.name} v{found.version} re{job_id}: {what}",
                warnings=tuple(warnings),
            )
        )
    return out


# ---------------------------------------------------------------- running


def run_reprocessings(
    plans: Sequence[Reprocessing],
    *,
    lims: Lims,
    client: Client,
    cluster: str = "local",
    progress: ProgressFn | None = None,
) -> list[JobOutcome]:
    """Record and run checked reprocessings one after the other, on one cluster."""
    return [
        run_plan(
            r.plan,
            lims=lims,
            client=client,
            cluster=cluster,
            progress=progress,
            automatic=False,
            parent_job=r.parent,
            display_name=r.display_name,
        )
        for r in plans
    ]


def reprocess(
    job_id: int,
    changes: Mapping[str, Any] | None = None,
    *,
    lims: Lims,
    client: Client,
    cluster: str = "local",
    progress: ProgressFn | None = None,
    recipe: Recipe | str | Path | None = None,
) -> JobOutcome:
    """Run job ``job_id``'s recipe again on its scan with ``changes`` applied to its parameters,
    as a new job on the same data collection linked to it (see :func:`plan_reprocessing`)."""
    plans = plan_reprocessing(job_id, changes, lims=lims, recipe=recipe)
    (outcome,) = run_reprocessings(
        plans, lims=lims, client=client, cluster=cluster, progress=progress
    )
    return outcome


def reprocess_sweep(
    job_id: int,
    sweeps: Mapping[str, SweepSpec],
    changes: Mapping[str, Any] | None = None,
    *,
    lims: Lims,
    client: Client,
    cluster: str = "local",
    progress: ProgressFn | None = None,
    recipe: Recipe | str | Path | None = None,
) -> list[JobOutcome]:
    """One linked reprocessing of job ``job_id`` per point of the sweeps' cartesian product,
    in product order; every point is checked before the first job is recorded."""
    plans = plan_reprocessing(job_id, changes, sweeps, lims=lims, recipe=recipe)
    return run_reprocessings(plans, lims=lims, client=client, cluster=cluster, progress=progress)
