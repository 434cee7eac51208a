"""Installing a facility's own step package in a test, the way pip would."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from distributed import Client

from benchmarks.common import local_client
from hpcproc.steps import registry


@contextmanager
def plugin_client(
    site: Path, module: str, source: str, entry: str, workers: int
) -> Iterator[Client]:
    """``module`` (its ``source``) with a dist-info declaring ``entry`` ("name = module:Class")
    in the hpcproc.steps group, on a path both this process and the workers of a fresh
    LocalCluster see; a client on that cluster. Everything is undone after."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[hpcproc.steps]\n{entry}\n")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(site))
    mp.setenv("PYTHONPATH", str(site))  # inherited by the worker processes
    registry.available_steps.cache_clear()
    try:
        with local_client(workers) as client:  # started now: its workers see PYTHONPATH
            yield client
    finally:
        mp.undo()
        sys.modules.pop(module, None)
        registry.available_steps.cache_clear()
