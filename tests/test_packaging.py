"""A wheel built from this checkout works on its own: the shipped recipes, cluster profiles,
environments and notebooks and the web pages' templates come with it (a facility installs with
``pip install .``, not in editable mode). The wheel goes into a fresh venv that sees this
machine's packages for the dependencies; the editable install of this checkout is hidden there
(a sitecustomize drops its import finder), so what runs is the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HIDE_CHECKOUT = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__
                    and "__editable__" not in getattr(f, "__name__", "")]
sys.path[:] = [p for p in sys.path if p.rstrip("/") != {root!r}]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's bin directory, with the wheel built from this checkout installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if built.returncode != 0 and "No matching distribution" in built.stderr:
        pytest.skip(f"cannot build a wheel here (no build backend): {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("hpcproc-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    py = bin_dir / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "sitecustomize.py").write_text(HIDE_CHECKOUT.format(root=str(ROOT)))
    target = subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check", wheel],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert target.returncode == 0, target.stderr
    assert sysconfig.get_paths()["purelib"] != site
    return bin_dir


def _run(bin_dir: Path, *argv: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPROC_")}
    env.update(HPCPROC_HOME=str(home), PYTHONPATH="")
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_is_what_runs(installed: Path, tmp_path: Path) -> None:
    code = "import hpcproc, hpcproc.shipped as s; print(hpcproc.__file__, s.shipped_dir('recipes'))"
    r = _run(installed, installed / "python", "-c", code, cwd=tmp_path, home=tmp_path / "h")
    assert r.returncode == 0, r.stderr
    module, recipes = r.stdout.split()
    assert str(installed.parent) in module and str(ROOT) not in module
    assert recipes.endswith("hpcproc/_shipped/recipes") and str(installed.parent) in recipes


def test_shipped_files_come_with_the_wheel(installed: Path, tmp_path: Path) -> None:
    r = _run(
        installed, installed / "hpcproc", "recipes", "show", "xrd-map", cwd=tmp_path, home=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"# {installed.parent}") and "xrd_integrate" in r.stdout
    code = (
        "import json; from hpcproc.recipes import list_recipes;"
        "print(json.dumps([r.name for r in list_recipes()]))"
    )
    r = _run(installed, installed / "python", "-c", code, cwd=tmp_path, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    code = (
        "from hpcproc.dispatch.clusters import load_profile; from hpcproc.envs import find_env;"
        "from hpcproc.steps.notebook import find_notebook; from hpcproc.web.pages import HERE;"
        "print(load_profile('slurm').kind, find_env('notebook').spec.kind,"
        " find_notebook('xrf_element_maps.ipynb').name,"
        " sorted(p.name for p in (HERE / 'templates').glob('*.html'))[0],"
        " (HERE / 'static' / 'job.js').is_file())"
    )
    r = _run(installed, installed / "python", "-c", code, cwd=tmp_path, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["slurm", "venv", "xrf_element_maps.ipynb", "base.html", "True"]


def test_demo_runs_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    r = _run(
        installed, installed / "hpcproc", "demo", "--map", "4x5", "--frame", "64x64",
        cwd=tmp_path, home=tmp_path / "home",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "xrd-map" in r.stdout and "xrf-map" in r.stdout
    assert list((tmp_path / "home").rglob("processed/*.nxs")), r.stdout
