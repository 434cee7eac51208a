"""Cluster profiles (clusters/*.yaml) -> a Dask client.

A profile is plain data deployed by the facility's compute team. Kinds: ``local`` (a
LocalCluster, the default), ``scheduler`` (connect to a running Dask scheduler), and ``slurm`` /
``sge``: Dask workers as batch jobs through dask-jobqueue, described by the profile's ``batch:``
block (:mod:`hpcproc.dispatch.batch`), checked against the host before anything is submitted.
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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcproc.dispatch.batch import BatchSpec, check, make_cluster, wait_for_first_worker
from hpcproc.dispatch.stop import Stop
from hpcproc.errors import InputError
from hpcproc.recipes.loader import load_model
from hpcproc.shipped import shipped_dir

log = logging.getLogger(__name__)
BATCH_KINDS = ("slurm", "sge")


class ClusterProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["local", "scheduler", "slurm", "sge"] = "local"
    description: str = ""
    workers: int | None = Field(default=None, ge=1, description="worker processes (None: cores)")
    threads_per_worker: int = Field(default=1, ge=1)
    processes: bool = True
    memory_limit: str = "auto"
    dashboard_address: str = Field(default=":8787", description="':0' picks a free port")
    scheduler_address: str | None = Field(default=None, description="for kind: scheduler")
    batch: BatchSpec | None = Field(default=None, description="for kinds slurm and sge")

    @model_validator(mode="after")
    def _batch(self) -> ClusterProfile:
        if self.kind in BATCH_KINDS and self.batch is None:
            raise ValueError(f"a {self.kind} profile needs a batch: block (queue, cores, ...)")
        if self.kind not in BATCH_KINDS and self.batch is not None:
            raise ValueError(f"batch: is for kinds slurm and sge, not {self.kind}")
        return self

    def sized(self, worker_memory: int) -> ClusterProfile:
        """This batch profile with each worker given at least ``worker_memory`` bytes."""
        assert self.batch is not None
        if worker_memory <= self.batch.worker_memory:
            return self
        gib = -(-worker_memory * self.batch.processes // 2**30)  # whole GiB per batch job
        return self.model_copy(
            update={"batch": self.batch.model_copy(update={"memory": f"{gib}GiB"})}
        )


def profile_dirs() -> list[Path]:
    """$HPCPROC_CLUSTER_PATH (os.pathsep-separated) first, then the shipped `clusters/`."""
    env = os.environ.get("HPCPROC_CLUSTER_PATH", "")
    dirs = [Path(p) for p in env.split(os.pathsep) if p]
    return [*dirs, shipped_dir("clusters")]


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
def open_client(profile: ClusterProfile, stop: Stop | None = None) -> Iterator[Client]:
    """A client on the profile's cluster, closed (with its cluster) on exit. A batch cluster
    waits for its first worker, giving up (Stopped) if ``stop`` is requested meanwhile."""
    if profile.kind == "scheduler":
        if not profile.scheduler_address:
            raise InputError(f"cluster profile {profile.name!r}: kind scheduler needs an address")
        with Client(profile.scheduler_address) as client:
            yield client
        return
    if profile.batch is not None:
        check(profile.kind, profile.name, profile.batch)  # type: ignore[arg-type]
        cluster = make_cluster(profile.kind, profile.name, profile.batch, profile.dashboard_address)
        with cluster, Client(cluster) as client:
            timeout = profile.batch.start_timeout
            took = wait_for_first_worker(client, profile.kind, cluster, timeout, stop)
            log.info("%s: first worker after %.1f s", profile.name, took)
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
