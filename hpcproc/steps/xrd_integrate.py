"""Azimuthal integration of diffraction frames with pyFAI (1D pattern, optional 2D cake)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, FilePath

from hpcproc.errors import StepError
from hpcproc.nexus.scan import ScanInfo
from hpcproc.steps.base import Axis, FrameStep, Output, StepParams


class XrdIntegrateParams(StepParams):
    poni: FilePath = Field(description="Detector geometry: a pyFAI PONI file")
    frames: str = Field(
        default="/entry/instrument/excalibur/data", description="Dataset of detector frames"
    )
    npt: int = Field(default=2000, ge=10, le=100_000, description="Number of radial bins")
    unit: Literal["q_nm^-1", "q_A^-1", "2th_deg"] = Field(
        default="q_nm^-1", description="Radial unit"
    )
    method: Literal["csr", "histogram", "lut"] = Field(
        default="csr", description="pyFAI engine: csr (pixel splitting) or histogram (fastest)"
    )
    cake: bool = Field(default=False, description="Also write a 2D cake (radial x azimuthal)")
    npt_azim: int = Field(default=360, ge=4, le=3600, description="Azimuthal bins of the cake")
    flip: Literal["none", "ud", "lr", "udlr"] = Field(
        default="none",
        description="Flip each frame before integration (detector orientation vs. the PONI)",
    )
    mask: FilePath | None = Field(default=None, description="Mask file (non-zero = masked)")
    polarization_factor: float | None = Field(default=None, ge=-1, le=1)


class XrdIntegrate(FrameStep):
    name: ClassVar[str] = "xrd_integrate"
    Params = XrdIntegrateParams
    description = "pyFAI azimuthal integration of each frame"
    inputs = {"frames": "2D detector frames, one per scan point"}
    outputs = {"I": "integrated pattern per point", "cake": "2D cake per point (if cake)"}

    @classmethod
    def reuse_key(cls, params: XrdIntegrateParams, scan: ScanInfo) -> tuple:
        # The engine depends on the geometry, the parameters and the frame shape only. The
        # PONI file's modification time is in the key, so a recalibration is picked up.
        info = scan.datasets.get(params.frames)
        return (
            info.shape[1:] if info else None,
            params.poni.stat().st_mtime_ns,
            params.mask.stat().st_mtime_ns if params.mask else None,
        )

    def __init__(self, params: XrdIntegrateParams, scan: ScanInfo) -> None:
        super().__init__(params, scan)
        import pyFAI  # heavy import, needed only where the step runs

        p = params
        try:
            self.ai = pyFAI.load(str(p.poni))
        except (OSError, ValueError, KeyError) as exc:
            raise StepError(f"cannot read PONI file {p.poni}: {exc}") from exc
        # pyFAI accepts any text as a PONI file and fills in nothing: check what we need.
        missing = [
            name
            for name, value in (
                ("pixel size", self.ai.detector.pixel1),
                ("wavelength", self.ai.wavelength if p.unit.startswith("q") else 0),
            )
            if value is None
        ]
        if missing:
            raise StepError(f"PONI file {p.poni} has no {' and no '.join(missing)}")
        self.mask = _load_mask(p.mask) if p.mask is not None else None
        self.method = _METHODS[p.method]
        self.flip = _FLIPS[p.flip]
        # Integrating an empty frame builds pyFAI's engine once per worker (1-2 s for a 3.7 Mpx
        # frame) and gives the radial and azimuthal axes before the first real frame arrives.
        shape = self.ai.detector.shape or self._frame_shape()
        blank = np.zeros(shape, dtype=np.float32)
        self.radial = self._integrate1d(blank).radial.astype(np.float64)
        self.azimuthal = None
        if p.cake:
            self.azimuthal = self._integrate2d(blank).azimuthal.astype(np.float64)

    def _frame_shape(self) -> tuple[int, ...]:
        info = self.scan.datasets.get(self.params.frames)
        if info is None:
            raise StepError(f"dataset {self.params.frames} not found in {self.scan.path}")
        return info.shape[-2:]

    def _integrate1d(self, frame: np.ndarray):  # -> pyFAI Integrate1dResult
        p = self.params
        return self.ai.integrate1d(
            frame,
            p.npt,
            unit=p.unit,
            method=self.method,
            mask=self.mask,
            polarization_factor=p.polarization_factor,
        )

    def _integrate2d(self, frame: np.ndarray):  # -> pyFAI Integrate2dResult
        p = self.params
        return self.ai.integrate2d(
            frame,
            p.npt,
            p.npt_azim,
            unit=p.unit,
            method=self.method,
            mask=self.mask,
            polarization_factor=p.polarization_factor,
        )

    def output_specs(self) -> list[Output]:
        p = self.params
        radial = Axis(_AXIS_NAME[p.unit], self.radial, _AXIS_UNITS[p.unit])
        specs = [
            Output(
                "I",
                (p.npt,),
                group="integrated",
                units="counts",
                axes=(radial,),
                long_name="azimuthally integrated intensity",
            ),
        ]
        if self.azimuthal is not None:
            chi = Axis("chi", self.azimuthal, "deg")
            specs.append(
                Output(
                    "I",
                    (p.npt_azim, p.npt),
                    group="cake",
                    units="counts",
                    axes=(chi, radial),
                    long_name="cake (azimuth x radial)",
                )
            )
        return specs

    def process(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        n = len(frames)
        out = {"integrated/I": np.empty((n, self.params.npt), np.float32)}
        if self.azimuthal is not None:
            out["cake/I"] = np.empty((n, self.params.npt_azim, self.params.npt), np.float32)
        for i, frame in enumerate(frames):
            if self.flip:
                frame = np.flip(frame, self.flip)
            out["integrated/I"][i] = self._integrate1d(frame).intensity
            if self.azimuthal is not None:
                out["cake/I"][i] = self._integrate2d(frame).intensity
        return out


# pyFAI method triplets (pixel splitting, algorithm, implementation).
_METHODS = {
    "csr": ("bbox", "csr", "cython"),
    "lut": ("bbox", "lut", "cython"),
    "histogram": ("no", "histogram", "cython"),
}
_FLIPS: dict[str, tuple[int, ...]] = {"none": (), "ud": (0,), "lr": (1,), "udlr": (0, 1)}
_AXIS_NAME = {"q_nm^-1": "q", "q_A^-1": "q", "2th_deg": "two_theta"}
_AXIS_UNITS = {"q_nm^-1": "nm^-1", "q_A^-1": "angstrom^-1", "2th_deg": "deg"}


def _load_mask(path: Path) -> np.ndarray:
    """A mask image fabio reads (EDF, TIFF, ...) or a .npy array; non-zero = masked."""
    if path.suffix == ".npy":
        return np.load(path) != 0
    import fabio

    return fabio.open(str(path)).data != 0
