"""Azimuthal integration of diffraction frames with pyFAI (1D pattern, optional 2D cake)."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, FilePath

from hpcproc.errors import StepError
from hpcproc.formats import open_frames, read_array
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps import masks, orientation
from hpcproc.steps.base import Axis, FrameStep, Output, StepParams
from hpcproc.steps.orientation import FLIPS as _FLIPS

FIRST_FRAME_WAIT = 60.0  # s a live scan's first frame is waited for (orientation, mask)


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
    flip: Literal["auto", "none", "ud", "lr", "udlr"] = Field(
        default="auto",
        description=(
            "Flip each frame before integration (detector orientation vs. the PONI); auto: "
            "the orientation whose rings are straightest in the cake of the first frame"
        ),
    )
    mask: FilePath | None = Field(default=None, description="Mask file (non-zero = masked)")
    pixel_mask: str | None = Field(
        default=None, description="Dataset of the detector's own pixel mask (non-zero = masked)"
    )
    mask_invalid: bool = Field(
        default=True,
        description="Also mask pixels negative or saturated in the first frame (module gaps)",
    )
    polarization_factor: float | None = Field(default=None, ge=-1, le=1)


class XrdIntegrate(FrameStep):
    name: ClassVar[str] = "xrd_integrate"
    Params = XrdIntegrateParams
    description = "pyFAI azimuthal integration of each frame"
    inputs = {"frames": "2D detector frames, one per scan point", "pixel_mask": "pixel mask"}
    roles = {"frames": "frames", "pixel_mask": "mask"}
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
        )  # orientation and invalid pixels, read from a first frame, hold for the detector

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
        self.method = _METHODS[p.method]
        shape = self._frame_shape()
        if self.ai.detector.shape is not None and tuple(self.ai.detector.shape) != shape:
            raise StepError(
                f"PONI file {p.poni.name}: detector {self.ai.detector.name} is "
                f"{'x'.join(map(str, self.ai.detector.shape))} pixels, the frames of "
                f"{p.frames} are {'x'.join(map(str, shape))}"
            )
        first = self._first_frame() if p.flip == "auto" or p.mask_invalid else None
        self.mask, self.notes = masks.combine(
            shape,
            file=p.mask,
            dataset=read_array(scan, p.pixel_mask) if p.pixel_mask else None,
            first=first if p.mask_invalid else None,
        )
        self.warnings: list[str] = []
        flip = p.flip
        if flip == "auto":
            if first is None:
                flip = "none"
                self.warnings.append("orientation auto: no frame to look at yet; taken as none")
            else:
                choice = orientation.choose(self.ai, first, self.mask, self.method)
                flip = choice.flip
                self.notes |= choice.notes()
                if not choice.clear:
                    self.warnings.append(choice.say())
        self.notes["flip"] = flip
        self.flip = _FLIPS[flip]
        if self.mask is not None and self.flip:  # masks are in the file's orientation
            self.mask = np.flip(self.mask, self.flip)
        # Integrating an empty frame builds pyFAI's engine once per worker (1-2 s for a 3.7 Mpx
        # frame) and gives the radial and azimuthal axes before the first real frame arrives.
        blank = np.zeros(shape, dtype=np.float32)
        self.radial = self._integrate1d(blank).radial.astype(np.float64)
        self.azimuthal = None
        if p.cake:
            self.azimuthal = self._integrate2d(blank).azimuthal.astype(np.float64)

    def _frame_shape(self) -> tuple[int, ...]:
        if (why := self.scan.missing_input(self.params.frames)) is not None:
            raise StepError(why)
        return tuple(self.scan.datasets[self.params.frames].shape[-2:])

    def _first_frame(self, wait: float = FIRST_FRAME_WAIT) -> np.ndarray | None:
        """Frame 0 (a live scan's writer may not have written it yet: wait a while)."""
        reader = open_frames(self.scan, self.params.frames, 2)
        try:
            deadline = time.monotonic() + wait
            while reader.n_frames == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
                reader.refresh()
            if reader.n_frames == 0:
                return None
            return reader.read_batch([0])[0]
        finally:
            reader.close()

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
_AXIS_NAME = {"q_nm^-1": "q", "q_A^-1": "q", "2th_deg": "two_theta"}
_AXIS_UNITS = {"q_nm^-1": "nm^-1", "q_A^-1": "angstrom^-1", "2th_deg": "deg"}
