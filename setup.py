"""Build hook. The recipes, cluster profiles, environments and notebooks that hpcproc ships live
at the top of the repository, where a facility's compute team edits them; a wheel carries a copy
inside the package (``hpcproc/_shipped/<name>``), which :func:`hpcproc.shipped.shipped_dir`
finds. An editable install reads them from the checkout. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("recipes", "clusters", "envs", "notebooks")


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            target = Path(self.build_lib) / "hpcproc" / "_shipped" / name
            shutil.rmtree(target, ignore_errors=True)
            skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
            shutil.copytree(root / name, target, ignore=skip)


setup(cmdclass={"build_py": BuildPy})
