"""Steps are found through the ``hpcproc.steps`` entry-point group: recipes can name only these."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from hpcproc.errors import InputError
from hpcproc.steps.base import Step

GROUP = "hpcproc.steps"


@cache
def available_steps() -> dict[str, type[Step]]:
    steps: dict[str, type[Step]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
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
