"""Jobs the web service starts: recorded at once, run in the background on a Dask cluster.

A :class:`JobRunner` (one per app, made on first use by :func:`runner`) records a prepared job
in the LIMS (:func:`hpcproc.jobs.record_plan`, so the job id can be answered at once) and runs
it in a small thread pool (:func:`hpcproc.jobs.execute_plan`), as the launcher does. The Dask
client is ``services.extra["client"]`` when something put one there (the tests do), else one
opened lazily from the cluster profile of the settings and closed with the runner.

A job that cannot start (the cluster cannot be reached, the service stops before its turn)
has its steps marked failed with the reason: no step is left queued for ever.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from distributed import Client

from hpcproc.dispatch.plan import JobPlan
from hpcproc.jobs import JobOutcome, RecordedJob, execute_plan, record_plan
from hpcproc.lims import Lims
from hpcproc.status import Status

log = logging.getLogger(__name__)

__all__ = ["JobRunner", "runner"]


class JobRunner:
    """Record jobs and run them in the background, ``max_jobs`` at a time."""

    def __init__(
        self,
        lims: Lims,
        *,
        cluster: str = "local",
        max_jobs: int = 2,
        client: Callable[[], Client | None] | None = None,
    ) -> None:
        self.lims = lims
        self.cluster = cluster
        self._given = client  # returns an injected client, or None: open one from the profile
        self._own: Client | None = None
        self._stack = ExitStack()
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, max_jobs), thread_name_prefix="hpcproc-web-job")
        self._futures: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def client(self) -> Client:
        """The Dask client jobs run on (opened on first use when none was given)."""
        given = self._given() if self._given is not None else None
        if given is not None:
            return given
        with self._client_lock:
            if self._own is None:
                from hpcproc.dispatch.clusters import load_profile, open_client

                profile = load_profile(self.cluster)
                self._own = self._stack.enter_context(open_client(profile))
            return self._own

    def submit(
        self,
        plan: JobPlan,
        *,
        parent_job: int | None = None,
        display_name: str | None = None,
    ) -> RecordedJob:
        """Record the job (all steps queued) and start it in the background."""
        if self._closed:
            raise RuntimeError("the job runner is closed")
        job = record_plan(
            plan, lims=self.lims, automatic=False, parent_job=parent_job, display_name=display_name
        )
        return self.start(plan, job)

    def start(self, plan: JobPlan, job: RecordedJob) -> RecordedJob:
        """Run a job already recorded (e.g. one just approved) in the background."""
        if self._closed:
            raise RuntimeError("the job runner is closed")
        future = self._pool.submit(self._run, plan, job)
        with self._lock:
            self._futures[job.job_id] = future
        future.add_done_callback(lambda _f, jid=job.job_id: self._forget(jid))
        return job

    def _forget(self, job_id: int) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def _fail(self, job: RecordedJob, why: str) -> None:
        for pid in job.programs.values():
            try:
                self.lims.set_status(pid, Status.FAILED, why)
            except Exception:  # the LIMS is down: nothing more to do here
                log.exception("job %s: could not mark step %s failed", job.job_id, pid)

    def _run(self, plan: JobPlan, job: RecordedJob) -> JobOutcome | None:
        if self._closed:
            self._fail(job, "the web service stopped before the job started")
            return None
        try:
            client = self.client()
        except Exception as exc:
            self._fail(job, f"no Dask cluster to run on: {exc}")
            log.error("job %s: no Dask cluster to run on: %s", job.job_id, exc)
            return None
        try:
            return execute_plan(plan, job, lims=self.lims, client=client, cluster=self.cluster)
        except Exception:  # execute_plan has marked the open steps failed
            log.exception("job %s aborted", job.job_id)
            return None

    def running(self) -> list[int]:
        """Ids of the jobs queued or running in this runner."""
        with self._lock:
            return sorted(self._futures)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every job submitted so far; True when all are done."""
        with self._lock:
            futures = list(self._futures.values())
        _done, pending = concurrent.futures.wait(futures, timeout=timeout)
        return not pending

    def close(self, timeout: float = 10.0) -> None:
        """Stop: jobs not started are marked failed, running ones get ``timeout`` s to end."""
        self._closed = True
        self.wait(timeout)
        self._pool.shutdown(wait=False, cancel_futures=False)
        self._stack.close()


def runner(services: Any) -> JobRunner:
    """The app's job runner (``services.extra["runner"]``), made on first use."""
    with _make_lock:
        found = services.extra.get("runner")
        if found is None:
            settings = services.settings
            found = JobRunner(
                services.lims,
                cluster=settings.cluster,
                max_jobs=settings.max_jobs,
                client=lambda: services.extra.get("client"),
            )
            services.extra["runner"] = found
        return found


_make_lock = threading.Lock()
