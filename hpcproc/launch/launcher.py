"""Scan events -> recorded, processed jobs, with no one typing a command.

For a scan that starts (or ends, when its start was missed), the launcher:

1. remembers the scan (:mod:`.state`), so later events without a file name find it;
2. waits for the scan file (``file_wait`` s at most) and reads its NeXus metadata;
3. chooses the recipes: those the message asks for, plus every recipe whose ``applies_to`` has
   a rule (beamlines or NeXus structure) that the scan matches — a recipe without any rule is
   never a default, it would run on every scan;
4. for each (scan file, recipe) not seen before: claims it, records the job in the LIMS
   (data collection, job with parameters, steps queued; through the durable outbox, so this
   never waits for the database) and hands it to a pool of job threads.

Only then does the source acknowledge the message: a crash before that means the broker
delivers it again, and the claims make that harmless. A job thread runs the live steps while the
scan is written and the downstream steps once it has ended (both as the dispatcher does for
``hpcproc run``), publishing progress and results as feedback and notifying when the job ends.

A message that can never be processed raises MessageError (the source dead-letters it): not JSON,
unknown format, no file, a file that never appeared, a recipe asked for that does not exist or
whose parameters are wrong. Jobs the same message could start are started all the same.

Restart: jobs a stopped launcher left unfinished (claimed, recorded, running) are run again as
new jobs by :meth:`Launcher.resume`; steps of the old one still open are marked failed with the
reason. A job cancelled meanwhile (:mod:`hpcproc.cancel`) is not run again: its open steps are
closed with the cancel's text.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from distributed import Client

from hpcproc.cancel import cancel_of, close_open_steps
from hpcproc.dispatch.plan import JobPlan, make_plan
from hpcproc.dispatch.sizing import sized_steps
from hpcproc.errors import HpcprocError, InputError, RecipeError, ScanError
from hpcproc.formats import read_scan_info
from hpcproc.jobs import JobOutcome, RecordedJob, execute_plan, job_notice, record_plan
from hpcproc.launch.events import MessageError, RecipeRequest, ScanEvent, ScanState
from hpcproc.launch.feedback import PROGRESS_EVERY, Feedback, LogFeedback
from hpcproc.launch.messages import MessageParser
from hpcproc.launch.state import AWAITING_APPROVAL, UNFINISHED, LauncherState, ScanRow
from hpcproc.notify import JobNotice, Notifiers, notifiers_from_spec
from hpcproc.recipes import Recipe
from hpcproc.recipes.loader import list_recipes
from hpcproc.scaninfo import ScanInfo
from hpcproc.status import Status

log = logging.getLogger(__name__)


def has_rule(recipe: Recipe) -> bool:
    """True when the recipe says which scans it is for (so it may be chosen by default)."""
    rule = recipe.applies_to
    nexus = rule.nexus
    return bool(rule.beamlines or nexus.requires or nexus.classes or nexus.scan_axes is not None)


def shipped_recipes() -> list[Recipe]:
    """Every recipe on the recipe path; a broken one is logged and left out."""
    errors: list[RecipeError] = []
    recipes = list_recipes(errors=errors)
    for error in errors:
        log.error("recipe left out: %s", error)
    return recipes


class Launcher:
    """The sink of every event source (see the module doc)."""

    def __init__(
        self,
        *,
        lims: Any,
        client: Client,
        state: LauncherState,
        recipes: Callable[[], list[Recipe]] = shipped_recipes,
        feedback: Feedback | None = None,
        notifiers: Notifiers | None = None,
        cluster: str = "local",
        file_wait: float = 60.0,
        max_jobs: int = 4,
    ) -> None:
        self.lims = lims
        self.client = client
        self.state = state
        self.recipes = recipes
        self.feedback = feedback or LogFeedback()
        self.notifiers = notifiers if notifiers is not None else notifiers_from_spec(None)
        self.cluster = cluster
        self.file_wait = file_wait
        self.parser = MessageParser()
        self.messages = 0
        self.last_message: float | None = None
        self._lock = threading.Lock()  # one event at a time: claims and records stay in order
        self._pool = ThreadPoolExecutor(max(1, max_jobs), thread_name_prefix="hpcproc-job")
        self._futures: set[Future[Any]] = set()
        self._futures_lock = threading.Lock()

    # ------------------------------------------------------------ the sink

    def handle_message(self, body: bytes, headers: Mapping[str, Any]) -> None:
        self.messages += 1
        self.last_message = time.time()
        for event in self.parser.parse(body, headers):
            self.handle_event(event)

    def handle_event(self, event: ScanEvent) -> list[int]:
        """Record what ``event`` starts; the LIMS ids of the jobs it started (maybe none)."""
        with self._lock:
            scan = self.state.remember(event)
            where = f"{event.source} scan {event.scan_id or event.key}"
            if event.state is ScanState.UPDATED:
                self._scan_feedback(scan, event)
                return []
            if event.state is ScanState.FAILED:
                log.warning("%s failed: %s", where, event.reason or "no reason given")
                self._scan_feedback(scan, event)
                return []  # its jobs end with what was written (the writer's idle timeout)
            if scan.path is None:
                raise MessageError(f"{where}: no scan file named, in this message or before")
            info = self._scan_info(scan.path, where)
            if event.state is ScanState.FINISHED:
                self.lims.record_scan(info)  # end time and run status
            self._scan_feedback(scan, event)
            return self._start_jobs(scan, info, event.recipes, where)

    # ------------------------------------------------------------ choosing and starting

    def _scan_info(self, path: Path, where: str) -> ScanInfo:
        """The scan's metadata, waiting ``file_wait`` s for its writer to create the file."""
        deadline = time.monotonic() + self.file_wait
        while True:
            try:
                return read_scan_info(path)
            except ScanError as exc:
                if time.monotonic() >= deadline:
                    raise MessageError(f"{where}: {exc} (waited {self.file_wait:g} s)") from None
                time.sleep(0.2)

    def select(
        self, info: ScanInfo, requests: tuple[RecipeRequest, ...] = ()
    ) -> tuple[list[tuple[Recipe, dict[str, Any]]], list[str]]:
        """The recipes to run on a scan, with overrides; and the requests that cannot be met."""
        known = {r.name: r for r in self.recipes()}
        chosen: dict[str, tuple[Recipe, dict[str, Any]]] = {}
        problems = []
        for request in requests:
            recipe = known.get(request.name)
            if recipe is None:
                names = ", ".join(sorted(known)) or "none"
                problems.append(f"no recipe named {request.name!r} (known: {names})")
            else:
                chosen[recipe.name] = (recipe, dict(request.parameters))
        for recipe in known.values():
            if recipe.name not in chosen and has_rule(recipe) and recipe.applies(info)[0]:
                chosen[recipe.name] = (recipe, {})
        return list(chosen.values()), problems

    def _start_jobs(
        self, scan: ScanRow, info: ScanInfo, requests: tuple[RecipeRequest, ...], where: str
    ) -> list[int]:
        chosen, problems = self.select(info, requests)
        if not chosen and not problems:
            log.info("%s: no recipe applies", where)
        started = []
        for recipe, overrides in chosen:
            if not self.state.claim(info.path, recipe.name, scan.key, overrides):
                continue  # started before: a redelivered message, or start and end both seen
            try:
                plan = make_plan(recipe, info, overrides)
                sized_steps(plan, self.cluster)  # refused now, not killed in a queue later
            except InputError as exc:
                self.state.update_job(info.path, recipe.name, "rejected", message=str(exc))
                problems.append(f"recipe {recipe.name}: {exc}")
                continue
            started.append(self._record_and_submit(scan.key, plan))
        if problems:
            raise MessageError(f"{where}: {'; '.join(problems)}")
        return started

    def _record_and_submit(self, scan_key: str, plan: JobPlan) -> int:
        held = plan.recipe.needs_approval
        job = record_plan(plan, lims=self.lims, automatic=True, awaiting_approval=held)
        if held:
            self._hold(scan_key, plan, job)
            return job.job_id
        self.state.update_job(plan.scan.path, plan.recipe.name, "recorded", job.job_id)
        log.info("%s: job %d (%s) recorded", plan.scan.scan_id, job.job_id, plan.recipe.name)
        future = self._pool.submit(self._run_job, scan_key, plan, job)
        with self._futures_lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return job.job_id

    def _hold(self, scan_key: str, plan: JobPlan, job: RecordedJob) -> None:
        """A job of a recipe that needs approval: recorded, told about, not run (whoever
        approves it runs it, see :mod:`hpcproc.approval`)."""
        scan, name = plan.scan, plan.recipe.name
        self.state.update_job(scan.path, name, AWAITING_APPROVAL, job.job_id)
        log.info("%s: job %d (%s) awaits approval", scan.scan_id, job.job_id, name)
        about = self._about(scan_key, plan, job)
        self.feedback.publish("job", {**about, "status": AWAITING_APPROVAL})
        queued = {sid: (Status.QUEUED.value, "") for sid in job.programs}
        self.notifiers.send(
            JobNotice(about["job_id"], name, AWAITING_APPROVAL, scan.path, scan.scan_id,
                      scan.beamline, scan.visit, queued)
        )  # fmt: skip

    def _forget(self, future: Future[Any]) -> None:
        with self._futures_lock:
            self._futures.discard(future)

    # ------------------------------------------------------------ running a job

    def _run_job(self, scan_key: str, plan: JobPlan, job: RecordedJob) -> JobOutcome | None:
        path, name = plan.scan.path, plan.recipe.name
        self.state.update_job(path, name, "running")
        base = self._about(scan_key, plan, job)
        last: dict[str, float] = {}

        def progress(step: str, done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last.get(step, 0.0) >= PROGRESS_EVERY:
                last[step] = now
                self.feedback.publish(
                    "progress", {**base, "step": step, "done": done, "total": total}
                )

        def on_status(step: str, status: Status, message: str) -> None:
            if status.final:
                self.feedback.publish(
                    "step", {**base, "step": step, "status": status.value, "message": message}
                )

        outcome = None
        try:
            outcome = execute_plan(
                plan,
                job,
                lims=self.lims,
                client=self.client,
                cluster=self.cluster,
                progress=progress,
                on_status=on_status,
            )
            status, message = outcome.status, ""
        except Exception as exc:  # the job could not run at all (cluster gone, file unreadable)
            log.exception("%s: job %s (%s) aborted", plan.scan.scan_id, job.job_id, name)
            status, message = Status.FAILED, " ".join(str(exc).split())
        self.state.update_job(
            path, name, "done" if status is Status.SUCCESS else "failed", message=message or None
        )
        processed = str(outcome.processed) if outcome else None
        self.feedback.publish(
            "job",
            {
                **base,
                "status": status.value,
                "message": message,
                "cancelled": outcome.cancelled if outcome else None,
                "processed_file": processed,
                "steps": {sid: st.value for sid, st in (outcome.steps if outcome else {}).items()},
            },
        )
        self.notifiers.send(job_notice(self.lims, plan, job.job_id, outcome, message))
        return outcome

    def _about(self, scan_key: str, plan: JobPlan, job: RecordedJob) -> dict[str, Any]:
        scan = plan.scan
        return {
            "scan_key": scan_key,
            "scan_id": scan.scan_id,
            "scan_file": str(scan.path),
            "beamline": scan.beamline,
            "visit": scan.visit,
            "job_id": self._db_id(job.job_id),
            "recipe": plan.recipe.name,
        }

    def _db_id(self, job_id: int) -> int:
        resolve = getattr(self.lims, "resolve", None)
        found = resolve(job_id) if resolve is not None else job_id
        return int(found) if found is not None else job_id

    def _scan_feedback(self, scan: ScanRow, event: ScanEvent) -> None:
        self.feedback.publish(
            "scan",
            {
                "scan_key": scan.key,
                "scan_id": scan.scan_id,
                "scan_file": str(scan.path) if scan.path else None,
                "beamline": scan.beamline,
                "visit": scan.visit,
                "state": event.state.value,
                "percent": event.percent,
                "reason": event.reason,
            },
        )

    # ------------------------------------------------------------ restart and shutdown

    def resume(self) -> list[int]:
        """Run again, as new jobs, what a stopped launcher left unfinished; the new job ids."""
        started = []
        for row in self.state.jobs(*UNFINISHED):
            if row.job_id is not None:
                cancelled = self._cancelled(row.job_id)
                if cancelled is not None:  # cancelled while no launcher ran it: not run again
                    close_open_steps(self.lims, row.job_id, cancelled)
                    self.state.update_job(row.path, row.recipe, "failed", message=cancelled)
                    continue
                self._close_old(row.job_id)
            recipes = {r.name: r for r in self.recipes()}
            recipe = recipes.get(row.recipe)
            try:
                if recipe is None:
                    raise InputError(f"recipe {row.recipe!r} is gone")
                plan = make_plan(recipe, read_scan_info(row.path), row.overrides)
            except InputError as exc:
                log.error("cannot resume %s on %s: %s", row.recipe, row.path, exc)
                self.state.update_job(row.path, row.recipe, "rejected", message=str(exc))
                continue
            with self._lock:
                started.append(self._record_and_submit(row.scan_key, plan))
        return started

    def _cancelled(self, job_id: int) -> str | None:
        try:
            return cancel_of(self.lims.job(job_id))
        except HpcprocError:
            return None

    def _close_old(self, job_id: int) -> None:
        try:
            record = self.lims.job(job_id)
        except HpcprocError as exc:
            log.warning("job %d left by a stopped launcher: %s", job_id, exc)
            return
        for step in record.steps:
            if not step.status.final:
                self.lims.set_status(
                    step.id,
                    Status.FAILED,
                    "the launcher stopped before this step ended; "
                    "the job is run again as a new job",
                )

    def running(self) -> int:
        with self._futures_lock:
            return sum(not f.done() for f in self._futures)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the jobs started so far; False if some still run after ``timeout`` s."""
        with self._futures_lock:
            futures = list(self._futures)
        _done, left = concurrent.futures.wait(futures, timeout)
        return not left

    def shutdown(self, timeout: float | None = None) -> bool:
        """Let running jobs finish (``timeout`` s at most); jobs still running then are
        resumed by the next launcher."""
        finished = self.wait(timeout)
        self._pool.shutdown(wait=finished, cancel_futures=True)
        return finished
