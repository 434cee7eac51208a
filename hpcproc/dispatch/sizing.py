"""Which cluster profile each step of a job runs on, with workers big enough for it.

A step's ``resources.cluster`` names a profile (else the job's), and its memory need per
worker is the largest of ``resources.memory``, the step type's own estimate from the scan's
shape and dtype (:meth:`hpcproc.steps.base.Step.memory_estimate`) and, for a frame step, a
batch of raw frames with its decoded copy. Worked out before anything is recorded or
submitted: a batch profile grows its workers' memory up to its ``max_memory`` for such a
step; a step that no profile can hold is refused with a one-line InputError that says what
it needs and why — not killed by the scheduler an hour into the job.

Steps on the job's own profile, unchanged, run on the job's client; any other (profile,
size) gets a worker pool of its own, opened when its first step starts and closed when the
job ends (:class:`hpcproc.dispatch.pools.ClientPool`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import psutil

from hpcproc.dispatch.clusters import ClusterProfile, load_profile
from hpcproc.dispatch.plan import JobPlan, PlannedStep
from hpcproc.dispatch.runner import BATCH_BYTES
from hpcproc.errors import InputError
from hpcproc.steps.base import FrameStep
from hpcproc.units import size_bytes

BASE = 512 * 2**20  # a worker's own footprint: Python, numpy, pyFAI, h5py, ...


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def estimate(step: PlannedStep, plan: JobPlan) -> tuple[int, str]:
    """(bytes per worker, how) for one step."""
    needs: list[tuple[int, str]] = []
    asked = step.spec.resources.memory
    if asked is not None:
        needs.append((size_bytes(asked), f"resources.memory {asked}"))
    own = step.cls.memory_estimate(step.params, plan.scan)
    if own is not None:
        needs.append((BASE + own[0], own[1]))
    if issubclass(step.cls, FrameStep):
        info = plan.scan.datasets.get(str(getattr(step.params, step.cls.source)))
        if info is not None:
            dims = info.shape[len(info.shape) - step.cls.frame_ndim :]
            frame = int(np.prod(dims)) * np.dtype(info.dtype).itemsize
            batch = max(frame, min(BATCH_BYTES, 256 * frame))
            needs.append((BASE + 3 * batch, f"batches of {gib(batch)} of frames, decoded"))
    return max(needs, default=(BASE, "a worker's own footprint"))


def worker_memory(profile: ClusterProfile) -> tuple[int, int] | None:
    """(bytes a worker has, the most it could be given) or None when unknown (a running
    scheduler's workers are what they are)."""
    if profile.batch is not None:
        return profile.batch.worker_memory, profile.batch.max_worker_memory
    if profile.kind != "local":
        return None
    workers = profile.workers or psutil.cpu_count() or 1
    if profile.memory_limit in ("auto", "0", ""):
        have = psutil.virtual_memory().total // workers
    else:
        have = size_bytes(profile.memory_limit)
    return have, have


def step_profiles(
    plan: JobPlan,
    default: ClusterProfile,
    load: Callable[[str], ClusterProfile] = load_profile,
) -> dict[str, ClusterProfile]:
    """The profile (sized) each step runs on; InputError if a step fits none."""
    chosen: dict[str, ClusterProfile] = {}
    for step in plan.steps:
        name = step.spec.resources.cluster
        profile = load(name) if name and name != default.name else default
        need, how = estimate(step, plan)
        memory = worker_memory(profile)
        if memory is not None and need > memory[0]:
            if profile.batch is None or need > memory[1]:
                limit = "batch.max_memory" if profile.batch is not None else "memory_limit"
                raise InputError(
                    f"recipe '{plan.recipe.name}' step '{step.id}' needs about {gib(need)} per "
                    f"worker ({how}); cluster profile '{profile.name}' gives a worker at most "
                    f"{gib(memory[1])} ({limit}): choose a bigger profile "
                    "(resources.cluster) or a smaller piece of work per task"
                )
            profile = profile.sized(need)
        chosen[step.id] = profile
    live = {
        chosen[s.id].model_dump_json(): chosen[s.id] for s in plan.steps if s.spec.phase == "live"
    }
    if len(live) > 1:
        raise InputError(
            f"recipe '{plan.recipe.name}': its live steps ask for different clusters or sizes "
            f"({', '.join(sorted(p.name for p in live.values()))}); live steps follow the scan "
            "together on one"
        )
    return chosen


def sized_steps(
    plan: JobPlan, cluster: str
) -> tuple[ClusterProfile | None, dict[str, ClusterProfile]]:
    """The job's profile (None if ``cluster`` names none: then every step runs on the job's
    client as it is) and each step's sized profile; InputError if a step fits none."""
    try:
        default = load_profile(cluster)
    except InputError:
        return None, {}
    return default, step_profiles(plan, default)
