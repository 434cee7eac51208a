"""XRF element maps: counts in a window of channels around each element line, summed over
detector channels. Line energies come from xraydb, never from a hand-typed table."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator

from hpcproc.errors import StepError
from hpcproc.scaninfo import ScanInfo
from hpcproc.steps.base import FrameStep, Output, StepParams


class XrfWindowsParams(StepParams):
    elements: list[str] = Field(
        description=(
            "Element lines, e.g. ['Co-Ka', 'Fe-Ka'] (or one space-separated string); "
            "'Fe-Ka:30' gives that line a window of its own width (channels)"
        )
    )
    window_width: int = Field(default=40, ge=1, le=4096, description="Window width in channels")
    mca: str = Field(default="/entry/instrument/xspress3/data", description="MCA dataset")
    calibration: str | None = Field(
        default="/entry/instrument/xspress3",
        description="Group holding energy_offset / energy_gain (eV, eV per channel) per channel",
    )
    energy_offset: float | None = Field(default=None, description="eV; overrides the scan's")
    energy_gain: float | None = Field(default=None, gt=0, description="eV/channel; overrides")
    channels: list[int] | None = Field(default=None, description="Detector channels to sum")

    @field_validator("elements", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return v.split() if isinstance(v, str) else v

    @field_validator("elements")
    @classmethod
    def _widths(cls, v: list[str]) -> list[str]:
        for item in v:
            width = item.partition(":")[2]
            if width and not (width.isdigit() and 1 <= int(width) <= 4096):
                raise ValueError(f"{item!r}: the width after ':' must be 1..4096 channels")
        return v

    def lines(self) -> dict[str, int]:
        """Element line -> window width in channels."""
        out = {}
        for item in self.elements:
            line, _, width = item.partition(":")
            out[line] = int(width) if width else self.window_width
        return out


class XrfWindows(FrameStep):
    name: ClassVar[str] = "xrf_windows"
    Params = XrfWindowsParams
    source = "mca"
    description = "Element-window maps from multi-channel XRF spectra"
    inputs = {"mca": "spectra (channels x bins) per scan point"}
    roles = {"mca": "mca", "calibration": "calibration"}
    outputs = {"<element line>": "window counts per point, summed over detector channels"}

    @classmethod
    def input_problems(cls, params: XrfWindowsParams, scan: ScanInfo) -> list[str]:
        problems = super().input_problems(params, scan)
        if params.energy_offset is None or params.energy_gain is None:
            group = params.calibration
            names = [f"{group}/energy_offset", f"{group}/energy_gain"] if group else []
            if not names or any(scan.missing_input(n) for n in names):
                problems.append(_no_calibration(scan, group))
        return problems

    def __init__(self, params: XrfWindowsParams, scan: ScanInfo) -> None:
        super().__init__(params, scan)
        if (why := scan.missing_input(params.mca)) is not None:
            raise StepError(why)
        info = scan.datasets[params.mca]
        if len(info.shape) not in (3, len(scan.shape) + 2):
            raise StepError(
                f"{scan.path.name}: MCA dataset {params.mca} has shape {info.shape}, not "
                "(points, channels, bins) or (ny, nx, channels, bins)"
            )
        n_channels, n_bins = info.shape[-2], info.shape[-1]
        self.channels = np.asarray(
            params.channels if params.channels is not None else range(n_channels), dtype=int
        )
        if self.channels.size == 0 or self.channels.min() < 0 or self.channels.max() >= n_channels:
            raise StepError(f"channels {params.channels} outside 0..{n_channels - 1}")
        offset, gain = self._calibration(n_channels)
        widths = params.lines()
        self.energies = {line: line_energy(line) for line in widths}
        # Window [lo, hi) in bins per (line, detector channel): calibrations differ per channel.
        self.windows: dict[str, list[tuple[int, int, int]]] = {}
        for line, energy in self.energies.items():
            width = widths[line]
            centre = (energy - offset[self.channels]) / gain[self.channels]
            lo = np.clip(np.round(centre - width / 2).astype(int), 0, n_bins)
            hi = np.clip(lo + width, 0, n_bins)
            if np.all(hi <= lo):
                raise StepError(f"{line} at {energy:.0f} eV lies outside the MCA's energy range")
            self.windows[line] = list(
                zip(self.channels.tolist(), lo.tolist(), hi.tolist(), strict=True)
            )

    def _calibration(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (offset eV, gain eV/bin): recipe values override the scan's."""
        p = self.params
        offset = gain = None
        if p.energy_offset is None or p.energy_gain is None:
            offset, gain = read_calibration(self.scan, p.calibration, n_channels)
        if p.energy_offset is not None:
            offset = np.full(n_channels, p.energy_offset)
        if p.energy_gain is not None:
            gain = np.full(n_channels, p.energy_gain)
        return offset, gain

    def output_specs(self) -> list[Output]:
        return [
            Output(line, (), group="maps", units="counts", long_name=f"{line} window counts")
            for line in self.energies
        ]

    def process(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for line, windows in self.windows.items():
            total = np.zeros(len(frames), dtype=np.float64)
            for channel, lo, hi in windows:
                total += frames[:, channel, lo:hi].sum(axis=1, dtype=np.float64)
            out[f"maps/{line}"] = total.astype(np.float32)
        return out


def line_energy(line: str) -> float:
    """Energy in eV of an emission line named like ``Fe-Ka`` (Ka1+Ka2 weighted) or ``Fe-Kb1``."""
    import xraydb

    try:
        element, name = line.split("-")
        lines = xraydb.xray_lines(element)
    except (ValueError, KeyError, TypeError):
        raise StepError(f"bad element line {line!r}: expected like 'Fe-Ka' or 'Pb-La1'") from None
    if name in lines:
        return float(lines[name].energy)
    # A family ("Ka", "Lb") is the intensity-weighted mean of its member lines.
    family = [v for k, v in lines.items() if k.startswith(name) and k[len(name) :].isdigit()]
    if not family:
        known = ", ".join(sorted(lines)) or "none"
        raise StepError(f"no line {name!r} for {element} in xraydb (lines: {known})")
    weights = np.array([v.intensity for v in family])
    return float(np.dot(weights, [v.energy for v in family]) / weights.sum())


def read_calibration(
    scan: ScanInfo, group: str | None, n_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel energy offset and gain from ``group/energy_offset`` and ``group/energy_gain``."""
    from hpcproc.formats import read_array

    names = [f"{group}/energy_offset", f"{group}/energy_gain"] if group else []
    if not names or any(scan.missing_input(n) for n in names):
        raise StepError(_no_calibration(scan, group))
    offset, gain = (np.asarray(read_array(scan, n), dtype=float) for n in names)
    return np.broadcast_to(offset, n_channels), np.broadcast_to(gain, n_channels)


def _no_calibration(scan: ScanInfo, group: str | None) -> str:
    where = f" at {group}/energy_offset|energy_gain" if group else ""
    return (
        f"{scan.path.name}: no energy calibration of the MCA{where}; give the parameters "
        "energy_gain (eV per bin) and energy_offset (eV)"
    )
