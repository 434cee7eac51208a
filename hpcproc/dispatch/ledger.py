"""Which batch jobs a job's Dask workers ran in, and how those that left ended.

On a dask-jobqueue cluster every worker is a batch job. While a job runs, a :class:`BatchLedger`
looks once a second at the cluster's jobs and the scheduler's workers: it learns each batch
job's id and host, and notices workers that left (drained before their walltime, cancelled with
scancel/qdel, killed at the walltime, lost with their node). For each step it tells the batch
jobs and hosts that were there while the step ran (recorded as the step's environment) and
the jobs that left meanwhile, with the scheduler's word on how they ended (``sacct``/``qacct``)
— the reason a step whose worker vanished gets in the LIMS, instead of a bare "worker died".

On any other cluster the ledger is inert (``active`` is False) and costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from hpcproc.dispatch.batch import JobState, batch_jobs, job_states

log = logging.getLogger(__name__)

POLL = 1.0  # s between looks at the cluster
SETTLE = 2.0  # s the scheduler may need to account for a job that just ended


def batch_kind(cluster: Any) -> str | None:
    """ "slurm" or "sge" for a dask-jobqueue cluster, else None."""
    name = type(cluster).__name__
    return {"SLURMCluster": "slurm", "SGECluster": "sge"}.get(name)


class BatchLedger:
    def __init__(self, client: Any) -> None:
        self.cluster = getattr(client, "cluster", None)
        self.kind = batch_kind(self.cluster)
        self.client = client
        self.job_ids: dict[str, str] = {}  # batch job name (dask-jobqueue's) -> id
        self.hosts: dict[str, str] = {}  # job id -> host
        self.seen: dict[str, tuple[float, float | None]] = {}  # job id -> (first seen, left)
        self._alive: set[str] = set()
        self._states: dict[str, JobState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.kind is not None

    def start(self) -> BatchLedger:
        if self.active:
            self.poll()
            self._thread = threading.Thread(target=self._run, name="hpcproc-ledger", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self.poll()
            except Exception as exc:  # never let bookkeeping break a job
                log.debug("batch ledger: %s", exc)

    def poll(self) -> None:
        """Look at the cluster's batch jobs and connected workers once."""
        if not self.active:
            return
        jobs = batch_jobs(self.cluster)
        info = self.client.scheduler_info(n_workers=-1)["workers"].values()
        now = time.monotonic()
        with self._lock:
            self.job_ids.update(jobs)
            alive = set()
            for w in info:
                job = self._job_of(str(w.get("name", "")))
                if job is not None:
                    alive.add(job)
                    self.hosts.setdefault(job, str(w.get("host", "")))
                    first, _ = self.seen.get(job, (now, None))
                    self.seen[job] = (first, None)
            for job in self._alive - alive:
                first, _ = self.seen.get(job, (now, None))
                self.seen[job] = (first, now)
            self._alive = alive

    def _job_of(self, worker: str) -> str | None:
        """The batch job id of a worker (named ``<job name>`` or ``<job name>-<i>``)."""
        for candidate in (worker, worker.rsplit("-", 1)[0]):
            if candidate in self.job_ids:
                return self.job_ids[candidate]
        return None

    def during(self, since: float) -> dict[str, Any]:
        """What to record as a step's environment: the batch jobs and hosts that were up at
        some time after ``since`` (a ``time.monotonic()``)."""
        if not self.active:
            return {}
        self.poll()
        with self._lock:
            ids = sorted(j for j, (_, left) in self.seen.items() if left is None or left >= since)
            hosts = sorted({self.hosts[j] for j in ids if self.hosts.get(j)})
        queue = getattr(self.cluster, "_job_kwargs", {}).get("queue")
        return {
            "batch_system": self.kind,
            "queue": queue,
            "batch_jobs": ",".join(ids),
            "hosts": ",".join(hosts),
        }

    def departures(self, since: float) -> list[JobState]:
        """Batch jobs whose workers left after ``since``, with the scheduler's word on them."""
        if not self.active:
            return []
        self.poll()
        with self._lock:
            gone = [(j, left) for j, (_, left) in self.seen.items() if left and left >= since]
        if not gone:
            return []
        wait = SETTLE - (time.monotonic() - max(left for _, left in gone))
        if wait > 0:
            time.sleep(wait)
        unknown = [j for j, _ in gone if j not in self._states]
        self._states.update(job_states(str(self.kind), unknown))
        return [self._states.get(j, JobState(j, "GONE", reason="no word from the scheduler"))
                for j, _ in gone]  # fmt: skip
