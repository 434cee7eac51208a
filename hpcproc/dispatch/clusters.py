"""Cluster profiles (clusters/*.yaml) -> a Dask client.

A profile is plain data deployed by the facility's compute team. This version has the `local`
kind (a LocalCluster, the default) and `scheduler` (connect to a running Dask scheduler);
batch-system kinds (Slurm, Grid Engine) plug in here as one small module each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Literal

from distributed import Client, LocalCluster
from pydantic import BaseModel, ConfigDict, Field

import hpcproc
from hpcproc.errors import InputError
from hpcproc.recipes.loader import load_model


class ClusterProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["local", "scheduler"] = "local"
    description: str = ""
    workers: int | None = Field(default=None, ge=1, description="worker processes (None: cores)")
    threads_per_worker: int = Field(default=1, ge=1)
    processes: bool = True
    memory_limit: str = "auto"
    dashboard_address: str = Field(default=":8787", description="':0' picks a free port")
    scheduler_address: str | None = Field(default=None, description="for kind: scheduler")


def profile_dirs() -> list[Path]:
    """$HPCPROC_CLUSTER_PATH (os.pathsep-separated) first, then the shipped `clusters/`."""
    env = os.environ.get("HPCPROC_CLUSTER_PATH", "")
    dirs = [Path(p) for p in env.split(os.pathsep) if p]
    return [*dirs, Path(hpcproc.__file__).resolve().parents[1] / "clusters"]


def load_profile(name_or_path: str) -> ClusterProfile:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        found = [d / f"{name_or_path}.yaml" for d in profile_dirs()]
        path = next((p for p in found if p.is_file()), found[-1])
        if not path.is_file():
            known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})
            raise InputError(f"no cluster profile named {name_or_path!r} (known: {known})")
    return load_model(path, ClusterProfile)


@contextmanager
def open_client(profile: ClusterProfile) -> Iterator[Client]:
    """A client on the profile's cluster, closed (with its cluster) on exit."""
    if profile.kind == "scheduler":
        if not profile.scheduler_address:
            raise InputError(f"cluster profile {profile.name!r}: kind scheduler needs an address")
        with Client(profile.scheduler_address) as client:
            yield client
        return
    make = partial(
        LocalCluster,
        n_workers=profile.workers or os.cpu_count() or 1,
        threads_per_worker=profile.threads_per_worker,
        processes=profile.processes,
        memory_limit=profile.memory_limit,
        dashboard_address=profile.dashboard_address,
        silence_logs=logging.ERROR,
    )
    try:
        cluster = make()
    except OSError:  # dashboard port taken (another hpcproc running): take any free port
        cluster = make(dashboard_address=":0")
    with cluster, Client(cluster) as client:
        yield client
