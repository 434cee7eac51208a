"""`{placeholder}` templates in recipe values: find them, check them, fill them.

A placeholder is ``{name}`` (a recipe parameter), ``{scan.field}`` (one of ``SCAN_FIELDS``) or
``{role.name}`` (the dataset the scan's layout found for a role of ``ROLES``, e.g.
``{role.frames}``); ``{{`` and ``}}`` stand for literal braces. Any other brace text is left
alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from hpcproc.scaninfo import ROLE_PREFIX, ROLES, SCAN_FIELDS

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")

SCAN_PREFIX = "scan."
__all__ = ["ROLE_PREFIX", "SCAN_PREFIX", "fill", "is_templated", "placeholders", "walk_strings"]


def placeholders(text: str) -> list[str]:
    """Names of the placeholders in ``text``, in order (``"scan.dir"``, ``"npt"``, ...)."""
    return [m.group(1) for m in _TOKEN.finditer(text) if m.group(1)]


def walk_strings(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string inside nested lists/dicts, with its path of keys and indices."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from walk_strings(v, (*path, k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from walk_strings(v, (*path, i))


def is_templated(value: Any) -> bool:
    """True if any string inside ``value`` has a placeholder."""
    return any(placeholders(s) for _, s in walk_strings(value))


def placeholder_problem(name: str, parameters: Any) -> str | None:
    """Why ``{name}`` cannot be filled from ``parameters`` (a collection of names) or the scan."""
    if name.startswith(SCAN_PREFIX):
        field = name[len(SCAN_PREFIX) :]
        if field not in SCAN_FIELDS:
            return f"unknown scan field {{{name}}} (scan fields: {', '.join(SCAN_FIELDS)})"
        return None
    if name.startswith(ROLE_PREFIX):
        role = name[len(ROLE_PREFIX) :]
        if role not in ROLES:
            return f"unknown role {{{name}}} (roles: {', '.join(ROLES)})"
        return None
    if name not in parameters:
        known = ", ".join(sorted(parameters)) or "none"
        scan_fields = ", ".join(SCAN_PREFIX + f for f in SCAN_FIELDS)
        return f"unknown parameter {{{name}}} (parameters: {known}; scan fields: {scan_fields})"
    return None


def _as_text(value: Any) -> str:
    # Inside a longer string: lists read as space-separated words, a missing value as nothing.
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return " ".join(_as_text(v) for v in value)
    return str(value)


def fill(value: Any, params: Mapping[str, Any], scan: Mapping[str, Any] | None = None) -> Any:
    """Fill the placeholders in ``value`` (walking nested lists and dicts).

    A string that is exactly ``"{name}"`` takes the parameter's typed value (a list stays a list,
    None stays None); placeholders inside longer text are formatted as text. ``scan`` holds the
    values of ``{scan.*}`` (``ScanInfo.metadata()``); if it is None those are left as they are.
    Raises KeyError naming a placeholder that has no value.
    """
    if isinstance(value, Mapping):
        return {k: fill(v, params, scan) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [fill(v, params, scan) for v in value]
    if not isinstance(value, str):
        return value
    whole = _TOKEN.fullmatch(value)
    if whole and whole.group(1) and not whole.group(1).startswith((SCAN_PREFIX, ROLE_PREFIX)):
        return params[whole.group(1)]
    return _TOKEN.sub(lambda m: _replace(m, params, scan), value)


def _replace(m: re.Match[str], params: Mapping[str, Any], scan: Mapping[str, Any] | None) -> str:
    token, name = m.group(0), m.group(1)
    if not name:
        return token[0]  # "{{" -> "{", "}}" -> "}"
    if name.startswith(SCAN_PREFIX):
        if scan is None:
            return token
        return _as_text(scan[name[len(SCAN_PREFIX) :]])
    if name.startswith(ROLE_PREFIX):
        if scan is None:
            return token
        return _as_text(scan[name])  # KeyError: the scan's layout found no such dataset
    return _as_text(params[name])
