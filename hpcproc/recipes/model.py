"""The recipe model: what a recipe file may say, checked completely when it is loaded.

Validators raise :class:`LocatedValueError` to say *which* key or value inside the model is wrong;
the loader turns that into file:line:col. Recipes are data: a step is named, never imported.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from hpcproc.errors import InputError
from hpcproc.recipes import schema, templating
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.registry import get_step

SCALAR_TYPES = ("int", "float", "bool", "str", "path")
PARAMETER_TYPES = (*SCALAR_TYPES, "enum", "list")
ScalarType = Literal["int", "float", "bool", "str", "path"]
ParameterType = Literal["int", "float", "bool", "str", "path", "enum", "list"]

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STEP_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
MEMORY_RE = re.compile(r"\d+(\.\d+)?\s*([KMGTP]i?B|B)", re.IGNORECASE)
WALLTIME_RE = re.compile(r"\d{1,4}:[0-5]\d:[0-5]\d")
_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


class LocatedValueError(ValueError):
    """A validation problem at ``loc`` below the model being validated.

    ``at`` is "key" when the mapping key itself is wrong (unknown key), "value" otherwise.
    """

    def __init__(self, message: str, loc: tuple[Any, ...] = (), at: str = "value") -> None:
        super().__init__(message)
        self.loc = loc
        self.at = at


def show(value: Any) -> str:
    """A value as a person would write it in the recipe: strings quoted, numbers bare."""
    return repr(value) if isinstance(value, str) else str(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _internal: ClassVar[tuple[str, ...]] = ()  # fields that are not YAML keys

    @classmethod
    def yaml_keys(cls) -> list[str]:
        """The keys a recipe file may use in this mapping."""
        return [f.alias or n for n, f in cls.model_fields.items() if n not in cls._internal]


# ---- parameters ----------------------------------------------------------------------------


def _scalar(kind: str, value: Any, text: bool) -> Any:
    """``value`` as a ``kind`` value; a string is parsed when ``text`` (CLI input).

    Raises ValueError with the end of a sentence ("is not a valid int").
    """
    if text and isinstance(value, str) and kind in ("int", "float", "bool"):
        s = value.strip()
        try:
            if kind == "int":
                return int(s)
            if kind == "float":
                return float(s)
        except ValueError:
            raise ValueError(f"is not a valid {kind}") from None
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ValueError("is not a valid bool (true or false)")
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "path": isinstance(value, str),
    }[kind]
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)  # 2000.0 from JSON
    if not ok:
        raise ValueError(f"is not a valid {kind}")
    return float(value) if kind == "float" else value


class Parameter(_Strict):
    """One recipe parameter: its type, default and allowed values."""

    type: ParameterType
    description: str = ""
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    values: list[str | int | float] | None = None  # enum
    items: ScalarType | None = None  # list
    required: bool = False

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, v: Any) -> Any:
        if v not in PARAMETER_TYPES:
            raise ValueError(
                f"unknown parameter type {show(v)} (allowed: {', '.join(PARAMETER_TYPES)})"
            )
        return v

    @property
    def optional(self) -> bool:
        """Neither required nor defaulted: its value may be None."""
        return not self.required and self.default is None

    def coerce(self, value: Any, text: bool = True) -> Any:
        """``value`` as this parameter's type; strings are parsed when ``text`` (CLI input).

        Raises ValueError with the end of a sentence ("is not a valid int").
        """
        if self.type == "enum":
            return self._enum(value, text)
        if self.type == "list":
            if text and isinstance(value, str):
                sep = "," if "," in value else None
                value = [s.strip() for s in value.split(sep) if s.strip()]
            if not isinstance(value, list | tuple):
                raise ValueError(f"is not a list of {self.items}")
            out = []
            for item in value:
                try:
                    out.append(_scalar(self.items or "str", item, text))
                except ValueError as e:
                    raise ValueError(f"has an item {show(item)} that {e}") from None
            return out
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if text and self.type in ("str", "path") and number:
            return str(value)  # a number typed into a form for a text parameter
        return _scalar(self.type, value, text)

    def _enum(self, value: Any, text: bool) -> Any:
        values = self.values or []
        for v in values:
            if value == v and type(value) is type(v):
                return v
        if text and isinstance(value, str):
            for v in values:
                if str(v) == value.strip():
                    return v
        raise ValueError(f"is not one of {', '.join(map(str, values))}")

    def problem(self, value: Any, its: bool = False) -> str | None:
        """Why a typed ``value`` is out of range, as the end of a sentence; None if it is fine."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        its_ = "its " if its else ""
        if self.minimum is not None and value < self.minimum:
            return f"is below {its_}minimum {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"is above {its_}maximum {self.maximum}"
        return None

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        t = self.type
        if t == "enum":
            if not self.values:
                raise LocatedValueError(
                    "an enum parameter needs 'values': the list of allowed values", ("type",)
                )
        elif self.values is not None:
            raise LocatedValueError(
                f"'values' is only for enum parameters, not {t}", ("values",), "key"
            )
        if t == "list" and self.items is None:
            raise LocatedValueError(
                f"a list parameter needs 'items' (one of {', '.join(SCALAR_TYPES)})", ("type",)
            )
        if t != "list" and self.items is not None:
            raise LocatedValueError(
                f"'items' is only for list parameters, not {t}", ("items",), "key"
            )
        for bound in ("minimum", "maximum"):
            if getattr(self, bound) is not None and t not in ("int", "float"):
                raise LocatedValueError(
                    f"'{bound}' is only for int and float parameters, not {t}", (bound,), "key"
                )
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise LocatedValueError(
                f"minimum {self.minimum} is greater than maximum {self.maximum}", ("minimum",)
            )
        if self.default is None:
            return self
        if self.required:
            raise LocatedValueError(
                "a parameter with a default is not required: remove 'required' or 'default'",
                ("required",),
            )
        try:
            default = self.coerce(self.default, text=False)
        except ValueError as e:
            raise LocatedValueError(f"default {show(self.default)} {e}", ("default",)) from None
        if (why := self.problem(default)) is not None:
            raise LocatedValueError(
                f"value out of range: default {show(default)} {why}", ("default",)
            )
        if t in ("str", "path"):
            for name in templating.placeholders(default):
                if not name.startswith((templating.SCAN_PREFIX, templating.ROLE_PREFIX)):
                    raise LocatedValueError(
                        "a default can only use {scan.*} and {role.*} placeholders, "
                        f"not {{{name}}}",
                        ("default",),
                    )
                if (why := templating.placeholder_problem(name, ())) is not None:
                    raise LocatedValueError(why, ("default",))
        object.__setattr__(self, "default", default)  # typed (e.g. int 1 -> 1.0 for float)
        return self


# ---- steps ---------------------------------------------------------------------------------


class Resources(_Strict):
    """Where and with what a step runs; the dispatcher maps this onto a cluster profile."""

    cluster: str | None = None  # cluster profile name (clusters/<name>.yaml); None = default
    cores: int = Field(default=1, ge=1)
    memory: str | None = None  # "4GB", "512MB"
    walltime: str | None = None  # "HH:MM:SS"
    env: str | None = None  # environment name (envs/)
    retries: int = Field(default=0, ge=0, le=10)
    # A live step fails when its scan's writer adds no frame for this long (seconds) and has
    # not marked the scan finished: a writer that died.
    idle_timeout: float = Field(default=60.0, gt=0, le=86400)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not MEMORY_RE.fullmatch(v.strip()):
            raise ValueError(f"memory {v!r} is not a size like 4GB, 512MB or 1.5GiB")
        return v

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v: Any) -> Any:
        if v is not None and not (isinstance(v, str) and WALLTIME_RE.fullmatch(v)):
            raise ValueError(f'walltime {show(v)} is not HH:MM:SS (quote it: "00:30:00")')
        return v


class StepSpec(_Strict):
    """One step of a recipe: a registered step, its `with` values and its resources."""

    id: str
    uses: str
    phase: Literal["live", "downstream"] = "live"
    needs: list[str] = Field(default_factory=list)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    resources: Resources = Field(default_factory=Resources)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not STEP_ID_RE.fullmatch(v):
            raise ValueError(f"step id {v!r} must be letters, digits, '_', '-' or '.'")
        return v

    @field_validator("uses")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            get_step(v)
        except InputError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("needs", mode="before")
    @classmethod
    def _one_need(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # `needs: integrate` for a single step

    @model_validator(mode="after")
    def _with_fits_step(self) -> StepSpec:
        params = get_step(self.uses).Params
        fields = params.model_fields
        names = {f.alias or n for n, f in fields.items()}
        for key in self.with_:
            if key not in names:
                raise LocatedValueError(
                    f"step {self.uses!r} has no parameter {show(key)} "
                    f"(its parameters: {', '.join(sorted(names))})",
                    ("with", key),
                    at="key",
                )
        # Literal values are checked now; templated ones once parameters are known (dispatcher).
        literal = {
            k: templating.fill(v, {}, {})  # only unescapes {{ }}
            for k, v in self.with_.items()
            if not templating.is_templated(v)
        }
        try:
            params.model_validate(literal)
        except ValidationError as e:
            for err in e.errors():
                if err["type"] not in _RUN_TIME_ERRORS:
                    key = err["loc"][0] if err["loc"] else "?"
                    raise LocatedValueError(
                        f"invalid value {show(err['input'])} for {show(key)} of step "
                        f"{self.uses!r}: {_lower(err['msg'])}",
                        ("with", *err["loc"]),
                    ) from None
        missing = [
            f.alias or n
            for n, f in fields.items()
            if f.is_required() and (f.alias or n) not in self.with_
        ]
        if missing:
            raise LocatedValueError(
                f"step {self.uses!r} needs {', '.join(map(repr, missing))} in 'with' "
                "(a value or a {parameter})",
                ("with",) if "with_" in self.model_fields_set else ("uses",),
            )
        return self


# Not checked when a recipe is loaded: filled in later, or true only where the step runs.
_RUN_TIME_ERRORS = frozenset(
    {"missing", "path_not_file", "path_not_directory", "path_not_exists", "path_not_new"}
)


def _lower(msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


# ---- applies_to ----------------------------------------------------------------------------


class NexusRule(_Strict):
    """What the scan's NeXus file must contain for a recipe to apply."""

    # roles the scan's layout must find (frames, mca, ...) or HDF5 dataset paths (/entry/...)
    requires: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)  # NX_class names, e.g. NXdetector
    scan_axes: list[str] | None = None  # compared as a set; None = any


class AppliesTo(_Strict):
    """Which scans a recipe runs on by default; empty = any beamline, any file."""

    beamlines: list[str] = Field(default_factory=list)
    nexus: NexusRule = Field(default_factory=NexusRule)


# ---- the recipe ----------------------------------------------------------------------------


class Recipe(_Strict):
    """A validated recipe; `source`, `text` and `sha256` record exactly what was loaded."""

    _internal: ClassVar[tuple[str, ...]] = ("source", "text")

    name: str
    version: str = "1"
    description: str = ""
    applies_to: AppliesTo = Field(default_factory=AppliesTo)
    # Expensive recipes: a job the launcher starts by itself waits, steps queued, until staff
    # approve it (API or job page). Jobs a person submits run at once.
    needs_approval: bool = False
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)
    source: Path | None = None
    text: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                f"recipe name {v!r} must match [a-z0-9][a-z0-9._-]* (lower case, e.g. xrd-map)"
            )
        return v

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, v: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in v:
            if not IDENT_RE.fullmatch(name) or name == "scan":
                raise LocatedValueError(
                    f"parameter name {name!r} must be an identifier (letters, digits, '_') "
                    "and not 'scan'",
                    (name,),
                    at="key",
                )
        return v

    @model_validator(mode="after")
    def _steps_fit_together(self) -> Recipe:
        index: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            if step.id in index:
                raise LocatedValueError(
                    f"duplicate step id {step.id!r} (also step {index[step.id] + 1})",
                    ("steps", i, "id"),
                )
            index[step.id] = i
        for i, step in enumerate(self.steps):
            for j, need in enumerate(step.needs):
                if need not in index:
                    raise LocatedValueError(
                        f"step {step.id!r} needs unknown step {need!r} (steps: {', '.join(index)})",
                        ("steps", i, "needs", j),
                    )
                other = self.steps[index[need]]
                if step.phase == "live" and other.phase == "downstream":
                    raise LocatedValueError(
                        f"live step {step.id!r} cannot need downstream step {need!r}: "
                        "downstream steps run after the scan ends",
                        ("steps", i, "needs", j),
                    )
        if (cycle := _find_cycle(self.steps)) is not None:
            raise LocatedValueError(
                "cycle in needs: " + " -> ".join(cycle), ("steps", index[cycle[0]], "needs")
            )
        for i, step in enumerate(self.steps):
            for path, s in templating.walk_strings(step.with_):
                for name in templating.placeholders(s):
                    if (why := templating.placeholder_problem(name, self.parameters)) is not None:
                        raise LocatedValueError(why, ("steps", i, "with", *path))
        return self

    # ---- use ----

    def parameters_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of this recipe's parameters."""
        return schema.parameters_schema(
            self.parameters, title=f"Parameters of recipe {self.name}", description=self.description
        )

    def resolve_parameters(
        self, overrides: Mapping[str, Any], scan: ScanInfo | None = None
    ) -> dict[str, Any]:
        """Every parameter's typed value: from ``overrides`` (CLI strings or typed values) or
        the defaults.

        `path` values are returned as strings (JSON-friendly); with a scan they are absolute,
        relative ones resolved against the scan file's directory.
        """
        unknown = [k for k in overrides if k not in self.parameters]
        if unknown:
            raise InputError(
                f"unknown parameter {unknown[0]!r} for recipe {self.name!r} "
                f"(parameters: {', '.join(self.parameters) or 'none'})"
            )
        meta = scan.metadata() if scan is not None else None
        out: dict[str, Any] = {}
        for name, p in self.parameters.items():
            where = f"parameter {name}"
            if name in overrides and overrides[name] is not None:
                raw = overrides[name]
                try:
                    value = p.coerce(raw, text=True)
                except ValueError as e:
                    raise InputError(f"{where}={show(raw)} of recipe {self.name!r} {e}") from None
                if (why := p.problem(value, its=True)) is not None:
                    raise InputError(f"{where}={show(value)} of recipe {self.name!r} {why}")
            elif p.required:
                hint = f" ({p.description})" if p.description else ""
                raise InputError(f"{where} of recipe {self.name!r} is required{hint}")
            elif p.type in ("str", "path") and p.default is not None:
                value = self._fill_default(name, p.default, meta, scan)
            else:
                value = p.default
            if p.type == "path" and value is not None and scan is not None:
                path = Path(value).expanduser()
                value = str(path if path.is_absolute() else scan.path.parent / path)
            out[name] = value
        return out

    def _fill_default(
        self, name: str, default: Any, meta: Mapping[str, Any] | None, scan: ScanInfo | None
    ) -> Any:
        """A default with its ``{scan.*}`` and ``{role.*}`` filled; a role the scan's layout
        did not find is said with the way round it (``--param``)."""
        try:
            return templating.fill(default, {}, meta)
        except KeyError as e:
            role = str(e.args[0]).removeprefix(templating.ROLE_PREFIX)
            where = f"{scan.path.name} (layout {scan.layout})" if scan else "the scan"
            raise InputError(
                f"recipe {self.name!r} parameter {name}: {where} has no dataset for the role "
                f"{role!r}; give it with --param {name}=/path/in/the/file"
            ) from None

    def step_params(
        self, step: StepSpec, params: Mapping[str, Any], scan: ScanInfo
    ) -> dict[str, Any]:
        """The step's `with` values with placeholders filled (not yet validated by its Params)."""
        try:
            return templating.fill(step.with_, params, scan.metadata())
        except KeyError as e:
            raise InputError(
                f"step {step.id!r} of recipe {self.name!r}: no value for {{{e.args[0]}}}"
            ) from None

    def order(self) -> list[StepSpec]:
        """Steps in dependency order; among steps that are ready, file order."""
        done: set[str] = set()
        todo = list(self.steps)
        out: list[StepSpec] = []
        while todo:
            step = next(s for s in todo if all(n in done for n in s.needs))  # no cycles: validated
            todo.remove(step)
            done.add(step.id)
            out.append(step)
        return out

    def applies(self, scan: ScanInfo) -> tuple[bool, list[str]]:
        """Whether this recipe runs on ``scan`` by default, and if not, why not."""
        rule = self.applies_to
        why: list[str] = []
        if rule.beamlines and scan.beamline not in rule.beamlines:
            why.append(f"beamline {scan.beamline!r} is not one of {', '.join(rule.beamlines)}")
        for need in rule.nexus.requires:
            if need.startswith("/"):
                if (missing := scan.missing_input(need)) is not None:
                    why.append(missing)
            elif need not in scan.roles:
                why.append(f"layout {scan.layout} found no {need} in the scan file")
            elif (missing := scan.missing_input(scan.roles[need])) is not None:
                why.append(f"{need}: {missing}")
        for cls in rule.nexus.classes:
            if cls not in scan.nx_classes:
                why.append(f"no {cls} group in the scan file")
        axes = rule.nexus.scan_axes
        if axes is not None and set(axes) != set(scan.axes):
            why.append(
                f"scan axes ({', '.join(scan.axes)}) differ from the recipe's ({', '.join(axes)})"
            )
        return not why, why


def _find_cycle(steps: list[StepSpec]) -> list[str] | None:
    """A cycle of `needs` as ids, starting and ending at its step that comes first in the file."""
    needs = {s.id: s.needs for s in steps}
    pos = {s.id: i for i, s in enumerate(steps)}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in needs[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :]
                first = min(range(len(cycle)), key=lambda k: pos[cycle[k]])
                cycle = cycle[first:] + cycle[:first]
                return [*cycle, cycle[0]]
            if nxt not in state and (found := visit(nxt, path)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for s in steps:
        if s.id not in state and (found := visit(s.id, [])) is not None:
            return found
    return None
