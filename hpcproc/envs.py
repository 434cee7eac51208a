"""Named software environments (envs/*.yaml) that a step's program or notebook runs in.

A recipe step names an environment (``resources.env`` or a step's ``env`` parameter) instead of
a path, so the same recipe runs on any machine: the facility's env files say how to get it.
Kinds:

* ``venv``: a virtualenv built here on first use (``python -m venv`` + ``pip install``), kept
  under ``$HPCPROC_HOME/envs/<name>`` unless ``path`` says where; rebuilt when its spec changes.
* ``conda``: an existing conda env (``name`` or ``prefix``); with ``environment`` (an
  environment.yml beside the env file) it is created on first use. Used only where conda exists.
* ``module``: environment-modules lines (``load``) run in a login shell before the command.
* ``current``: the interpreter hpcproc runs in.

Env files are looked for in ``$HPCPROC_ENV_PATH`` (os.pathsep-separated) and then the shipped
``envs/``; problems in them are reported as file:line:col like recipes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcproc.config import home
from hpcproc.errors import InputError, StepError
from hpcproc.recipes.loader import load_model
from hpcproc.recipes.model import LocatedValueError
from hpcproc.shipped import shipped_dir

log = logging.getLogger(__name__)

ENV_PATH = "HPCPROC_ENV_PATH"
MARKER = ".hpcproc-env.json"  # in a built venv: the hash of the spec it was built from
BUILD_TIMEOUT = 3600.0  # s for one venv or conda build step

# Keys that only some kinds may use (the rest are for every kind).
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "venv": ("requirements", "requirements_file", "python", "path", "system_site_packages"),
    "conda": ("name", "prefix", "environment"),
    "module": ("load", "python"),
    "current": (),
}


class EnvSpec(BaseModel):
    """What an env file may say; which keys apply depends on ``kind``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["venv", "conda", "module", "current"]
    description: str = ""
    python: str = Field(
        default="python3", description="venv: interpreter to build it with; module: its name"
    )
    # venv
    requirements: list[str] = Field(default_factory=list, description="pip requirement specs")
    requirements_file: str | None = Field(default=None, description="relative to the env file")
    path: str | None = Field(default=None, description="default $HPCPROC_HOME/envs/<name>")
    system_site_packages: bool = False
    # conda
    name: str | None = None
    prefix: str | None = None
    environment: str | None = Field(default=None, description="environment.yml to create it")
    # module
    load: list[str] = Field(default_factory=list, description="shell lines, e.g. module load x")

    @model_validator(mode="after")
    def _fits_kind(self) -> EnvSpec:
        allowed = {*_KIND_KEYS[self.kind], "kind", "description"}
        for key in self.model_fields_set:
            if key not in allowed:
                kinds = [k for k, keys in _KIND_KEYS.items() if key in keys]
                raise LocatedValueError(
                    f"{key!r} is for kind {' or '.join(kinds)}, not {self.kind}", (key,), "key"
                )
        if self.kind == "conda" and (self.name is None) == (self.prefix is None):
            raise LocatedValueError("a conda env needs one of 'name' or 'prefix'", ("kind",))
        if self.kind == "module" and not self.load:
            raise LocatedValueError(
                "a module env needs 'load': the lines to run, e.g. [module load python/3.11]",
                ("kind",),
            )
        return self


def env_dirs() -> list[Path]:
    """``$HPCPROC_ENV_PATH`` entries first, then the shipped ``envs/``."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    dirs.append(shipped_dir("envs"))
    return list(dict.fromkeys(dirs))


def known_envs() -> list[str]:
    return sorted({p.stem for d in env_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def find_env(name: str) -> Env:
    """The env called ``name`` (envs/<name>.yaml), or the env file at a path ending in .yaml."""
    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        if not name or os.sep in name:
            raise InputError(f"bad environment name {name!r}")
        found = [d / f"{name}.yaml" for d in env_dirs()]
        path = next((p for p in found if p.is_file()), found[-1])
        if not path.is_file():
            raise InputError(f"no environment named {name!r} (known: {', '.join(known_envs())})")
    elif not path.is_file():
        raise InputError(f"no environment file {path}")
    return Env(path.stem, load_model(path, EnvSpec), path.resolve())


@dataclass(frozen=True)
class Env:
    """A loaded env file: where the env lives, how to build it, how to run a command in it."""

    name: str
    spec: EnvSpec
    file: Path

    # ---- where

    @property
    def root(self) -> Path | None:
        """The env's directory where known before running anything (venv path, conda prefix)."""
        s = self.spec
        if s.kind == "venv":
            return Path(s.path).expanduser() if s.path else home() / "envs" / self.name
        if s.kind == "conda" and s.prefix:
            return Path(s.prefix).expanduser()
        if s.kind == "current":
            return Path(sys.prefix)
        return None

    @property
    def python(self) -> str:
        """The env's interpreter: a path for venv/current, a name resolved inside the others."""
        if self.spec.kind == "venv":
            return str(self.root / "bin" / "python")  # type: ignore[operator]
        if self.spec.kind == "current":
            return sys.executable
        return "python" if self.spec.kind == "conda" else self.spec.python

    def spec_hash(self) -> str:
        """Changes when anything the venv is built from changes (incl. a requirements file)."""
        data: dict[str, Any] = self.spec.model_dump(exclude={"description"})
        if self.spec.requirements_file:
            data["requirements_file_text"] = self._relative(self.spec.requirements_file).read_text()
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def _relative(self, name: str) -> Path:
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.file.parent / p

    # ---- building

    def ensure(self) -> Path:
        """Make the env usable (building a venv or conda env if missing or out of date) and
        return its prefix. Safe to call from many workers at once: one builds, the rest wait."""
        kind = self.spec.kind
        if kind == "current":
            return Path(sys.prefix)
        if kind == "venv":
            return self._ensure_venv()
        if kind == "conda":
            return self._ensure_conda()
        return self._probe_prefix()

    def _ensure_venv(self) -> Path:
        root = self.root
        assert root is not None
        want = self.spec_hash()
        if self._built(root) == want:
            return root
        root.parent.mkdir(parents=True, exist_ok=True)
        with _locked(root.parent / f".{root.name}.lock"):
            if self._built(root) == want:  # another worker built it while we waited
                return root
            if root.exists():
                if not (root / "pyvenv.cfg").is_file():
                    raise StepError(f"env {self.name!r}: {root} exists and is not a venv")
                log.info("env %s: spec changed or build unfinished, rebuilding %s", self.name, root)
                shutil.rmtree(root)
            started = time.monotonic()
            base = shutil.which(self.spec.python) or self.spec.python
            venv = [base, "-m", "venv", str(root)]
            if self.spec.system_site_packages:
                venv.append("--system-site-packages")
            _check(venv, f"env {self.name!r}: creating the venv")
            wanted = list(self.spec.requirements)
            if self.spec.requirements_file:
                wanted += ["-r", str(self._relative(self.spec.requirements_file))]
            if wanted:
                pip = [self.python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
                _check([*pip, *wanted], f"env {self.name!r}: pip install")
            (root / MARKER).write_text(
                json.dumps({"spec_sha256": want, "file": str(self.file), "built": time.time()})
            )
            log.info("env %s built in %.0f s at %s", self.name, time.monotonic() - started, root)
        return root

    @staticmethod
    def _built(root: Path) -> str | None:
        try:
            return json.loads((root / MARKER).read_text()).get("spec_sha256")
        except (OSError, ValueError, AttributeError):
            return None

    def _ensure_conda(self) -> Path:
        conda = _conda()
        s = self.spec
        if s.prefix and Path(s.prefix).expanduser().is_dir():
            return Path(s.prefix).expanduser()
        if s.name is not None:
            try:
                return self._probe_prefix()
            except StepError:
                if not s.environment:
                    raise
        if not s.environment:
            raise StepError(f"env {self.name!r}: conda prefix {s.prefix} does not exist")
        where = ["-p", str(Path(s.prefix).expanduser())] if s.prefix else ["-n", str(s.name)]
        lock_dir = home() / "envs"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with _locked(lock_dir / f".conda-{self.name}.lock"):
            if s.prefix and Path(s.prefix).expanduser().is_dir():
                return Path(s.prefix).expanduser()
            env_file = str(self._relative(s.environment))
            _check([conda, "env", "create", "-y", *where, "-f", env_file], f"env {self.name!r}")
        return self._probe_prefix()

    def _probe_prefix(self) -> Path:
        """sys.prefix of the env's python, found by running it (checks the env works)."""
        argv = self.command([self.python, "-c", "import sys; print(sys.prefix)"])
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=300, env=self.environ()
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StepError(f"env {self.name!r}: cannot run {argv[0]}: {exc}") from None
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise StepError(f"env {self.name!r} does not work: {_last_line(out.stderr)}")
        return Path(lines[-1])

    # ---- running

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as a command line that runs it inside this env (no shell, except the login
        shell of a module env, where every word is quoted)."""
        if not argv:
            raise ValueError("empty command")
        kind = self.spec.kind
        if kind == "venv":
            first = argv[0]
            if first in ("python", "python3"):
                return [self.python, *argv[1:]]
            local = self.root / "bin" / first  # type: ignore[operator]
            return [str(local), *argv[1:]] if os.sep not in first and local.exists() else argv
        if kind == "current":
            return [sys.executable, *argv[1:]] if argv[0] in ("python", "python3") else argv
        if kind == "conda":
            s = self.spec
            where = ["-p", str(Path(s.prefix).expanduser())] if s.prefix else ["-n", str(s.name)]
            return [_conda(), "run", "--no-capture-output", *where, *argv]
        lines = "; ".join(self.spec.load)
        return ["bash", "-lc", f"{lines}; exec {shlex.join(argv)}"]

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Process environment for commands in this env: a venv's bin first on PATH, and no
        PYTHONPATH/PYTHONHOME leaking this interpreter's packages into it."""
        env = dict(os.environ if base is None else base)
        if self.spec.kind == "current":
            return env
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        if self.spec.kind == "venv":
            env["VIRTUAL_ENV"] = str(self.root)
            env["PATH"] = os.pathsep.join(
                [str(self.root / "bin"), *filter(None, [env.get("PATH")])]  # type: ignore[operator]
            )
        return env


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two workers never build the same env at once."""
    with open(path, "a") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _conda() -> str:
    exe = os.environ.get("CONDA_EXE") or shutil.which("conda") or shutil.which("mamba")
    if not exe:
        raise StepError("conda is not installed here (no conda or mamba on PATH, no $CONDA_EXE)")
    return exe


def _check(argv: list[str], what: str) -> None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepError(f"{what}: {exc}") from None
    if out.returncode != 0:
        raise StepError(
            f"{what} failed (exit code {out.returncode}): {_last_line(out.stderr or out.stdout)}"
        )


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "no output"
