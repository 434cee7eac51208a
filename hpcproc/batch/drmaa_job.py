"""Run ONE program as a batch job through DRMAA (Grid Engine, or any DRMAA-1 scheduler) and
report how it ended.

``libdrmaa`` cannot be loaded into a process that did not start with
``GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384`` (it links jemalloc), so a Dask worker
never imports :mod:`drmaa` itself: :func:`run_batch` starts ``python -m hpcproc.batch.drmaa_job``
with the DRMAA environment set, hands it the request as JSON on stdin and reads JSON lines back:
first ``{"job_id": ...}`` as soon as the job is submitted, then the final report. SIGTERM to that
child terminates the batch job (``control(TERMINATE)``), which is how the parent's timeout and
the cancelling of an hpcproc job reach the scheduler.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hpcproc.processes import Interrupted, wait
from hpcproc.units import seconds

DEFAULT_LIBRARY = "/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0"
DEFAULT_SGE_ROOT = "/var/lib/gridengine"
STATIC_TLS = "glibc.rtld.optional_static_tls=16384"
TERMINATE_GRACE = 30.0  # s the child waits for a terminated job to be reported

# ---------------------------------------------------------------- worker side (no drmaa here)


@dataclass(frozen=True)
class BatchFinished:
    """How a batch job ended.

    ``state``: ``done`` (exit code 0), ``failed`` (another exit code, or no exit code at all),
    ``aborted`` (qdel, or terminated by someone else), ``killed`` (by a signal: the scheduler's
    limits), ``timeout`` (run_batch's own timeout; the job was terminated), ``stopped`` (a stop
    request, whose text is ``reason``: the job was terminated) or ``error`` (it could not be
    submitted or followed; ``reason`` says why)."""

    state: str
    job_id: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    seconds: float = 0.0
    host: str | None = None
    queue: str | None = None
    reason: str = ""
    usage: dict[str, float] = field(default_factory=dict)


def native_specification(
    queue: str | None = None, walltime: str | None = None, cores: int = 1, native: str = ""
) -> str:
    """The qsub options for a request: ``-q``, ``-l h_rt=S``, ``-pe smp N``, then ``native``."""
    words: list[str] = []
    if queue:
        words += ["-q", queue]
    if walltime:
        words += ["-l", f"h_rt={seconds(walltime)}"]
    if cores > 1:
        words += ["-pe", "smp", str(cores)]
    words += shlex.split(native)
    return shlex.join(words)


def drmaa_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with what loading libdrmaa needs."""
    env = dict(os.environ if base is None else base)
    if not env.get("DRMAA_LIBRARY_PATH") and Path(DEFAULT_LIBRARY).exists():
        env["DRMAA_LIBRARY_PATH"] = DEFAULT_LIBRARY
    env.setdefault("SGE_ROOT", DEFAULT_SGE_ROOT)
    env.setdefault("SGE_CELL", "default")
    tunables = env.get("GLIBC_TUNABLES", "")
    if "optional_static_tls" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, STATIC_TLS]))
    # The child must import this module whatever the working directory (it runs with -P).
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return env


def run_batch(
    argv: list[str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout: float,
    env: Mapping[str, str],
    *,
    queue: str | None = None,
    walltime: str | None = None,
    cores: int = 1,
    native: str = "",
    job_name: str = "hpcproc",
    stop_file: Path | None = None,
) -> BatchFinished:
    """Run ``argv`` (no shell) as a batch job in ``cwd`` with exactly the environment ``env``,
    its output in ``stdout``/``stderr`` (paths the execution host sees), and wait for it.

    At ``timeout`` s (counted from submission, queueing included) the job is terminated and the
    state is ``timeout``; once ``stop_file`` appears (the hpcproc job was cancelled) it is
    terminated and the state is ``stopped``; if this call is interrupted (KeyboardInterrupt,
    worker shutdown) the job is terminated too. Never raises for batch-system trouble: that is
    state ``error``."""
    request = {
        "argv": [str(a) for a in argv],
        "cwd": str(cwd),
        "stdout": str(stdout),
        "stderr": str(stderr),
        "env": dict(env),
        "native": native_specification(queue, walltime, cores, native),
        "job_name": job_name,
    }
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "hpcproc.batch.drmaa_job"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=drmaa_environ(),
            text=True,
            start_new_session=True,  # a Ctrl-C in a terminal reaches it only through us
        )
    except OSError as exc:
        return BatchFinished("error", reason=f"cannot start the DRMAA helper: {exc}")
    lines: list[str] = []
    errors: list[str] = []
    readers = [
        threading.Thread(target=_collect, args=(proc.stdout, lines), daemon=True),
        threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True),
    ]
    for reader in readers:
        reader.start()
    interrupted = None
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(request))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        interrupted = wait(proc, timeout, stop_file)
        if interrupted is not None:
            _stop(proc)
    finally:
        if proc.poll() is None:  # interrupted: the batch job must not outlive the hpcproc job
            _stop(proc)
    for reader in readers:
        reader.join(timeout=5)
    return _report(lines, errors, proc.returncode, interrupted, time.monotonic() - started)


def _collect(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the helper (it terminates the batch job and reports); SIGKILL if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TERMINATE_GRACE + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _report(
    lines: list[str],
    errors: list[str],
    returncode: int | None,
    interrupted: Interrupted | None,
    seconds: float,
) -> BatchFinished:
    if interrupted is not None and not interrupted.timed_out:
        found = _report(lines, errors, returncode, None, seconds)
        return replace(found, state="stopped", reason=interrupted.stop_reason)
    timed_out = interrupted is not None
    job_id: str | None = None
    final: dict[str, Any] | None = None
    for line in lines:
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                job_id = data.get("job_id") or job_id
                if "state" in data:
                    final = data
    if final is None:
        said = [ln.strip() for ln in errors if ln.strip()]
        why = said[-1] if said else f"it exited with code {returncode} and no report"
        if timed_out:
            return BatchFinished("timeout", job_id=job_id, seconds=seconds, reason=why)
        return BatchFinished("error", job_id=job_id, seconds=seconds, reason=f"DRMAA helper: {why}")
    fields = {k: final.get(k) for k in ("job_id", "exit_code", "signal", "host", "queue")}
    return BatchFinished(
        state="timeout" if timed_out and final["state"] != "error" else final["state"],
        seconds=round(seconds, 3),
        reason=final.get("reason") or "",
        usage=final.get("usage") or {},
        **fields,
    )


# ---------------------------------------------------------------- the helper process (drmaa)

_stop_requested = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def _clean(exc: BaseException) -> str:
    """One line from a DRMAA exception: 'code 17: Job was rejected ...' -> 'Job was rejected'."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.sub(r"^code \d+: ", "", text)


def main() -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)
    started = time.monotonic()
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as exc:
        _emit({"state": "error", "reason": f"bad request: {exc}"})
        return 2
    try:
        import drmaa
    except Exception as exc:  # no library, wrong path, static TLS: all one line
        _emit({"state": "error", "reason": f"cannot load DRMAA: {_clean(exc)}"})
        return 1
    try:
        session = drmaa.Session()
        session.initialize()
    except Exception as exc:
        _emit({"state": "error", "reason": f"cannot open a DRMAA session: {_clean(exc)}"})
        return 1
    try:
        report = _submit_and_wait(drmaa, session, request)
    except Exception as exc:
        report = {"state": "error", "reason": _clean(exc)}
    finally:
        with contextlib.suppress(Exception):
            session.exit()
    report["seconds"] = round(time.monotonic() - started, 3)
    _emit(report)
    return 0


def _submit_and_wait(drmaa: Any, session: Any, request: dict[str, Any]) -> dict[str, Any]:
    jt = session.createJobTemplate()
    try:
        argv = request["argv"]
        jt.remoteCommand = argv[0]
        jt.args = argv[1:]
        jt.workingDirectory = request["cwd"]
        jt.outputPath = ":" + request["stdout"]
        jt.errorPath = ":" + request["stderr"]
        jt.jobEnvironment = request["env"]
        jt.jobName = re.sub(r"[^A-Za-z0-9_.-]", "_", request.get("job_name") or "hpcproc")
        if request.get("native"):
            jt.nativeSpecification = request["native"]
        if _stop_requested:
            return {"state": "aborted", "terminated": True, "reason": "stopped before submission"}
        job_id = session.runJob(jt)
    finally:
        with contextlib.suppress(Exception):
            session.deleteJobTemplate(jt)
    _emit({"job_id": job_id})
    info, terminated, error = _wait(drmaa, session, job_id)
    report: dict[str, Any] = {"job_id": job_id, "terminated": terminated}
    if error:
        report.update(state="error", reason=error)
    elif info is None:  # terminated before it started: no accounting
        report["state"] = "aborted"
    elif info.hasExited:
        report.update(exit_code=info.exitStatus, state="done" if info.exitStatus == 0 else "failed")
    elif info.hasSignal:
        report.update(state="killed", signal=info.terminatedSignal or None)
    elif info.wasAborted:
        report["state"] = "aborted"
    else:
        report["state"] = "failed"
    if info is not None:
        report["usage"] = _usage(info.resourceUsage or {})
        where = _where(job_id)
        if report["state"] != "aborted" or terminated:
            where.pop("reason", None)
        report.update(where)
    return report


def _wait(drmaa: Any, session: Any, job_id: str) -> tuple[Any, bool, str]:
    """(JobInfo or None, whether we terminated it, error reason) once the job has ended."""
    error = ""
    while not _stop_requested:
        try:
            return session.wait(job_id, 1), False, ""
        except drmaa.errors.ExitTimeoutException:
            pass
        with contextlib.suppress(Exception):
            if session.jobStatus(job_id) == drmaa.JobState.FAILED:  # e.g. Eqw: never runs
                error = f"cannot run: {_error_reason(job_id)}"
                break
    with contextlib.suppress(Exception):
        session.control(job_id, drmaa.JobControlAction.TERMINATE)
    try:
        info = session.wait(job_id, int(TERMINATE_GRACE))
    except drmaa.errors.ExitTimeoutException:
        return None, True, error or "it did not end after it was terminated"
    except Exception:  # "code 24: no usage information": terminated while pending
        info = None
    return info, True, error


def _error_reason(job_id: str) -> str:
    out = _sge_command("qstat", "-j", job_id)
    for line in out.splitlines():
        if line.startswith("error reason"):
            return line.split(":", 1)[-1].strip()
    return "the job is in an error state (qstat -j)"


def _sge_command(*argv: str) -> str:
    program = shutil.which(argv[0])
    if program is None:
        root = Path(os.environ.get("SGE_ROOT", DEFAULT_SGE_ROOT)) / "bin"
        found = sorted(root.glob(f"*/{argv[0]}"))
        if not found:
            return ""
        program = str(found[0])
    try:
        done = subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _where(job_id: str, tries: int = 10) -> dict[str, str]:
    """Host and queue of an ended job from qacct (which may need a moment to see it), and the
    reason Grid Engine gives when it could not run it (``failed`` other than 0 and 100, the
    code of qdel and TERMINATE)."""
    for attempt in range(tries):
        fields = {}
        for line in _sge_command("qacct", "-j", job_id).splitlines():
            key, _, value = line.partition(" ")
            value = " ".join(value.split())
            if key in ("hostname", "qname") and value:
                fields["host" if key == "hostname" else "queue"] = value
            elif key == "failed" and not value.startswith(("0", "100 ")):
                fields["reason"] = f"failed {value}"  # e.g. 26 : opening input/output file
        if fields:
            return fields
        if attempt < tries - 1:
            time.sleep(0.3)
    return {}


def _usage(raw: Mapping[str, str]) -> dict[str, float]:
    usage = {}
    for key, name in (("ru_wallclock", "wallclock"), ("maxvmem", "maxvmem"), ("cpu", "cpu")):
        with contextlib.suppress(KeyError, ValueError):
            usage[name] = float(raw[key])
    return usage


if __name__ == "__main__":
    sys.exit(main())
