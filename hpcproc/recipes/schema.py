"""A recipe's parameters as a JSON Schema (draft 2020-12), for guided configuration forms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcproc.recipes.model import Parameter

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_SCALAR: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "str": {"type": "string"},
    "path": {"type": "string", "format": "path"},
}

_JSON_TYPE = {bool: "boolean", int: "integer", float: "number", str: "string"}


def parameter_schema(name: str, p: Parameter) -> dict[str, Any]:
    """The JSON Schema of one parameter."""
    if p.type == "enum":
        values = list(p.values or [])
        s: dict[str, Any] = {"enum": values}
        kinds = {_JSON_TYPE[type(v)] for v in values if type(v) in _JSON_TYPE}
        if len(kinds) == 1:
            s["type"] = kinds.pop()
    elif p.type == "list":
        s = {"type": "array", "items": dict(_SCALAR[p.items or "str"])}
    else:
        s = dict(_SCALAR[p.type])
    if p.minimum is not None:
        s["minimum"] = p.minimum
    if p.maximum is not None:
        s["maximum"] = p.maximum
    if p.optional:  # no value at all is a valid choice
        if "type" in s:
            s["type"] = [s["type"], "null"]
        if "enum" in s:
            s["enum"] = [*s["enum"], None]
    s["title"] = name
    if p.description:
        s["description"] = p.description
    if p.default is not None:
        s["default"] = p.default
    return s


def parameters_schema(
    parameters: Mapping[str, Parameter], title: str = "", description: str = ""
) -> dict[str, Any]:
    """JSON Schema object for a recipe's parameters: one property each, required ones listed."""
    schema: dict[str, Any] = {"$schema": DRAFT, "type": "object"}
    if title:
        schema["title"] = title
    if description:
        schema["description"] = description
    schema["properties"] = {n: parameter_schema(n, p) for n, p in parameters.items()}
    schema["required"] = [n for n, p in parameters.items() if p.required]
    schema["additionalProperties"] = False
    return schema
