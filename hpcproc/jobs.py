"""One job = one recipe run on one scan: plan it, record it in the LIMS, dispatch it, file it.

This is the only place where the LIMS, the dispatcher and the processed file meet; the CLI, the
launcher and the web service all start jobs through :func:`run_job`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client

from hpcproc import __version__
from hpcproc.cancel import watch_cancel
from hpcproc.dispatch.plan import JobPlan, make_plan
from hpcproc.dispatch.pools import ClientPool
from hpcproc.dispatch.runner import Dispatcher
from hpcproc.dispatch.sizing import sized_steps
from hpcproc.dispatch.stop import Stop, stop_file
from hpcproc.errors import HpcprocError, ScanError
from hpcproc.formats import read_scan_info
from hpcproc.job_keys import APPROVAL, AWAITING, REPROCESS_OF
from hpcproc.lims import Lims
from hpcproc.nexus.processed import ProcessedFile
from hpcproc.notify import JobNotice
from hpcproc.progress import Progress
from hpcproc.recipes import Recipe
from hpcproc.status import Status
from hpcproc.steps.base import StepResult

ProgressFn = Callable[[str, int, int], None]  # (step id, points done, points in all)
StatusFn = Callable[[str, Status, str], None]  # (step id, new status, message)


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    recipe: str
    scan: Path
    processed: Path
    steps: dict[str, Status]
    cancelled: str | None = None  # "cancelled by <user> at <time>[: <reason>]" if it was

    @property
    def status(self) -> Status:
        if any(s == Status.FAILED for s in self.steps.values()):
            return Status.FAILED
        return Status.SUCCESS


def processed_path(scan_path: Path, recipe: str, job_id: int) -> Path:
    """Processed files go beside the scan, in `processed/`, one per job."""
    # A negative id is the LIMS outbox's local id: the database was down when the job began.
    tag = f"job{job_id}" if job_id >= 0 else f"job-local{-job_id}"
    return scan_path.parent / "processed" / f"{scan_path.stem}-{recipe}-{tag}.nxs"


class _LimsRecorder:
    """RunObserver that records statuses and live progress in the LIMS, and forwards progress."""

    LIMS_EVERY = 1.0  # s between live-status updates of one step in the LIMS

    def __init__(
        self,
        lims: Lims,
        programs: Mapping[str, int],
        progress: ProgressFn | None,
        on_status: StatusFn | None = None,
        processed: Path | None = None,
        pool: ClientPool | None = None,
        env: Mapping[str, Any] | None = None,
    ):
        self.lims = lims
        self.programs = programs
        self.progress = progress
        self.on_status = on_status
        self.processed = processed
        self.pool = pool
        self.env = dict(env or {})
        self._last: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def step_status(self, step_id: str, status: Status, message: str = "") -> None:
        pid = self.programs[step_id]
        if status is Status.RUNNING:
            self._started[step_id] = time.monotonic()
        if status in (Status.SUCCESS, Status.FAILED):
            message = self._batch_record(step_id, pid, status, message)
            if self.processed is not None:
                # The processed file is filed before the final status: whoever sees a step end
                # (the web page, a test) finds its result already attached.
                self.lims.add_attachment(pid, self.processed, "Result", 1)
        # With a message, the LIMS also files it as an ERROR (failed) or INFO message row.
        self.lims.set_status(pid, status, message or None)
        if self.on_status is not None:
            self.on_status(step_id, status, message)

    def _batch_record(self, step_id: str, pid: int, status: Status, message: str) -> str:
        """Where the step ran, if not simply on the job's client: its own pool's profile, and
        on a batch cluster the batch jobs and hosts it used; and how the workers that left
        meanwhile ended (a failed step's message says so first)."""
        if self.pool is None:
            return message
        where, ledger = self.pool.where(step_id)
        since = self._started.get(step_id, 0.0)
        batch = ledger.during(since) if ledger is not None else {}
        if where or batch:
            self.lims.set_environment(pid, {**self.env, **where, **batch})
        gone = ledger.departures(since) if ledger is not None else []
        for state in gone:
            self.lims.add_message(pid, "INFO", f"a worker left during the step: {state.describe()}")
        if status is Status.FAILED and gone:
            # First: the LIMS's processingMessage keeps 255 characters, and this is the why.
            message = f"workers lost: {'; '.join(s.describe() for s in gone)}; {message}"
        return message

    def step_result(self, step_id: str, result: StepResult) -> None:
        pid = self.programs[step_id]
        for key, value in result.values.items():
            self.lims.add_message(pid, "INFO", f"{key} = {value}")
        for severity, text in result.messages:
            self.lims.add_message(pid, severity, text)
        for path, kind in result.attachments:
            self.lims.add_attachment(pid, path, kind, 2)

    def step_progress(self, step_id: str, progress: Progress) -> None:
        if self.progress is not None:
            self.progress(step_id, progress.done, progress.total)
        now = time.monotonic()
        last = progress.done >= progress.total  # the final count is always recorded
        if last or now - self._last.get(step_id, 0.0) >= self.LIMS_EVERY:
            self._last[step_id] = now
            self.lims.set_progress(self.programs[step_id], progress.text())


def _provenance(
    plan: JobPlan,
    job_id: int,
    dc_id: int,
    programs: Mapping[str, int],
    parent_job: int | None = None,
) -> dict:
    recipe, scan = plan.recipe, plan.scan
    link = {} if parent_job is None else {"reprocess_of": parent_job}
    return {
        s.id: {
            "program": "hpcproc",
            "version": __version__,
            "step": s.id,
            "uses": s.spec.uses,
            "recipe": recipe.name,
            "recipe_version": recipe.version,
            "recipe_sha256": recipe.sha256,
            "recipe_file": str(recipe.source) if recipe.source else None,
            "recipe_parameters": plan.parameters,
            "input_file": str(scan.path),
            "input_format": scan.format,
            "input_layout": scan.layout,
            "input_warnings": list(scan.warnings),
            "input_datasets": sorted(
                {
                    v
                    for k in (*s.cls.inputs, *s.cls.roles)
                    if isinstance(v := getattr(s.params, k, None), str) and v.startswith("/")
                }
            ),
            "scan_id": scan.scan_id,
            "visit": scan.visit,
            "needs": list(s.spec.needs),
            "lims": {
                "data_collection_id": dc_id,
                "processing_job_id": job_id,
                "auto_proc_program_id": programs[s.id],
                **link,
            },
        }
        for s in plan.steps
    }


def prepare(
    recipe: Recipe,
    scan_path: Path,
    overrides: Mapping[str, Any],
    wait: float = 0.0,
    *,
    layout: str | None = None,
    visit: str | None = None,
    beamline: str | None = None,
) -> JobPlan:
    """Read the scan and check everything the job needs; no side effects (InputError if bad).
    ``wait`` seconds for a scan file that is not there (or not readable) yet: a detector's
    writer may start after the processing was asked for. ``layout``, ``visit``, ``beamline``:
    what a person said of the file (see :func:`hpcproc.formats.read_scan_info`)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            scan = read_scan_info(Path(scan_path), layout, visit=visit, beamline=beamline)
            break
        except ScanError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    return make_plan(recipe, scan, overrides)


def run_job(
    recipe: Recipe, scan_path: Path, overrides: Mapping[str, Any], **options: Any
) -> JobOutcome:
    """Run ``recipe`` on the scan (``options`` as for :func:`run_plan`); InputError before
    anything is recorded if the input is bad."""
    return run_plan(prepare(recipe, scan_path, overrides), **options)


@dataclass(frozen=True)
class RecordedJob:
    """A job recorded in the LIMS (ids may be the outbox's local ids), not yet run."""

    job_id: int
    dc_id: int
    programs: dict[str, int]  # step id -> AutoProcProgram id
    parent_job: int | None = None


def record_plan(
    plan: JobPlan,
    *,
    lims: Lims,
    automatic: bool = False,
    parent_job: int | None = None,
    display_name: str | None = None,
    awaiting_approval: bool = False,
) -> RecordedJob:
    """Record a prepared job in the LIMS: its data collection, job, parameters and steps
    (all queued). The launcher records before it acknowledges the message that asked.
    ``awaiting_approval``: the job is to wait for staff (:mod:`hpcproc.approval`)."""
    recipe, scan = plan.recipe, plan.scan
    dc_id = lims.record_scan(scan)
    parameters = dict(plan.parameters)
    comments = f"recipe sha256 {recipe.sha256}"
    if awaiting_approval:
        parameters[APPROVAL] = AWAITING
    if parent_job is not None:
        parameters[REPROCESS_OF] = int(parent_job)
        comments = f"reprocess of job {int(parent_job)}; {comments}"
    job_id = lims.create_job(
        dc_id,
        recipe.name,
        parameters,
        display_name=display_name or f"{recipe.name} v{recipe.version}",
        comments=comments,
        automatic=automatic,
    )
    programs = {s.id: lims.create_program(job_id, s.id, s.spec.uses) for s in plan.steps}
    return RecordedJob(job_id, dc_id, programs, parent_job)


def execute_plan(
    plan: JobPlan,
    job: RecordedJob,
    *,
    lims: Lims,
    client: Client,
    cluster: str = "local",
    progress: ProgressFn | None = None,
    on_status: StatusFn | None = None,
) -> JobOutcome:
    """Run a recorded job on ``client``, recording its progress, and file its results.
    ``progress`` and ``on_status`` hear of each step's progress and status changes."""
    recipe, scan, programs = plan.recipe, plan.scan, job.programs
    env = {"cluster": cluster, "dask_dashboard": client.dashboard_link}
    for pid in programs.values():
        lims.set_environment(pid, env)
    out_path = processed_path(scan.path, recipe.name, job.job_id)
    pool = ClientPool(client)
    recorder = _LimsRecorder(lims, programs, progress, on_status, out_path, pool, env)
    statuses: dict[str, Status] = {}
    provenance = _provenance(plan, job.job_id, job.dc_id, programs, job.parent_job)
    stop = Stop(stop_file(out_path))  # a cancel recorded in the LIMS, from any process
    try:
        default, profiles = sized_steps(plan, cluster)
        pool = recorder.pool = ClientPool(client, profiles, default, stop=stop)
        with (
            watch_cancel(lims, job.job_id, stop),
            ProcessedFile(out_path, scan, title=f"{recipe.name} on {scan.scan_id}") as out,
        ):
            statuses = Dispatcher(client, recorder, pool, stop).run(plan, out, provenance)
    except BaseException as exc:  # interrupted or the cluster died: never leave a step running
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"job aborted: {exc}"
        for pid in programs.values():
            lims.set_status(pid, Status.FAILED, why)
        raise
    finally:
        stop.close()
        pool.close()  # the job's extra worker pools (and their batch jobs) go with it
    return JobOutcome(job.job_id, recipe.name, scan.path, out_path, statuses, stop.reason)


def run_plan(
    plan: JobPlan,
    *,
    lims: Lims,
    client: Client,
    cluster: str = "local",
    progress: ProgressFn | None = None,
    automatic: bool = False,
    parent_job: int | None = None,
    display_name: str | None = None,
) -> JobOutcome:
    """Record a prepared job in the LIMS, run it on ``client`` and file its results.

    ``parent_job``: the job this one reprocesses; recorded as the parameter :data:`REPROCESS_OF`,
    in the comments and in the processed file's provenance. ``display_name`` replaces the
    default "<recipe> v<version>".
    """
    sized_steps(plan, cluster)  # a step no worker can hold is refused before it is recorded
    job = record_plan(
        plan, lims=lims, automatic=automatic, parent_job=parent_job, display_name=display_name
    )
    return execute_plan(plan, job, lims=lims, client=client, cluster=cluster, progress=progress)


def job_notice(
    lims: Lims,
    plan: JobPlan,
    job_id: int,
    outcome: JobOutcome | None,
    message: str = "",
) -> JobNotice:
    """What to tell people about a job that ended: each step's status and message from the
    LIMS when it can say (the database may be down: then what this process knows)."""
    resolve = getattr(lims, "resolve", None)  # a DurableLims may hold a local id
    db_id = resolve(job_id) if resolve is not None else job_id
    job_id = int(db_id) if db_id is not None else job_id
    steps = {sid: (st.value, "") for sid, st in (outcome.steps if outcome else {}).items()}
    flush = getattr(lims, "flush", None)  # a DurableLims: let the job's last records land
    if flush is not None:
        flush(5.0)
    try:
        record = lims.job(job_id)
        steps = {p.step_id: (p.status.value, p.message or "") for p in record.steps}
    except HpcprocError:
        pass
    status = outcome.status if outcome is not None and not message else Status.FAILED
    if message and not steps:
        steps = {"job": (Status.FAILED.value, message)}
    scan = plan.scan
    cancelled = outcome is not None and outcome.cancelled is not None
    return JobNotice(
        job_id=job_id,
        recipe=plan.recipe.name,
        status="cancelled" if cancelled else status.value,
        scan_file=scan.path,
        scan_id=scan.scan_id,
        beamline=scan.beamline,
        visit=scan.visit,
        steps=steps,
        processed_file=outcome.processed if outcome is not None else None,
    )
