"""Steps are found through the ``hpcproc.steps`` entry-point group: recipes can name only these."""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points

from hpcproc.errors import InputError
from hpcproc.steps.base import Step

GROUP = "hpcproc.steps"
log = logging.getLogger(__name__)


@cache
def available_steps() -> dict[str, type[Step]]:
    """Every registered step that loads. One that does not (a plugin whose import fails, a
    missing optional dependency) is logged and left out: recipes naming it get a clear error,
    the others run."""
    steps: dict[str, type[Step]] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as exc:
            log.error("step %r (%s) left out: cannot load it: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not an hpcproc Step")
        steps[ep.name] = cls
    return steps


def get_step(name: str) -> type[Step]:
    steps = available_steps()
    try:
        return steps[name]
    except KeyError:
        known = ", ".join(sorted(steps)) or "none installed"
        raise InputError(f"unknown step {name!r} (registered steps: {known})") from None
