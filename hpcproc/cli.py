"""The `hpcproc` command."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from hpcproc import __version__, config
from hpcproc.errors import HpcprocError, InputError

console = Console(stderr=True)
out = Console()


def _shape(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not like 12x16") from None
    if a < 1 or b < 1:
        raise click.BadParameter(f"{text!r}: both sizes must be positive")
    return a, b


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--param {pair!r} is not like name=value")
        params[key.strip()] = value
    return params


def _param_option(help_text: str) -> Any:
    return click.option(
        "--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help=help_text
    )


class _Cli(click.Group):
    """Turns hpcproc's own errors into one line on stderr (exit 2 for bad input, 1 otherwise)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HpcprocError as exc:
            console.print(f"[red]hpcproc: error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2 if isinstance(exc, InputError) else 1)


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="hpcproc")
@click.option(
    "--lims",
    "lims_url",
    envvar="HPCPROC_LIMS_URL",
    help="LIMS database URL (default: SQLite under $HPCPROC_HOME).",
)
@click.pass_context
def main(ctx: click.Context, lims_url: str | None) -> None:
    """Real-time auto-processing for synchrotron beamlines."""
    ctx.obj = {"lims_url": lims_url}


def _lims(ctx: click.Context):  # -> Lims (imported lazily: keeps `--help` fast)
    from hpcproc.lims import Lims, default_lims_url

    return Lims(ctx.obj["lims_url"] or default_lims_url(config.home()))


@contextmanager
def _recording(ctx: click.Context) -> Iterator[Any]:
    """The LIMS a run records through: writes go through a durable outbox, so a database that
    is down delays records but never loses them or stops processing."""
    from hpcproc.lims import default_lims_url
    from hpcproc.lims.recording import finish, recording_lims

    home = config.home()
    lims = recording_lims(ctx.obj["lims_url"] or default_lims_url(home), home)
    try:
        yield lims
    finally:
        finish(lims)


@contextmanager
def _progress() -> Iterator[Any]:
    """A rich progress bar per step; yields the callback the job runner calls."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(step: str, done: int, total: int, label: str | None = None) -> None:
        if step not in tasks:
            tasks[step] = bars.add_task(label or step, total=total)
        bars.update(tasks[step], completed=done, total=total, description=label or step)

    with bars:
        yield update


# ---------------------------------------------------------------- simulate
@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--map", "map_shape", default="12x16", help="Scan shape NYxNX (y slow).")
@click.option("--frame", "frame_shape", default="256x256", help="XRD frame HxW; 2069x1796 = real.")
@click.option("--channels", default=8, show_default=True, help="XRF detector channels.")
@click.option("--bins", default=4096, show_default=True, help="XRF MCA bins.")
@click.option("--elements", default="Fe,Co,Ni,Cu,Zn", show_default=True)
@click.option("--xrd/--no-xrd", default=True, show_default=True)
@click.option("--xrf/--no-xrf", default=True, show_default=True)
@click.option("--flip-ud", is_flag=True, help="Write frames upside down relative to the PONI.")
@click.option("--scan-number", default=1, show_default=True)
@click.option("--beamline", default="i18", show_default=True)
@click.option("--visit", default="cm12345-1", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--live", is_flag=True, help="Write as a detector does: SWMR, point by point.")
@click.option("--rate", default=10.0, show_default=True, help="Points per second (with --live).")
@click.option("--flush-every", default=1, show_default=True, help="Points per flush (--live).")
@click.option("--pool", type=int, default=None, help="Precompute N points and cycle (--live).")
def simulate(
    out_dir: Path,
    map_shape: str,
    frame_shape: str,
    live: bool,
    rate: float,
    flush_every: int,
    pool: int | None,
    **kw: Any,
) -> None:
    """Write a simulated I18-like scan (XRD + XRF map), its PONI file and its ground truth."""
    live_cfg = None
    if live:
        from hpcproc.nexus.live_writer import LiveConfig

        live_cfg = LiveConfig(rate_hz=rate, flush_every=flush_every, pool=pool)
    path = _simulate(out_dir, _shape(map_shape), _shape(frame_shape), live=live_cfg, **kw)
    out.print(str(path), soft_wrap=True, highlight=False)


def _simulate(
    out_dir: Path,
    map_shape: tuple[int, int],
    frame_shape: tuple[int, int],
    live: Any = None,
    **kw: Any,
):
    from hpcproc.nexus.simulator import SimulationConfig, simulate_scan

    kw["elements"] = tuple(e.strip() for e in str(kw.get("elements", "Fe,Co,Ni,Cu,Zn")).split(","))
    try:
        cfg = SimulationConfig(map_shape=map_shape, frame_shape=frame_shape, **kw)
    except ValueError as exc:
        raise InputError(f"simulate: {exc}") from None
    with _progress() as update:
        report = lambda d, t: update("simulate", d, t)  # noqa: E731
        if live is None:
            return simulate_scan(out_dir, cfg, progress=report).path
        from hpcproc.nexus.live_writer import write_live_scan

        return write_live_scan(out_dir, cfg, live, progress=report).path


# ---------------------------------------------------------------- run
def _scan_options(f: Any) -> Any:
    """What a person may say of a scan file over what it says of itself."""
    f = click.option(
        "--beamline", help="The scan's beamline, where the file has none (or a wrong one)."
    )(f)
    f = click.option(
        "--visit", help="The scan's visit (cm12345-1), where the file has none or 'DEFAULT'."
    )(f)
    return click.option(
        "--layout",
        help="The file's layout (diamond, gda, nxtomo, dxchange, nexus), instead of detecting it.",
    )(f)


def _run(
    ctx: click.Context,
    recipes: Sequence[str],
    scan: Path,
    params: dict,
    cluster: str,
    wait: float = 0.0,
    notify: str | None = None,
    said: dict[str, str | None] | None = None,
):
    from hpcproc.dispatch.clusters import load_profile, open_client
    from hpcproc.jobs import job_notice, prepare, run_plan
    from hpcproc.notify import notifiers_from_spec
    from hpcproc.recipes import find_recipe

    # Every check before the cluster starts: a mistake costs a second, not a cluster start-up.
    plans = [prepare(find_recipe(r), scan, params, wait, **(said or {})) for r in recipes]
    for warning in plans[0].scan.warnings if plans else ():
        console.print(f"warning: {plans[0].scan.path.name}: {warning}", highlight=False)
    for plan in plans:
        rule = plan.recipe.applies_to.beamlines
        if rule and plan.scan.beamline not in rule:  # asked for by name: said, not refused
            console.print(
                f"warning: recipe {plan.recipe.name} is for beamlines {', '.join(rule)}, "
                f"the scan is from {plan.scan.beamline}",
                highlight=False,
            )
    profile = load_profile(cluster)
    notifiers = notifiers_from_spec(notify)
    outcomes = []
    with _recording(ctx) as lims, open_client(profile) as client:
        console.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
        for plan in plans:
            with _progress() as update:
                outcome = run_plan(
                    plan, lims=lims, client=client, cluster=profile.name, progress=update
                )
            outcomes.append(outcome)
            notifiers.send(job_notice(lims, plan, outcome.job_id, outcome))
    return outcomes


def _print_outcomes(outcomes: Sequence[Any], as_json: bool) -> None:
    if as_json:
        out.print_json(
            data=[
                {
                    "job": o.job_id,
                    "recipe": o.recipe,
                    "status": o.status,
                    "scan": str(o.scan),
                    "processed": str(o.processed),
                    "steps": dict(o.steps),
                    "cancelled": o.cancelled,
                }
                for o in outcomes
            ]
        )
        return
    for o in outcomes:  # plain lines, never truncated: paths are meant to be copied
        colour = "green" if o.status == "success" else "red"
        said = f"{o.status} ({o.cancelled})" if o.cancelled else o.status
        out.print(
            f"job {o.job_id} {o.recipe}: [{colour}]{said}[/] -> {o.processed}",
            highlight=False,
            soft_wrap=True,
        )


@main.command()
@click.argument("recipe")
@click.argument("scan", type=click.Path(path_type=Path))
@_param_option("Set a recipe parameter (repeatable).")
@click.option("--cluster", default="local", show_default=True, help="Cluster profile name or file.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option(
    "--wait",
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for a scan file that does not exist yet.",
)
@click.option(
    "--notify",
    envvar="HPCPROC_NOTIFY",
    help="Tell people when the job ends: log,smtp://host:port?from=..&to=.. (default: log).",
)
@_scan_options
@click.pass_context
def run(
    ctx: click.Context,
    recipe: str,
    scan: Path,
    params: Sequence[str],
    cluster: str,
    as_json: bool,
    wait: float,
    notify: str | None,
    layout: str | None,
    visit: str | None,
    beamline: str | None,
) -> None:
    """Run RECIPE (a name or a .yaml file) on the scan file SCAN (finished, or being written:
    then it is followed until its end-of-scan marker). SCAN may be a NeXus/HDF5 file, a
    detector image (TIFF, CBF, EDF, ...; 'frames_*.tif' for a numbered series) or an XDI or
    column file."""
    said = {"layout": layout, "visit": visit, "beamline": beamline}
    outcomes = _run(ctx, [recipe], scan, _params(params), cluster, wait, notify, said)
    _print_outcomes(outcomes, as_json)
    sys.exit(0 if all(o.status == "success" for o in outcomes) else 1)


# ---------------------------------------------------------------- inspect
@main.command()
@click.argument("scan", type=click.Path(path_type=Path))
@click.option("--layout", help="Read the file with this layout instead of detecting one.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--all", "show_all", is_flag=True, help="List every dataset (default: 40).")
def inspect(scan: Path, layout: str | None, as_json: bool, show_all: bool) -> None:
    """What hpcproc reads in the file SCAN: format, layout, scan shape and axes, roles,
    datasets (shape, dtype, compression, links), links to files not there, and which recipes
    apply (and why not)."""
    from hpcproc.inspection import inspect_scan

    r = inspect_scan(scan, layout)
    if as_json:
        out.print_json(data=r)
        return
    say = lambda text: out.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"{r['file']}")
    say(
        f"  format {r['format']}, layout {r['layout']}; scan {r['scan_id']}, beamline "
        f"{r['beamline']}, visit {r['visit'] or '(local)'}, "
        f"{'finished' if r['finished'] else 'not finished'}"
    )
    shape = " x ".join(map(str, r["shape"]))
    say(f"  shape {shape} ({', '.join(r['axes'])})")
    for axis, span in r["axis_ranges"].items():
        if span:
            say(f"    {axis}: {span[0]:g} .. {span[1]:g} {span[2]}".rstrip())
    say("  roles:")
    for role, path in r["roles"].items():
        say(f"    {role:12} {path}")
    datasets = list(r["datasets"].items())
    say(f"  datasets ({len(datasets)}):")
    for path, d in datasets if show_all else datasets[:40]:
        extra = ", ".join(
            x for x in (d["compression"], f"-> {d['link']}" if d["link"] else None) if x
        )
        say(f"    {path}  {tuple(d['shape'])} {d['dtype']}" + (f"  [{extra}]" if extra else ""))
    if len(datasets) > 40 and not show_all:
        say(f"    ... {len(datasets) - 40} more (--all)")
    if r["missing_links"]:
        say(f"  links to files not there ({len(r['missing_links'])}):")
        for path, target in r["missing_links"].items():
            say(f"    {path} -> {target}")
    for w in r["warnings"]:
        say(f"  warning: {w}")
    say("  recipes:")
    for name, fit in r["recipes"].items():
        if fit["applies"] and not fit["has_rule"]:
            state = "runs when named (no applies_to rule: never chosen by default)"
        elif fit["applies"]:
            state = "applies"
        elif fit["runs_by_name"] is True:
            state = "runs when named (" + "; ".join(fit["why_not"]) + ")"
        else:
            state = f"cannot run: {fit['runs_by_name']}"
        say(f"    {name:14} {state}")


# ---------------------------------------------------------------- reprocess
@main.command()
@click.argument("job", type=int)
@_param_option("Change a parameter of the job (repeatable).")
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="NAME=START:STOP:STEP|NAME=V1,V2",
    help="One job per value: an inclusive range (int/float) or a list; several sweeps make "
    "their cartesian product (repeatable; at most 1000 jobs).",
)
@click.option(
    "--recipe",
    default=None,
    help="The recipe file, when the job's recipe is not on the recipe path (same name).",
)
@click.option("--cluster", default="local", show_default=True, help="Cluster profile name or file.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
@click.pass_context
def reprocess(
    ctx: click.Context,
    job: int,
    params: Sequence[str],
    sweeps: Sequence[str],
    recipe: str | None,
    cluster: str,
    as_json: bool,
) -> None:
    """Run JOB's recipe again on its scan with changed parameters: a new job on the same data
    collection, linked to JOB (one per sweep point)."""
    from hpcproc.dispatch.clusters import load_profile, open_client
    from hpcproc.jobs import run_plan
    from hpcproc.reprocess import plan_reprocessing, sweep_options

    changes, swept = _params(params), sweep_options(sweeps)
    with _recording(ctx) as lims:
        # Every check before the cluster starts, and before anything is recorded.
        plans = plan_reprocessing(job, changes, swept, lims=lims, recipe=recipe)
        profile = load_profile(cluster)
        for warning in plans[0].warnings:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        outcomes = []
        with open_client(profile) as client:
            console.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
            for i, r in enumerate(plans, start=1):
                tag = f" [{i}/{len(plans)}]" if len(plans) > 1 else ""
                with _progress() as update:
                    outcomes.append(
                        run_plan(
                            r.plan,
                            lims=lims,
                            client=client,
                            cluster=profile.name,
                            progress=lambda s, d, t, tag=tag: update(s, d, t, f"{s}{tag}"),
                            parent_job=r.parent,
                            display_name=r.display_name,
                        )
                    )
    if as_json:
        _print_outcomes(outcomes, as_json=True)
    else:
        for r, o in zip(plans, outcomes, strict=True):
            _print_outcomes([o], as_json=False)
            changed = ", ".join(f"{k}={v}" for k, v in r.changes.items()) or "same parameters"
            out.print(f"  reprocess of job {r.parent}: {changed}", highlight=False, soft_wrap=True)
    sys.exit(0 if all(o.status == "success" for o in outcomes) else 1)


@main.command()
@click.argument("job", type=int)
@click.option("--by", default=None, help="Who approves (default: the login name).")
@click.option("--cluster", default="local", show_default=True, help="Cluster profile name or file.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def approve(ctx: click.Context, job: int, by: str | None, cluster: str, as_json: bool) -> None:
    """Approve JOB, held by the launcher for a recipe that needs approval, and run it here
    (under the same job id)."""
    import getpass

    from hpcproc.approval import approve as approve_job
    from hpcproc.dispatch.clusters import load_profile, open_client
    from hpcproc.jobs import JobOutcome, execute_plan

    profile = load_profile(cluster)
    # The cluster first: an approved job must not be left queued by a cluster that won't start.
    with _recording(ctx) as lims, open_client(profile) as client:
        plan, recorded = approve_job(lims, job, by or getpass.getuser())
        console.print(f"Job {job} approved", highlight=False)
        with _progress() as update:
            outcome: JobOutcome = execute_plan(
                plan, recorded, lims=lims, client=client, cluster=profile.name, progress=update
            )
    _print_outcomes([outcome], as_json)
    sys.exit(0 if outcome.status == "success" else 1)


@main.command()
@click.argument("job", type=int)
@click.option("--reason", default="", help="Why it is not run (recorded with the job).")
@click.option("--by", default=None, help="Who rejects (default: the login name).")
@click.pass_context
def reject(ctx: click.Context, job: int, reason: str, by: str | None) -> None:
    """Do not run JOB, held for approval: its steps are marked skipped with the reason."""
    import getpass

    from hpcproc.approval import reject as reject_job

    with _recording(ctx) as lims:
        reject_job(lims, job, by or getpass.getuser(), reason)
    out.print(f"job {job} rejected", highlight=False)


@main.command()
@click.argument("job", type=int)
@click.option("--reason", default="", help="Why (recorded with the job).")
@click.option("--by", default=None, help="Who cancels (default: the login name).")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the job's process to stop it.",
)
@click.option(
    "--force",
    is_flag=True,
    help="If no process stops it in time (its process is gone), mark its open steps here.",
)
@click.pass_context
def cancel(
    ctx: click.Context, job: int, reason: str, by: str | None, wait_s: float, force: bool
) -> None:
    """Cancel JOB while it runs, wherever it runs: nothing more is submitted, running steps
    fail with the reason (keeping what they made), steps not started are skipped."""
    import getpass
    import time

    from hpcproc.cancel import cancel_of, close_open_steps, ended, request_cancel
    from hpcproc.errors import ConflictError

    lims = _lims(ctx)
    try:
        try:
            text = request_cancel(lims, job, by or getpass.getuser(), reason)
        except ConflictError:
            text = cancel_of(lims.job(job))  # cancelled already: --force may still close it
            if not (force and text):
                raise
        out.print(f"job {job}: {text}", highlight=False, soft_wrap=True)
        deadline = time.monotonic() + max(0.0, wait_s)
        while not ended(record := lims.job(job)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if ended(record):
            out.print(f"job {job} stopped: {record.status.value}", highlight=False)
            return
        if force:
            n = close_open_steps(lims, job, text)
            out.print(f"job {job}: no process stopped it; {n} open steps marked", highlight=False)
            return
        raise HpcprocError(
            f"job {job}: the cancel is recorded, but no process has stopped it after "
            f"{wait_s:g} s (is the process running it gone? then use --force)"
        )
    finally:
        lims.close()


# ---------------------------------------------------------------- demo
@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the scan (default: $HPCPROC_HOME/demo).",
)
@click.option("--map", "map_shape", default="12x16", show_default=True)
@click.option("--frame", "frame_shape", default="256x256", show_default=True)
@click.option("--cluster", default="local", show_default=True)
@click.option(
    "--serve",
    "serve_port",
    type=int,
    is_flag=False,
    flag_value=8000,
    default=None,
    metavar="[PORT]",
    help="Then serve the results pages (default port 8000) and print their URL.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    directory: Path | None,
    map_shape: str,
    frame_shape: str,
    cluster: str,
    serve_port: int | None,
) -> None:
    """Simulate a scan and run the shipped XRD and XRF recipes on it, recording everything."""
    directory = directory or config.home() / "demo"
    number = 1 + len(list(directory.glob("i18-*.nxs"))) if directory.is_dir() else 1
    console.print(f"Simulating scan {number} in {directory}", highlight=False)
    scan = _simulate(directory, _shape(map_shape), _shape(frame_shape), scan_number=number)
    outcomes = _run(ctx, ["xrd-map", "xrf-map"], scan, {}, cluster)
    _print_outcomes(outcomes, as_json=False)
    lims = ctx.obj["lims_url"] or f"sqlite LIMS under {config.home()}"
    out.print(
        f"Scan: {scan}\nLIMS: {lims}\nSee the jobs with: hpcproc status",
        highlight=False,
        soft_wrap=True,
    )
    ok = all(o.status == "success" for o in outcomes)
    if serve_port is not None:
        _serve_demo(ctx, directory, serve_port, outcomes[0].job_id)
    sys.exit(0 if ok else 1)


def _serve_demo(ctx: click.Context, directory: Path, port: int, job_id: int) -> None:
    """Serve the pages for the demo visit, with a token made for it, until Ctrl-C."""
    import uvicorn

    from hpcproc.web.app import Settings, create_app

    settings = Settings(lims_url=ctx.obj["lims_url"] or "", data_roots=[directory])
    db = _users()
    try:
        token = db.add("demo", ["cm12345-1"])
    finally:
        db.close()
    base = f"http://127.0.0.1:{port}"
    out.print(
        f"Results page: {base}/jobs/{job_id}\nVisit page:   {base}/visits/cm12345-1\n"
        f"Log in at {base}/login with the token {token}\n(Ctrl-C stops the server)",
        highlight=False,
        soft_wrap=True,
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------- status
@main.command()
@click.option(
    "--amqp",
    "amqp_url",
    envvar="HPCPROC_AMQP_URL",
    help="Consume scan messages from this AMQP broker (amqp://user:pw@host:5672/%2F).",
)
@click.option("--queue", default="hpcproc.scans", show_default=True, help="AMQP queue.")
@click.option(
    "--exchange",
    default="gda.scans",
    show_default=True,
    help="Topic exchange acquisition publishes to ('' = none: publish to the queue).",
)
@click.option("--dead-letter", default="hpcproc.scans.dead", show_default=True)
@click.option("--stomp", "stomp_addr", metavar="HOST:PORT", help="Also consume over STOMP.")
@click.option("--stomp-destination", default="/queue/hpcproc.scans", show_default=True)
@click.option(
    "--watch",
    "watch_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Watch this data directory for new scan files (the default source with no broker).",
)
@click.option(
    "--feedback",
    type=click.Choice(["amqp", "log"]),
    default=None,
    help="Where progress and results go (default: amqp with --amqp, else log).",
)
@click.option("--notify", "notify_spec", envvar="HPCPROC_NOTIFY", help="log,smtp://host:port?...")
@click.option("--cluster", default="local", show_default=True, help="Cluster profile name or file.")
@click.option("--max-jobs", default=4, show_default=True, help="Jobs running at once.")
@click.option("--file-wait", default=60.0, show_default=True, help="s to wait for a scan file.")
@click.option("--health-port", type=int, default=None, help="Serve GET /health on this port.")
@click.option("--drain", type=float, default=None, help="s to let running jobs finish on shutdown.")
@click.pass_context
def launcher(
    ctx: click.Context,
    amqp_url: str | None,
    queue: str,
    exchange: str,
    dead_letter: str,
    stomp_addr: str | None,
    stomp_destination: str,
    watch_dir: Path | None,
    feedback: str | None,
    notify_spec: str | None,
    cluster: str,
    max_jobs: int,
    file_wait: float,
    health_port: int | None,
    drain: float | None,
) -> None:
    """Start processing by itself when scans start: a long-running service.

    Listens for scan messages (GDA status messages or bluesky documents) on AMQP and/or STOMP,
    or watches a data directory; records each scan and its jobs in the LIMS and runs them live
    and downstream. SIGTERM or Ctrl-C: stop listening, let running jobs finish, exit.
    """
    import signal
    import threading

    from hpcproc.dispatch.clusters import load_profile, open_client
    from hpcproc.launch.amqp import AmqpSource
    from hpcproc.launch.feedback import AmqpFeedback, LogFeedback
    from hpcproc.launch.file_watch import FileWatch
    from hpcproc.launch.launcher import Launcher
    from hpcproc.launch.service import serve
    from hpcproc.launch.state import LauncherState
    from hpcproc.launch.stomp_source import StompSource
    from hpcproc.notify import notifiers_from_spec

    home = config.home()
    sources: list[Any] = []
    if amqp_url:
        sources.append(
            AmqpSource(amqp_url, queue=queue, exchange=exchange or None, dead_letter=dead_letter)
        )
    if stomp_addr:
        host, _, port = stomp_addr.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"--stomp {stomp_addr!r} is not HOST:PORT")
        sources.append(StompSource(host, int(port), destination=stomp_destination))
    if watch_dir is not None or not sources:
        if watch_dir is None:
            raise InputError("no scan source: give --amqp URL, --stomp HOST:PORT or --watch DIR")
        sources.append(FileWatch(watch_dir, dead_letters=home / "launcher-dead-letters.jsonl"))
    notifiers = notifiers_from_spec(notify_spec)
    profile = load_profile(cluster)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    state = LauncherState(home / "launcher-state.sqlite")
    out = (
        AmqpFeedback(amqp_url)
        if (feedback or ("amqp" if amqp_url else "log")) == "amqp" and amqp_url
        else LogFeedback()
    )
    try:
        with _recording(ctx) as lims, open_client(profile) as client:
            console.print(f"Dask dashboard: {client.dashboard_link}", highlight=False)
            service = Launcher(
                lims=lims,
                client=client,
                state=state,
                feedback=out,
                notifiers=notifiers,
                cluster=profile.name,
                file_wait=file_wait,
                max_jobs=max_jobs,
            )
            for source in sources:
                console.print(f"listening: {source.name}", highlight=False)
            finished = serve(service, sources, stop, health_port=health_port, drain=drain)
            if not finished:
                console.print("jobs still running were left for the next launcher to resume")
    finally:
        out.close()
        state.close()


@main.command()
@click.argument("job", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--limit", default=20, show_default=True, help="Jobs to list.")
@click.option(
    "--follow", "-f", is_flag=True, help="Live progress bars until JOB (or the newest job) ends."
)
@click.option("--visit", help="Jobs of a visit (cm12345-1) or of every visit of a proposal.")
@click.option("--recipe", help="Jobs of this recipe.")
@click.option("--technique", help="ISPyB experiment type of the data collection.")
@click.option("--search", help="Text in the scan's title, command, scan id or sample name.")
@click.option("--since", type=click.DateTime(), help="Jobs created at or after this time.")
@click.option("--until", type=click.DateTime(), help="Jobs created before this time.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["queued", "running", "success", "failed", "skipped"]),
    help="Overall status (repeatable).",
)
@click.pass_context
def status(
    ctx: click.Context,
    job: int | None,
    as_json: bool,
    limit: int,
    follow: bool,
    **filters: Any,
) -> None:
    """List jobs (newest first, filtered), or show one JOB with its steps, messages and files."""
    lims = _lims(ctx)
    if follow:
        _follow(lims, job)
        return
    if job is None:
        from hpcproc.lims.queries import find_jobs

        states = filters.pop("states")
        found = find_jobs(
            lims,
            visit=filters["visit"],
            recipe=filters["recipe"],
            technique=filters["technique"],
            sample_or_title=filters["search"],
            since=filters["since"],
            until=filters["until"],
            status=list(states) or None,
            limit=limit,
        )
        if as_json:
            rows = [
                _plain(j.summary()) | {"visit": j.visit, "cancelled": j.cancelled} for j in found
            ]
            out.print_json(data=rows)
            return
        status_column = Column("status", no_wrap=True)
        table = Table("job", "recipe", status_column, "steps", "created", "visit", "scan")
        for j in found:
            table.add_row(
                str(j.id),
                j.recipe,
                f"{j.status} (cancelled)" if j.cancelled else str(j.status),
                str(j.n_steps),
                f"{j.created:%Y-%m-%d %H:%M:%S}" if j.created else "",
                j.visit or "",
                str(j.scan_file),
            )
        out.print(table)
        _outbox_note()
        return
    record = lims.job(job)
    if as_json:
        out.print_json(data=_plain(record))
        return
    out.print(f"[bold]job {record.id}[/] {record.recipe} ({record.status}) on {record.scan_file}")
    from hpcproc.reprocess import reprocess_of

    if (parent := reprocess_of(record)) is not None:
        out.print(f"reprocess of job {parent}", highlight=False)
    out.print(f"parameters: {json.dumps(record.parameters, default=str)}", highlight=False)
    for s in record.steps:
        times = f"{s.start or ''} -> {s.end or ''}".strip(" ->")
        out.print(f"  step {s.step_id} ({s.uses}): {s.status}  {times}", highlight=False)
        for m in s.messages:
            out.print(f"    {m.severity}: {m.message}", highlight=False)
        for a in s.attachments:
            out.print(f"    file: {a.path}", highlight=False)


def _outbox_note() -> None:
    """A line when the LIMS outbox holds writes a gone process left or writes the LIMS refused:
    the listing above may then miss records."""
    from hpcproc.lims.outbox_files import outbox_files
    from hpcproc.lims.recording import outbox_dir

    directory = outbox_dir(config.home())
    files = outbox_files(directory) if directory.is_dir() else []
    left = sum(f.pending for f in files if not f.in_use)
    refused = sum(f.failed for f in files)
    if left or refused:
        console.print(
            f"[yellow]LIMS outbox:[/] {left} writes of stopped processes wait for the database, "
            f"{refused} were refused: see `hpcproc outbox`",
            highlight=False,
            soft_wrap=True,
        )


def _follow(lims: Any, job: int | None, every: float = 0.5) -> None:
    """Progress bars fed by the LIMS (what any hpcproc process recorded), until the job ends."""
    import time

    from hpcproc import progress

    if job is None:  # the newest job; wait for one if none is recorded yet
        jobs = lims.jobs(limit=1)
        if not jobs:
            console.print("waiting for a job to be recorded...", highlight=False)
        while not jobs:
            time.sleep(every)
            jobs = lims.jobs(limit=1)
        job = jobs[0].id
    with _progress() as update:
        while True:
            record = lims.job(job)
            for s in record.steps:
                p = progress.parse(s.message)
                label = f"{s.step_id} ({s.status})"
                if p is not None:
                    update(s.step_id, p.done, p.total, label)
                elif s.status.final:
                    update(s.step_id, 1, 1, label)
            if record.status.final:
                break
            time.sleep(every)
    out.print(f"job {record.id} {record.recipe}: {record.status}", highlight=False)


def _plain(record: Any) -> Any:
    """Dataclass records -> JSON-ready data."""
    return json.loads(json.dumps(dataclasses.asdict(record), default=str))


# ---------------------------------------------------------------- outbox
@main.command()
@click.option("--refused", "show_refused", is_flag=True, help="List the refused writes.")
@click.option(
    "--replay", is_flag=True, help="Apply what dead processes left pending, now (database up)."
)
@click.option(
    "--retry",
    "retry_file",
    type=click.Path(path_type=Path),
    help="Queue a dead process's refused writes again, then replay.",
)
@click.option(
    "--discard",
    "discard_file",
    type=click.Path(path_type=Path),
    help="Drop a dead process's refused writes (once looked at).",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def outbox(
    ctx: click.Context,
    show_refused: bool,
    replay: bool,
    retry_file: Path | None,
    discard_file: Path | None,
    as_json: bool,
) -> None:
    """The LIMS outbox: writes waiting for the database (it was down) and writes it refused,
    per recording process. Exit 1 while anything is refused, so a check can alert on it."""
    from hpcproc.lims import default_lims_url
    from hpcproc.lims.outbox_files import discard_refused, outbox_files, refused, retry_refused
    from hpcproc.lims.recording import outbox_dir, replay_orphans

    home = config.home()
    directory = outbox_dir(home)
    if discard_file is not None:
        n = discard_refused(discard_file)
        out.print(f"{discard_file}: {n} refused writes dropped", highlight=False, soft_wrap=True)
    if retry_file is not None:
        n = retry_refused(retry_file)
        out.print(f"{retry_file}: {n} refused writes queued again", highlight=False, soft_wrap=True)
    if replay or retry_file is not None or discard_file is not None:
        left = replay_orphans(ctx.obj["lims_url"] or default_lims_url(home), directory)
        out.print(f"replayed: {left} writes still pending", highlight=False)
    files = outbox_files(directory) if directory.is_dir() else []
    if as_json:
        rows = [
            {
                **dataclasses.asdict(f),
                "path": str(f.path),
                "oldest_pending": f.oldest_pending and f.oldest_pending.isoformat(),
                "refused": [dataclasses.asdict(r) for r in refused(f.path)] if show_refused else [],
            }
            for f in files
        ]
        out.print_json(data=json.loads(json.dumps(rows, default=str)))
    else:
        table = Table("file", "process", "pending", "oldest pending", "refused", "last refusal")
        for f in files:
            oldest = f"{f.oldest_pending:%Y-%m-%d %H:%M:%S}" if f.oldest_pending else ""
            table.add_row(
                str(f.path),
                "running" if f.in_use else "gone",
                str(f.pending),
                oldest,
                str(f.failed),
                f.last_error or "",
            )
        out.print(table if files else f"no LIMS outbox files in {directory}", highlight=False)
        for f in files if show_refused else []:
            for r in refused(f.path):
                line = f"{f.path.name} #{r.seq} {r.created:%Y-%m-%d %H:%M:%S} {r.method}: {r.error}"
                out.print(line, highlight=False, soft_wrap=True)
    sys.exit(1 if any(f.failed for f in files) else 0)


# ---------------------------------------------------------------- recipes
@main.group()
def recipes() -> None:
    """List, show, validate recipes and export their parameter schema."""


@recipes.command("list")
def recipes_list() -> None:
    """The recipes found on the recipe path."""
    from hpcproc.recipes import list_recipes

    table = Table("name", "version", "steps", "description", "file")
    for r in list_recipes():
        summary = " ".join(r.description.split()).split(". ")[0].rstrip(".")
        table.add_row(r.name, r.version, ", ".join(s.id for s in r.steps), summary, str(r.source))
    out.print(table)


@recipes.command("show")
@click.argument("recipe")
def recipes_show(recipe: str) -> None:
    """Print a recipe's YAML."""
    from hpcproc.recipes import find_recipe

    r = find_recipe(recipe)
    out.print(f"# {r.source}  sha256 {r.sha256}", highlight=False, soft_wrap=True)
    out.print(r.text, highlight=False, markup=False)


@recipes.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def recipes_validate(files: Sequence[Path]) -> None:
    """Check recipe files; prints file:line:col and exits 2 on the first error of each."""
    from hpcproc.errors import RecipeError
    from hpcproc.recipes import load_recipe

    bad = 0
    for f in files:
        try:
            r = load_recipe(f)
        except RecipeError as exc:
            bad += 1
            console.print(f"[red]invalid:[/] {exc}", highlight=False, soft_wrap=True)
        else:
            out.print(f"ok: {f} (recipe {r.name}, {len(r.steps)} steps)", highlight=False)
    sys.exit(2 if bad else 0)


@recipes.command("schema")
@click.argument("recipe")
def recipes_schema(recipe: str) -> None:
    """The JSON Schema of a recipe's parameters (what a guided-configuration form shows)."""
    from hpcproc.recipes import find_recipe

    out.print_json(data=find_recipe(recipe).parameters_schema())


# ---------------------------------------------------------------- web service
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--data-root",
    "data_roots",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory whose files may be read and served (repeatable; default $HPCPROC_HOME).",
)
@click.option("--cluster", default="local", show_default=True, help="Cluster profile name or file.")
@click.option("--max-jobs", default=2, show_default=True, help="Submitted jobs running at once.")
@click.option(
    "--root-path",
    envvar="HPCPROC_ROOT_PATH",
    default="",
    help="URL path a reverse proxy publishes the service under (/hpcproc); with or without "
    "the proxy taking it off the requests.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    data_roots: Sequence[Path],
    cluster: str,
    max_jobs: int,
    root_path: str,
) -> None:
    """Serve the web pages and the JSON API (tokens: `hpcproc users add`)."""
    import uvicorn

    from hpcproc.web.app import Settings, create_app

    settings = Settings(
        lims_url=ctx.obj["lims_url"] or "",
        data_roots=list(data_roots),
        cluster=cluster,
        max_jobs=max_jobs,
        root_path=root_path,
    )
    # uvicorn's own root_path is left unset: UnderRootPath handles both kinds of proxy.
    uvicorn.run(create_app(settings), host=host, port=port)


@main.group()
def users() -> None:
    """Users of the web service, their visits and tokens."""


def _users():  # -> Users (imported lazily)
    from hpcproc.web.app import Settings
    from hpcproc.web.auth import Users

    return Users(Settings().users_path)


@users.command("add")
@click.argument("name")
@click.option("--visit", "visits", multiple=True, help="A visit (cm12345-1) or proposal (cm12345).")
@click.option("--staff", is_flag=True, help="Facility staff: sees every visit.")
def users_add(name: str, visits: Sequence[str], staff: bool) -> None:
    """Add a user (or add visits to one) and print a new token, shown only this once."""
    db = _users()
    try:
        token = db.add(name, list(visits), staff=staff)
    finally:
        db.close()
    console.print(f"token of {name} (shown only now; keep it secret):", highlight=False)
    out.print(token, highlight=False, markup=False, soft_wrap=True)


@users.command("revoke")
@click.argument("name")
def users_revoke(name: str) -> None:
    """Remove every token of a user."""
    db = _users()
    try:
        n = db.revoke(name)
    finally:
        db.close()
    out.print(f"{name}: {n} token(s) revoked", highlight=False)


if __name__ == "__main__":
    main()
