"""Run a Jupyter notebook with papermill in a named environment: a scientist's analysis, kept as
a notebook, becomes a downstream step with its parameters from the recipe (and so the LIMS).

Which notebook: an absolute path (``{scan.dir}/maps.ipynb`` for one beside the scan), or a
relative one looked for in ``$HPCPROC_NOTEBOOK_PATH`` (os.pathsep-separated) and then the shipped
``notebooks/`` directory, so a recipe names a shipped notebook the same way on every machine.

Papermill runs inside the env (``<env python> -m papermill``) with a kernel spec written into the
step's workdir whose command is the env's own python, so the notebook's code really runs in the
env whatever kernels the machine has. ``inpath`` (the scan file) and ``outpath`` (a file in the
workdir) are injected unless the recipe gives them. The executed notebook, its HTML rendering,
``outpath`` and papermill's log are attached; a failing cell fails the step with its error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from hpcproc.envs import Env, find_env
from hpcproc.errors import StepError
from hpcproc.shipped import shipped_dir
from hpcproc.steps.base import StepContext, StepParams, StepResult, TaskStep
from hpcproc.steps.command import fill_placeholders, last_line, run_process

NOTEBOOK_PATH = "HPCPROC_NOTEBOOK_PATH"
KERNEL = "hpcproc"  # name of the kernel spec written into the workdir


class NotebookParams(StepParams):
    notebook: str = Field(description="absolute path, or relative to the notebook directories")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="values for the notebook's `parameters` cell"
    )
    env: str | None = Field(default=None, description="named env (envs/); else resources.env")
    timeout: float = Field(default=3600.0, gt=0, description="s for the whole notebook")


def notebook_dirs() -> list[Path]:
    """``$HPCPROC_NOTEBOOK_PATH`` entries first, then the shipped ``notebooks/``."""
    env = os.environ.get(NOTEBOOK_PATH, "")
    dirs = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    dirs.append(shipped_dir("notebooks"))
    return list(dict.fromkeys(dirs))


def find_notebook(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise StepError(f"no notebook {path}")
        return path
    for d in notebook_dirs():
        if (d / path).is_file():
            return (d / path).resolve()
    where = ", ".join(str(d) for d in notebook_dirs())
    raise StepError(f"no notebook {name!r} in the notebook directories ({where})")


class Notebook(TaskStep):
    name: ClassVar[str] = "notebook"
    Params = NotebookParams
    description = "Execute a Jupyter notebook with papermill in a named environment"
    inputs = {"inpath": "the scan file, injected as a notebook parameter"}
    outputs = {"outpath": "the file the notebook writes", "report": "executed notebook + HTML"}

    def finish(self, ctx: StepContext) -> StepResult:
        p: NotebookParams = self.params  # type: ignore[assignment]
        source = find_notebook(fill_placeholders(p.notebook, ctx))
        env = find_env(p.env or ctx.env or "current")
        env.ensure()
        work = ctx.workdir
        work.mkdir(parents=True, exist_ok=True)

        values = {k: _fill(v, ctx) for k, v in p.parameters.items()}
        values.setdefault("inpath", str(ctx.scan.path))
        values.setdefault("outpath", str(work / f"{source.stem}.h5"))
        params_file = work / "parameters.json"  # JSON is YAML: papermill -f reads it
        params_file.write_text(json.dumps(values, indent=1, default=str))
        executed = work / source.name
        html = executed.with_suffix(".html")
        stdout, stderr = work / "papermill.stdout.log", work / "papermill.stderr.log"
        kernels = _write_kernel_spec(env, work / ".jupyter")

        argv = [env.python, "-m", "papermill", str(source), str(executed)]
        argv += ["-f", str(params_file), "-k", KERNEL, "--cwd", str(work)]
        # The kernel is always ipykernel: a notebook without language metadata still runs.
        argv += ["--language", "python", "--log-output", "--no-progress-bar"]
        environ = env.environ()
        # Our kernel spec first: a machine's own "python3" kernel must not be picked up.
        old_path = environ.get("JUPYTER_PATH")
        environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(kernels), old_path]))
        for f in (executed, html):
            f.unlink(missing_ok=True)  # a retry must not attach the last try's notebook
        try:
            done = run_process(
                env.command(argv), work, stdout, stderr, p.timeout, environ, ctx.stop_file
            )
        except OSError as exc:
            raise StepError(f"cannot run papermill in env {env.name!r}: {exc}") from None

        attachments: list[tuple[Path, str]] = [(params_file, "Input")]
        messages: list[tuple[str, str]] = []
        error = _cell_error(executed) if executed.is_file() else None
        if executed.is_file():
            attachments.append((executed, "Result"))
            try:
                _to_html(executed, html)
                attachments.append((html, "Graph"))
            except Exception as exc:  # a report that cannot be rendered is not a failed step
                messages.append(("WARNING", f"no HTML report: {type(exc).__name__}: {exc}"))
        out = Path(values["outpath"])
        if isinstance(values["outpath"], str) and out.is_file():
            attachments.append((out, "Result"))
        attachments += [(stdout, "Log"), (stderr, "Log")]
        result = {"attachments": attachments, "messages": messages}
        if done.stopped is not None:
            return StepResult(**result, failed=f"{done.stopped}; papermill killed")
        if done.returncode is None:
            return StepResult(**result, failed=f"timed out after {p.timeout:g} s")
        if error is not None:
            return StepResult(**result, failed=error)
        if done.returncode != 0:
            why = last_line(stderr) or last_line(stdout) or "no output"
            return StepResult(
                **result, failed=f"papermill failed (exit code {done.returncode}): {why}"
            )
        messages.append(("INFO", f"ran {source.name} in env {env.name!r} in {done.seconds:.1f} s"))
        return StepResult(**result, values={"seconds": round(done.seconds, 3)})


def _fill(value: Any, ctx: StepContext) -> Any:
    if isinstance(value, str):
        return fill_placeholders(value, ctx)
    if isinstance(value, Mapping):
        return {k: _fill(v, ctx) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fill(v, ctx) for v in value]
    return value


def _write_kernel_spec(env: Env, root: Path) -> Path:
    """A kernel spec (in ``root``, to go on JUPYTER_PATH) that starts the env's python."""
    argv = env.command([env.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    spec = {
        "argv": argv,
        "display_name": f"Python (hpcproc env {env.name})",
        "language": "python",
        "metadata": {"debugger": False},
    }
    directory = root / "kernels" / KERNEL
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kernel.json").write_text(json.dumps(spec, indent=1))
    return root


def _cell_error(path: Path) -> str | None:
    """'cell [n]: Name: message' of the first cell whose output is an error (papermill puts a
    banner cell of its own at the top: skipped)."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # a notebook that cannot be read has no cell to blame
        return None
    for index, cell in enumerate(nb.cells):
        if "papermill-error-cell-tag" in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                count = cell.get("execution_count")
                where = f"cell [{count}]" if count is not None else f"cell {index + 1}"
                message = " ".join(str(output.get("evalue", "")).split())[:500]
                return f"{where}: {output.get('ename', 'Error')}: {message}"
    return None


def _to_html(notebook: Path, html: Path) -> None:
    """The executed notebook as a self-contained HTML page (plots inline), rendered here."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    html.write_text(body, encoding="utf-8")
