"""(recipe, scan, parameters) -> a checked plan, before anything runs or is recorded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hpcproc.errors import InputError
from hpcproc.nexus.scan import ScanInfo
from hpcproc.recipes import Recipe, StepSpec
from hpcproc.steps.base import FrameStep, Step, StepParams, TaskStep
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


def make_plan(recipe: Recipe, scan: ScanInfo, overrides: Mapping[str, Any]) -> JobPlan:
    """Resolve and validate everything a run needs; raises InputError naming what is wrong."""
    parameters = recipe.resolve_parameters(overrides, scan)
    steps = []
    for i, spec in enumerate(recipe.order(), start=1):
        cls = get_step(spec.uses)
        raw = recipe.step_params(spec, parameters, scan)
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
        if issubclass(cls, FrameStep):
            dataset = str(getattr(params, cls.source))
            if dataset not in scan.datasets:
                raise InputError(
                    f"recipe '{recipe.name}' step '{spec.id}': dataset {dataset} "
                    f"not found in scan file {scan.path}"
                )
        steps.append(PlannedStep(spec, cls, params, i))
    return JobPlan(recipe, scan, parameters, steps)
