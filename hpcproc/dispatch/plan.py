"""(recipe, scan, parameters) -> a checked plan, before anything runs or is recorded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hpcproc.errors import InputError
from hpcproc.recipes import Recipe, StepSpec
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.base import Step, StepParams, TaskStep
from hpcproc.steps.registry import get_step


@dataclass(frozen=True)
class PlannedStep:
    spec: StepSpec
    cls: type[Step]
    params: StepParams
    sequence_index: int  # 1-based position in execution order (NXprocess/sequence_index)

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True)
class JobPlan:
    recipe: Recipe
    scan: ScanInfo
    parameters: dict[str, Any]  # the recipe's parameters, resolved and typed
    steps: list[PlannedStep]  # in execution order


def with_roles(cls: type[Step], raw: dict[str, Any], scan: ScanInfo) -> dict[str, Any]:
    """The step's inputs not given (or empty) filled with the datasets the scan's layout found
    for their roles; a required one it did not find is an InputError naming the role."""
    out = dict(raw)
    for name, role in cls.roles.items():
        if out.get(name) not in (None, ""):
            continue
        out.pop(name, None)
        if role in scan.roles:
            out[name] = scan.roles[role]
        elif cls.Params.model_fields[name].is_required():
            raise InputError(
                f"{scan.path.name} (layout {scan.layout}): no dataset found for the role "
                f"{role!r} that step {cls.name} reads; name it with --param {name}=/path"
            )
    return out


def make_plan(recipe: Recipe, scan: ScanInfo, overrides: Mapping[str, Any]) -> JobPlan:
    """Resolve and validate everything a run needs; raises InputError naming what is wrong."""
    parameters = recipe.resolve_parameters(overrides, scan)
    steps = []
    for i, spec in enumerate(recipe.order(), start=1):
        cls = get_step(spec.uses)
        raw = with_roles(cls, recipe.step_params(spec, parameters, scan), scan)
        try:
            params = cls.Params.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(all)"
            raise InputError(
                f"recipe '{recipe.name}' step '{spec.id}' ({spec.uses}): "
                f"parameter {field}: {err['msg']} (got {err.get('input')!r})"
            ) from None
        if issubclass(cls, TaskStep) and spec.phase != "downstream":
            raise InputError(
                f"recipe '{recipe.name}' step '{spec.id}' ({spec.uses}) runs on the whole scan "
                "once it has ended: it needs phase: downstream"
            )
        if problems := cls.input_problems(params, scan):
            raise InputError(
                f"recipe '{recipe.name}' step '{spec.id}' cannot read its input "
                f"{'; '.join(problems)} (name the dataset with --param)"
            )
        steps.append(PlannedStep(spec, cls, params, i))
    return JobPlan(recipe, scan, parameters, steps)
