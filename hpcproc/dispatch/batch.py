"""Dask workers as batch jobs of a facility's scheduler (Slurm or Grid Engine), via dask-jobqueue.

A cluster profile of kind ``slurm`` or ``sge`` carries a ``batch:`` block (:class:`BatchSpec`):
the queue (Slurm partition, Grid Engine queue), account/project, cores, memory and Dask worker
processes per batch job, walltime, extra job directives, environment set-up lines, network
interface, local and log directories, the adaptive range of batch jobs, and when workers leave
before their walltime.

Before anything is submitted the profile is checked against this host and scheduler: the queue
must exist (``sinfo`` / ``qconf -sql``), its time limit must allow the walltime, its largest
node must hold the memory a job may ask for (``sinfo -N`` / ``qhost``), the network interface
must exist and have an IPv4 address, the scheduler's commands must be on the PATH. Each gives a
one-line InputError, so a typo costs a second, not a job stuck in a queue.

Workers leave ``drain_before`` ahead of their walltime (Dask's worker ``--lifetime``, staggered
so they do not all leave at once): a leaving worker hands its data to the others and its tasks
are run elsewhere, and the adaptive cluster submits a fresh batch job, so a long step outlives
any one job's walltime without losing tasks.

:func:`job_states` asks the scheduler how batch jobs ended (``sacct`` / ``qacct``), which is how
a worker that vanished mid-step gets a reason (cancelled, walltime exceeded, node failure).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hpcproc.config import home
from hpcproc.dispatch.stop import Stop, Stopped
from hpcproc.errors import HpcprocError, InputError
from hpcproc.units import seconds, size_bytes


def hms(total: float) -> str:
    total = max(0, int(total))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


class Adaptive(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    minimum: int = Field(default=1, ge=0, description="batch jobs kept while a job runs")
    maximum: int = Field(default=4, ge=1, description="batch jobs at most")


class BatchSpec(BaseModel):
    """What each batch job of a Dask worker pool asks the scheduler for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str | None = Field(default=None, description="Slurm partition / Grid Engine queue")
    account: str | None = Field(default=None, description="Slurm account / Grid Engine project")
    cores: int = Field(default=1, ge=1, description="cores per batch job")
    memory: str = Field(default="2GB", description="memory per batch job")
    max_memory: str | None = Field(
        default=None,
        description="the most one batch job may ask for on this queue (steps needing more are "
        "refused); default: memory",
    )
    processes: int = Field(default=1, ge=1, description="Dask worker processes per batch job")
    walltime: str = Field(default="01:00:00", description="per batch job, HH:MM:SS")
    drain_before: str = Field(
        default="00:05:00", description="workers leave this long before their walltime"
    )
    stagger: str = Field(default="00:01:00", description="spread of the workers' leaving times")
    job_directives: list[str] = Field(
        default_factory=list, description="extra scheduler directives (e.g. '--constraint=avx2')"
    )
    setup: list[str] = Field(
        default_factory=list,
        description="shell lines run before the worker starts (module load ..., source venv)",
    )
    interface: str | None = Field(
        default=None, description="network interface the workers and scheduler talk on"
    )
    local_directory: str | None = Field(default=None, description="worker scratch directory")
    log_directory: str | None = Field(
        default=None, description="batch jobs' stdout/stderr (default: $HPCPROC_HOME/batch-logs)"
    )
    adaptive: Adaptive = Field(default_factory=Adaptive)
    start_timeout: float = Field(
        default=300.0, gt=0, description="s to wait for the first worker before giving up"
    )

    @field_validator("memory", "max_memory")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            size_bytes(v)
        return v

    @field_validator("walltime", "drain_before", "stagger")
    @classmethod
    def _hms(cls, v: str) -> str:
        seconds(v)
        return v

    @property
    def worker_memory(self) -> int:
        """Bytes each Dask worker process gets."""
        return size_bytes(self.memory) // self.processes

    @property
    def max_worker_memory(self) -> int:
        return size_bytes(self.max_memory or self.memory) // self.processes

    def lifetime(self) -> tuple[int, int]:
        """(lifetime, stagger) in s for the workers: walltime minus the drain margin (but at
        least half the walltime), so they leave before the scheduler kills them."""
        wall = seconds(self.walltime)
        life = max(wall // 2, wall - seconds(self.drain_before))
        return life, min(seconds(self.stagger), life // 4)


# ---------------------------------------------------------------- checks against this host


def _run(argv: list[str], timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HpcprocError(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise HpcprocError(f"{' '.join(argv)}: {why[-1] if why else f'exit {done.returncode}'}")
    return done.stdout


COMMANDS = {"slurm": ("sinfo", "sbatch", "squeue", "scancel"), "sge": ("qconf", "qsub", "qstat")}


def queues(kind: str) -> list[str]:
    """The queues (partitions) the scheduler knows."""
    if kind == "slurm":
        return sorted({q.strip().rstrip("*") for q in _run(["sinfo", "-h", "-o", "%P"]).split()})
    return sorted(q.strip() for q in _run(["qconf", "-sql"]).split())


def check(kind: Literal["slurm", "sge"], profile: str, spec: BatchSpec) -> None:
    """InputError (one line) if this host cannot run the profile's workers as asked."""
    missing = [c for c in COMMANDS[kind] if shutil.which(c) is None]
    if missing:
        raise InputError(
            f"cluster profile {profile!r} needs {'Slurm' if kind == 'slurm' else 'Grid Engine'}"
            f"'s {', '.join(missing)} on the PATH of this host"
        )
    if spec.queue is not None:
        try:
            known = queues(kind)
        except HpcprocError as exc:
            raise InputError(f"cluster profile {profile!r}: no queue list: {exc}") from None
        if spec.queue not in known:
            word = "partition" if kind == "slurm" else "queue"
            raise InputError(
                f"cluster profile {profile!r}: queue {spec.queue!r} is not a {word} of this "
                f"{'Slurm' if kind == 'slurm' else 'Grid Engine'} (known: {', '.join(known)})"
            )
        limit = queue_walltime(kind, spec.queue)
        if limit is not None and seconds(spec.walltime) > limit:
            raise InputError(
                f"cluster profile {profile!r}: walltime {spec.walltime} is longer than queue "
                f"{spec.queue!r} allows ({hms(limit)}): its jobs would wait for ever"
            )
        node = queue_memory(kind, spec.queue)
        asked = size_bytes(spec.max_memory or spec.memory)
        if node is not None and asked > node:
            which = "max_memory" if spec.max_memory else "memory"
            raise InputError(
                f"cluster profile {profile!r}: batch jobs of up to {spec.max_memory or spec.memory}"
                f" (batch.{which}) do not fit the largest node of queue {spec.queue!r} "
                f"({node / 2**30:.1f} GiB): they could never start"
            )
    if spec.interface is not None:
        check_interface(profile, spec.interface)


def slurm_duration(text: str) -> int | None:
    """Seconds in Slurm's time format ([days-]hours:minutes:seconds, minutes:seconds,
    minutes, days-hours[:minutes]); None for "infinite" or "UNLIMITED"."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        parts += [0] * (3 - len(parts))
        h, m, sec = parts
    elif len(parts) == 3:
        h, m, sec = parts
    else:  # minutes[:seconds]
        h, m, sec = 0, parts[0], parts[1] if len(parts) > 1 else 0
    return int(days or 0) * 86400 + h * 3600 + m * 60 + sec


def queue_walltime(kind: str, queue: str) -> int | None:
    """The longest run the queue allows, in s (None: no limit, or none could be read)."""
    try:
        if kind == "slurm":
            return slurm_duration(_run(["sinfo", "-h", "-p", queue, "-o", "%l"]).split()[0])
        for line in _run(["qconf", "-sq", queue]).splitlines():
            key, _, value = line.partition(" ")
            if key == "h_rt":
                value = value.strip()
                if value.upper() == "INFINITY":
                    return None
                return seconds(value) if ":" in value else int(value)
    except (HpcprocError, ValueError, IndexError):
        return None
    return None


_SGE_SIZE = re.compile(r"^([\d.]+)([KMGT]?)$")


def queue_memory(kind: str, queue: str) -> int | None:
    """The memory of the queue's largest node, in bytes (None if it could not be read)."""
    try:
        if kind == "slurm":  # one line per node, in MiB ("23593", or "23593+" for a range)
            lines = _run(["sinfo", "-h", "-N", "-p", queue, "-o", "%m"]).split()
            return max(int(v.rstrip("+")) for v in lines) * 2**20 if lines else None
        # qhost -q: a line per host (MEMTOT like 23.5G), then its queue instances, indented
        best, host_mem = None, None
        for line in _run(["qhost", "-q"]).splitlines():
            words = line.split()
            if not words or line.startswith("-"):
                continue
            if not line.startswith(" "):
                m = _SGE_SIZE.match(words[7]) if len(words) > 7 else None
                host_mem = (
                    int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2) or "_")) if m else None
                )
            elif words[0] == queue and host_mem is not None:
                best = max(best or 0, host_mem)
        return best
    except (HpcprocError, ValueError, IndexError):
        return None


def check_interface(profile: str, name: str) -> None:
    import psutil

    found = psutil.net_if_addrs()
    if name not in found:
        raise InputError(
            f"cluster profile {profile!r}: network interface {name!r} does not exist on this "
            f"host (it has: {', '.join(sorted(found))})"
        )
    import socket

    if not any(a.family == socket.AF_INET for a in found[name]):
        raise InputError(
            f"cluster profile {profile!r}: network interface {name!r} has no IPv4 address"
        )


# ---------------------------------------------------------------- the cluster


def make_cluster(kind: str, name: str, spec: BatchSpec, dashboard_address: str) -> Any:
    """A dask-jobqueue cluster for the profile, scaled adaptively within its range."""
    from dask_jobqueue import SGECluster, SLURMCluster

    life, stagger = spec.lifetime()
    options: dict[str, Any] = dict(
        queue=spec.queue,
        cores=spec.cores,
        memory=spec.memory,
        processes=spec.processes,
        walltime=spec.walltime,
        job_extra_directives=list(spec.job_directives),
        job_script_prologue=list(spec.setup),
        interface=spec.interface,
        local_directory=spec.local_directory,
        # Never the current directory (the default of both schedulers): it may not be writable
        # on the node, and it fills up.
        log_directory=spec.log_directory or str(home() / "batch-logs"),
        job_name=f"hpcproc-{name}",
        worker_extra_args=["--lifetime", f"{life}s", "--lifetime-stagger", f"{stagger}s"],
        scheduler_options={"dashboard_address": dashboard_address},
    )
    if kind == "slurm":
        cluster = SLURMCluster(account=spec.account, **options)
    else:
        cluster = SGECluster(project=spec.account, **options)
    cluster.adapt(minimum_jobs=spec.adaptive.minimum, maximum_jobs=spec.adaptive.maximum)
    return cluster


def batch_jobs(cluster: Any) -> dict[str, str]:
    """Dask worker name prefix -> batch job id, of the jobs the cluster has started."""
    out = {}
    for name, job in list(getattr(cluster, "workers", {}).items()):
        job_id = getattr(job, "job_id", None)
        if job_id:
            out[str(name)] = str(job_id)
    return out


@dataclass(frozen=True)
class JobState:
    """How the scheduler says a batch job stands or ended."""

    job_id: str
    state: str  # RUNNING, COMPLETED, CANCELLED, TIMEOUT, NODE_FAIL, FAILED, ... (Slurm's words)
    exit_code: str = ""
    host: str = ""
    reason: str = ""

    def describe(self) -> str:
        said = (
            self.reason,
            f"exit {self.exit_code}" if self.exit_code else "",
            f"on {self.host}" if self.host else "",
        )
        extra = ", ".join(x for x in said if x)
        return f"batch job {self.job_id} {self.state}" + (f" ({extra})" if extra else "")


def job_states(kind: str, job_ids: Iterable[str]) -> dict[str, JobState]:
    """The scheduler's word on each job (those it knows)."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    if kind == "slurm":
        return _sacct(ids)
    return {j: s for j in ids if (s := _qacct(j)) is not None}


def _sacct(ids: list[str]) -> dict[str, JobState]:
    # -c reads the job completion log (no accounting database is needed for final states).
    out: dict[str, JobState] = {}
    for source in (["sacct", "-c"], ["sacct"]):
        try:
            fields = "JobID,State,ExitCode,NodeList"
            text = _run([*source, "-n", "-P", "-j", ",".join(ids), "-o", fields])
        except HpcprocError:
            continue
        for line in text.splitlines():
            parts = line.split("|")
            if len(parts) >= 4 and parts[0] in ids:
                state, _, by = parts[1].partition(" by ")
                out[parts[0]] = JobState(parts[0], state.strip(), parts[2], parts[3],
                                         f"by uid {by.strip()}" if by else "")  # fmt: skip
        if out:
            break
    for job_id in set(ids) - set(out):  # still known to the controller (pending, running)
        try:
            text = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%R|%N"])
        except HpcprocError:
            continue
        parts = text.strip().split("|")
        if len(parts) == 3:
            out[job_id] = JobState(job_id, parts[0], "", parts[2], parts[1])
    return out


def _qacct(job_id: str) -> JobState | None:
    try:
        text = _run(["qacct", "-j", job_id])
    except HpcprocError:
        try:
            text = _run(["qstat", "-j", job_id])
        except HpcprocError:
            return None
        return JobState(job_id, "RUNNING" if "usage" in text else "PENDING")
    fields = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            fields[key] = value.strip()
    failed, code = fields.get("failed", "0"), fields.get("exit_status", "").split(" ")[0]
    # Grid Engine's "failed" codes: 37 = a limit (h_rt: the walltime) enforced by qmaster,
    # 100 = killed after the job started (qdel); in Slurm's words TIMEOUT and CANCELLED.
    if failed.startswith("37") or "h_rt" in failed:
        state = "TIMEOUT"
    elif failed.startswith("100"):
        state = "CANCELLED"
    elif failed.startswith("0"):
        state = "COMPLETED" if code == "0" else "FAILED"
    else:
        state = "NODE_FAIL" if "execd" in failed or "host" in failed else "FAILED"
    reason = "" if failed.startswith("0") else f"failed {failed}"
    return JobState(job_id, state, code, fields.get("hostname", ""), reason)


def wait_for_first_worker(
    client: Any, kind: str, cluster: Any, timeout: float, stop: Stop | None = None
) -> float:
    """Seconds until a worker joined; HpcprocError saying why none did (e.g. still pending),
    or Stopped as soon as ``stop`` is requested (batch jobs can wait long in a queue)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            client.wait_for_workers(1, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return time.monotonic() - started
        except TimeoutError:
            pass
        if stop is not None and stop.reason is not None:
            raise Stopped(stop.reason)
        if time.monotonic() >= deadline:
            break
    states = job_states(kind, batch_jobs(cluster).values())
    said = "; ".join(s.describe() for s in states.values()) or "no batch job was submitted"
    raise HpcprocError(f"no Dask worker joined within {timeout:g} s: {said}")
