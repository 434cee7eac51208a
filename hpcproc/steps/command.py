"""Wrap an external program as a downstream step: a facility's existing tool, unchanged.

The program runs without a shell, so a recipe or LIMS parameter value is always one literal
argument, never shell syntax. ``{scan.file}``, ``{scan.id}`` (any scan field), ``{processed}``
and ``{workdir}`` in an argument are filled by plain substitution when the step runs (in a
recipe, write the last two as ``{{processed}}`` / ``{{workdir}}``: recipe templating fills
``{...}`` with recipe parameters and leaves doubled braces as single ones).

With ``submit: drmaa`` the program runs as a batch job (Grid Engine or another DRMAA-1
scheduler, see :mod:`hpcproc.batch.drmaa_job`) instead of in the Dask worker: same arguments,
same log files and outputs in the workdir, which must be on a filesystem the batch hosts see.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from hpcproc.batch.drmaa_job import BatchFinished, run_batch
from hpcproc.envs import Env, find_env
from hpcproc.processes import wait
from hpcproc.steps.base import StepContext, StepParams, StepResult, TaskStep
from hpcproc.units import seconds

_PLACEHOLDER = re.compile(r"\{(processed|workdir|scan\.[a-z_]+)\}")
_QUEUE = re.compile(r"^[A-Za-z0-9_.@*,-]+$")
_UNSAFE = (";", "|", "&", "`", "$(", "<", ">", "\n")
# What a batch job inherits of the worker's environment; the rest is what its env changes.
_BATCH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "TMPDIR")


class CommandParams(StepParams):
    program: str = Field(description="program name (looked up on the env's PATH) or path")
    args: list[str] = Field(default_factory=list, description="arguments, one word each")
    env: str | None = Field(default=None, description="named env (envs/); else resources.env")
    timeout: float = Field(default=3600.0, gt=0, description="s before the program is killed")
    success_codes: list[int] = Field(default_factory=lambda: [0], min_length=1)
    outputs: list[str] = Field(
        default_factory=list, description="glob patterns in the step's workdir to attach"
    )
    submit: Literal["local", "drmaa"] = Field(
        default="local",
        description="where the program runs: in the Dask worker, or as a batch job through DRMAA",
    )
    queue: str | None = Field(default=None, description="batch queue (drmaa only)")
    walltime: str | None = Field(
        default=None, description="HH:MM:SS the scheduler allows the batch job (drmaa only)"
    )
    cores: int = Field(default=1, ge=1, description="slots of the smp parallel environment")
    native: str = Field(
        default="", description="extra native specification (qsub options) for the batch job"
    )

    @field_validator("walltime")
    @classmethod
    def _walltime_is_hms(cls, value: str | None) -> str | None:
        if value is not None:
            seconds(value)  # ValueError: not HH:MM:SS
        return value

    @field_validator("queue")
    @classmethod
    def _queue_is_one_word(cls, value: str | None) -> str | None:
        if value is not None and not _QUEUE.match(value):
            raise ValueError(f"queue {value!r} is not a queue name (letters, digits, . _ - @ *)")
        return value

    @field_validator("native")
    @classmethod
    def _native_is_plain_words(cls, value: str) -> str:
        bad = sorted({c for c in _UNSAFE if c in value})
        if bad:
            raise ValueError(
                f"native specification may not contain {', '.join(map(repr, bad))} "
                "(it is split into qsub options, never run by a shell)"
            )
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"native specification cannot be split into words: {exc}") from None
        return value


def fill_placeholders(text: str, ctx: StepContext) -> str:
    """``text`` with the step's run-time placeholders filled; other braces are left alone."""
    values = {f"scan.{k}": str(v) for k, v in ctx.scan.metadata().items()}
    values |= {"processed": str(ctx.processed), "workdir": str(ctx.workdir)}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def resolve_env(name: str | None) -> Env | None:
    """The named env, built if it needs to be; None runs in the worker's own environment."""
    if name is None:
        return None
    env = find_env(name)
    env.ensure()
    return env


@dataclass(frozen=True)
class Finished:
    """How a process ended: its exit code, or None if it was killed at the timeout or on a
    stop request (``stopped``: the request's text)."""

    returncode: int | None
    seconds: float
    stopped: str | None = None


def run_process(
    argv: list[str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stop_file: Path | None = None,
) -> Finished:
    """Run ``argv`` (no shell) with its output in files; at the timeout, or once ``stop_file``
    appears (the job is cancelled), kill it and everything it started (its process group, and
    children that made sessions of their own, like kernels). Raises OSError if it cannot be
    started."""
    started = time.monotonic()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        code: int | None = None
        try:
            interrupted = wait(proc, timeout, stop_file)
            if interrupted is None:
                code = proc.returncode
            else:
                _kill_tree(proc)
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt, worker shutdown)
                _kill_tree(proc)
    stopped = interrupted.stop_reason if interrupted and not interrupted.timed_out else None
    return Finished(code, time.monotonic() - started, stopped)


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil  # comes with distributed

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    _signal(proc, children, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    _, alive = psutil.wait_procs(children, timeout=2)
    if proc.poll() is None or alive:
        _signal(proc, alive, signal.SIGKILL)
    proc.wait()


def _signal(proc: subprocess.Popen, children: list, sig: int) -> None:
    import psutil

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # its session's group: the pid is the group id
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(sig)


def last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log file (what a person reads first on a failure)."""
    try:
        with open(path, "rb") as fd:
            fd.seek(max(0, fd.seek(0, os.SEEK_END) - 16384))
            text = fd.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


class Command(TaskStep):
    name: ClassVar[str] = "command"
    Params = CommandParams
    description = "Run an external program (no shell) in a named environment"
    inputs = {"args": "the scan file, the processed file, ... as placeholders in the arguments"}
    outputs = {"outputs": "files the program writes in its workdir, attached to the job"}

    def finish(self, ctx: StepContext) -> StepResult:
        p: CommandParams = self.params  # type: ignore[assignment]
        run = _prepare(p, ctx)
        if isinstance(run, StepResult):
            return run
        if p.submit == "drmaa":
            return _finish_batch(p, run, ctx.stop_file)
        try:
            done = run_process(
                run.command,
                run.workdir,
                run.stdout,
                run.stderr,
                p.timeout,
                run.environ,
                ctx.stop_file,
            )
        except OSError as exc:
            return StepResult(
                failed=f"cannot run {run.program!r}{run.where}: {exc.strerror or exc}"
            )
        if done.stopped is not None:
            return run.result(p, failed=f"{done.stopped}; {run.program!r} killed")
        if done.returncode is None:
            return run.result(p, failed=f"timed out after {p.timeout:g} s")
        values = {"exit_code": done.returncode, "seconds": round(done.seconds, 3)}
        failed = None if done.returncode in p.success_codes else run.exit_failure(done.returncode)
        return run.result(p, values, failed)


@dataclass(frozen=True)
class _Run:
    """A command ready to run: what the local and the batch paths share."""

    program: str  # as the recipe named it, placeholders filled
    command: list[str]  # what is executed (in the env)
    workdir: Path
    stdout: Path
    stderr: Path
    environ: dict[str, str]
    env: Env | None

    @property
    def where(self) -> str:
        return f" in env {self.env.name!r}" if self.env is not None else ""

    def result(
        self, p: CommandParams, values: dict | None = None, failed: str | None = None
    ) -> StepResult:
        """The logs, the output files and ``values``; failed with ``failed`` if given."""
        logs = [(self.stdout, "Log"), (self.stderr, "Log")]
        files, messages = _outputs(self.workdir, p.outputs, {self.stdout, self.stderr})
        attachments = logs + [(f, "Result") for f in files]
        return StepResult(
            values=values or {}, attachments=attachments, messages=messages, failed=failed
        )

    def exit_failure(self, code: int) -> str:
        """``exit code N: <last line it wrote>`` for an exit code that is not a success."""
        why = last_line(self.stderr) or last_line(self.stdout) or "no output"
        env = self.env
        if code == 127 and env is not None and env.spec.kind in ("module", "conda"):
            why = f"{why} (is {self.program!r} in env {env.name!r}?)"
        return f"exit code {code}: {why}"


def _prepare(p: CommandParams, ctx: StepContext) -> _Run | StepResult:
    """Env, workdir and argv of the step; a failed StepResult if the program is not there."""
    env = resolve_env(p.env or ctx.env)
    workdir = ctx.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    environ = env.environ() if env is not None else dict(os.environ)

    program = fill_placeholders(p.program, ctx)
    argv = [program, *(fill_placeholders(a, ctx) for a in p.args)]
    if env is None or env.spec.kind in ("venv", "current"):
        # Found here, so a missing program is a clear message rather than an OSError; in a
        # venv or "current", `python` is the env's interpreter whatever PATH says.
        local = env.command([program])[0] if env is not None else program
        found = _which(local, workdir, environ)
        if found is None:
            if os.sep in local:
                why = f"program {program!r} not found (no executable file there)"
            else:
                of = f" of env {env.name!r}" if env is not None else ""
                why = f"program {program!r} not found on the PATH{of}"
            return StepResult(failed=why)
        argv[0] = found
    command = env.command(argv) if env is not None else argv
    stdout, stderr = workdir / "stdout.log", workdir / "stderr.log"
    return _Run(program, command, workdir, stdout, stderr, environ, env)


def _finish_batch(p: CommandParams, run: _Run, stop_file: Path | None) -> StepResult:
    """Run the command as a batch job through DRMAA and say how it ended."""
    done = run_batch(
        run.command,
        run.workdir,
        run.stdout,
        run.stderr,
        p.timeout,
        _batch_environ(run.environ),
        queue=p.queue,
        walltime=p.walltime,
        cores=p.cores,
        native=p.native,
        job_name=f"hpcproc-{run.workdir.name}",
        stop_file=stop_file,
    )
    if done.state == "error" and done.job_id is None:
        return StepResult(failed=f"cannot submit to the batch system: {done.reason}")
    values = {
        "exit_code": done.exit_code,
        "batch_job_id": done.job_id,
        "batch_queue": done.queue,
        "batch_host": done.host,
        "seconds": done.seconds,
    }
    values = {k: v for k, v in values.items() if v is not None}
    return run.result(p, values, _batch_failure(p, run, done))


def _batch_failure(p: CommandParams, run: _Run, done: BatchFinished) -> str | None:
    """Why the batch job failed the step, or None if it succeeded."""
    job = f"batch job {done.job_id}"
    if done.state == "timeout":
        if done.job_id is None:
            return f"timed out after {p.timeout:g} s before the batch job was submitted"
        return f"timed out after {p.timeout:g} s; {job} terminated"
    if done.state == "stopped":
        return f"{done.reason}; {job} terminated" if done.job_id else done.reason
    if done.state == "error":
        return f"{job}: {done.reason}"
    if done.state == "aborted":
        if done.reason:  # Grid Engine's reason it could not run it
            return f"{job} could not run: {done.reason}"
        return f"{job} was aborted (qdel?)"
    if done.state == "killed":
        limit = f"walltime exceeded (h_rt {p.walltime})" if p.walltime else "a limit of the queue?"
        return f"{job} killed by {done.signal or 'a signal'}: {limit}"
    if done.exit_code is None:
        return f"{job} ended without an exit code"
    if done.exit_code in p.success_codes:
        return None
    return f"{run.exit_failure(done.exit_code)} ({job} on {done.host or 'an unknown host'})"


def _batch_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """What a batch job gets: PATH, HOME, LANG and the like, and what the step's env sets."""
    return {k: v for k, v in environ.items() if k in _BATCH_ENV or os.environ.get(k) != v}


def _which(program: str, cwd: Path, environ: Mapping[str, str]) -> str | None:
    """Full path of ``program``: a path (relative to the workdir) or a name on PATH."""
    if os.sep in program:
        path = Path(program).expanduser()
        path = path if path.is_absolute() else cwd / path
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program, path=environ.get("PATH"))


def _outputs(
    workdir: Path, patterns: list[str], skip: set[Path]
) -> tuple[list[Path], list[tuple[str, str]]]:
    files: list[Path] = []
    messages: list[tuple[str, str]] = []
    for pattern in patterns:
        found = sorted(f for f in workdir.glob(pattern) if f.is_file() and f not in skip)
        if not found:
            messages.append(("WARNING", f"no file in the workdir matches {pattern!r}"))
        files.extend(f for f in found if f not in files)
    return files, messages
