"""The internal scan event: what any message format says about a scan, in one shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hpcproc.errors import InputError


class MessageError(InputError):
    """A message that can never be processed (malformed, unknown format, missing field): it
    goes to the dead-letter queue with this one-line reason."""


class ScanState(StrEnum):
    STARTED = "started"  # the scan is running (its file may not exist yet)
    UPDATED = "updated"  # progress of a running scan
    FINISHED = "finished"  # ended normally
    FAILED = "failed"  # aborted or failed


@dataclass(frozen=True)
class RecipeRequest:
    """A recipe the message asks for by name, with parameter overrides."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanEvent:
    """One thing that happened to a scan.

    ``key`` identifies the scan within its source (a GDA scan id, a bluesky run uid) and ties
    later events to the first; ``path`` may be missing from later events (the launcher knows it
    from the first)."""

    key: str
    state: ScanState
    source: str  # "gda", "bluesky", "file"
    path: Path | None = None
    scan_id: str | None = None
    beamline: str | None = None
    visit: str | None = None
    scan_command: str | None = None
    shape: tuple[int, ...] | None = None
    percent: float | None = None
    recipes: tuple[RecipeRequest, ...] = ()
    reason: str | None = None  # why a scan failed, as the source put it


def recipe_requests(value: Any, where: str) -> tuple[RecipeRequest, ...]:
    """``["xrf-map", {"recipe": "xrd-map", "parameters": {"npt": 1000}}]`` -> requests."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise MessageError(f"{where} must be a list of recipe names, not {type(value).__name__}")
    requests = []
    for item in value:
        if isinstance(item, str) and item:
            requests.append(RecipeRequest(item))
        elif isinstance(item, Mapping) and isinstance(item.get("recipe"), str):
            params = item.get("parameters") or {}
            if not isinstance(params, Mapping):
                raise MessageError(f"{where}: parameters of {item['recipe']!r} must be a mapping")
            requests.append(RecipeRequest(item["recipe"], dict(params)))
        else:
            raise MessageError(f"{where}: {item!r} is neither a recipe name nor {{recipe: ...}}")
    return tuple(requests)


def text_field(doc: Mapping[str, Any], *names: str) -> str | None:
    """The first of ``names`` present in ``doc`` with a non-empty value, as text."""
    for name in names:
        value = doc.get(name)
        if value is not None and value != "":
            return str(value)
    return None


def shape_field(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = [value]
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise MessageError(f"{where} must be a list of integers, not {value!r}") from None
    if any(n < 0 for n in shape):
        raise MessageError(f"{where} has a negative size: {list(shape)}")
    return shape
