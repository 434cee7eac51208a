"""Wrap an external program as a downstream step: a facility's existing tool, unchanged.

The program runs without a shell, so a recipe or LIMS parameter value is always one literal
argument, never shell syntax. ``{scan.file}``, ``{scan.id}`` (any scan field), ``{processed}``
and ``{workdir}`` in an argument are filled by plain substitution when the step runs (in a
recipe, write the last two as ``{{processed}}`` / ``{{workdir}}``: recipe templating fills
``{...}`` with recipe parameters and leaves doubled braces as single ones).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from hpcproc.envs import Env, find_env
from hpcproc.steps.base import StepContext, StepParams, StepResult, TaskStep

_PLACEHOLDER = re.compile(r"\{(processed|workdir|scan\.[a-z_]+)\}")


class CommandParams(StepParams):
    program: str = Field(description="program name (looked up on the env's PATH) or path")
    args: list[str] = Field(default_factory=list, description="arguments, one word each")
    env: str | None = Field(default=None, description="named env (envs/); else resources.env")
    timeout: float = Field(default=3600.0, gt=0, description="s before the program is killed")
    success_codes: list[int] = Field(default_factory=lambda: [0], min_length=1)
    outputs: list[str] = Field(
        default_factory=list, description="glob patterns in the step's workdir to attach"
    )


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
    """How a process ended: its exit code, or None if it was killed at the timeout."""

    returncode: int | None
    seconds: float


def run_process(
    argv: list[str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """Run ``argv`` (no shell) with its output in files; at the timeout kill it and everything it
    started (its process group, and children that made sessions of their own, like kernels).
    Raises OSError if it cannot be started."""
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
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            code = None
        finally:
            if proc.poll() is None:  # interrupted (KeyboardInterrupt, worker shutdown)
                _kill_tree(proc)
    return Finished(code, time.monotonic() - started)


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
        env = resolve_env(p.env or ctx.env)
        workdir = ctx.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        stdout, stderr = workdir / "stdout.log", workdir / "stderr.log"
        environ = env.environ() if env is not None else dict(os.environ)
        where = f" in env {env.name!r}" if env is not None else ""

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
        try:
            done = run_process(command, workdir, stdout, stderr, p.timeout, environ)
        except OSError as exc:
            return StepResult(failed=f"cannot run {program!r}{where}: {exc.strerror or exc}")

        logs = [(stdout, "Log"), (stderr, "Log")]
        files, messages = _outputs(workdir, p.outputs, {stdout, stderr})
        result = {"attachments": logs + [(f, "Result") for f in files], "messages": messages}
        if done.returncode is None:
            return StepResult(**result, failed=f"timed out after {p.timeout:g} s")
        values = {"exit_code": done.returncode, "seconds": round(done.seconds, 3)}
        if done.returncode in p.success_codes:
            return StepResult(**result, values=values)
        why = last_line(stderr) or last_line(stdout) or "no output"
        if done.returncode == 127 and env is not None and env.spec.kind in ("module", "conda"):
            why = f"{why} (is {program!r} in env {env.name!r}?)"
        return StepResult(**result, values=values, failed=f"exit code {done.returncode}: {why}")


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
