"""Which way up a detector image is, relative to its PONI calibration.

A PONI file does not say how its calibration image was read: Dioptas flips images up-down
from fabio's reading, pyFAI-calib2 does not. Integrated the wrong way, a calibrant's rings are
bent in the cake (2θ against azimuth) and the 1-D pattern smears. So, on a first frame, every
flip is tried and the one whose rings are straightest wins: for each of the strongest rings,
the spread over azimuth of the radial position of its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLIPS: dict[str, tuple[int, ...]] = {"none": (), "ud": (0,), "lr": (1,), "udlr": (0, 1)}
CLEAR = 1.5  # the best spread must be this many times below the next one to be a clear choice
N_RINGS = 3
NPT_RAD, NPT_AZIM = 1000, 90
HALF_WINDOW = 8  # radial bins each side of a ring's peak looked at in each azimuth bin


@dataclass(frozen=True)
class Choice:
    flip: str
    spreads: dict[str, float]  # flip -> ring spread (degrees 2θ); nan when no ring was found

    @property
    def margin(self) -> float:
        ranked = sorted(v for v in self.spreads.values() if np.isfinite(v))
        if len(ranked) < 2 or ranked[0] <= 0:
            return float("inf") if len(ranked) >= 2 else 1.0
        return ranked[1] / ranked[0]

    @property
    def clear(self) -> bool:
        return self.margin >= CLEAR

    def notes(self) -> dict[str, Any]:
        return {
            "orientation_auto": self.flip,
            "orientation_margin": round(self.margin, 3) if np.isfinite(self.margin) else -1.0,
            **{f"ring_spread_deg_{k}": round(v, 4) for k, v in self.spreads.items()},
        }

    def say(self) -> str:
        spreads = ", ".join(f"{k} {v:.3f}°" for k, v in self.spreads.items())
        return (
            f"orientation auto: no flip is clearly better (ring spread {spreads}); took "
            f"{self.flip}: set flip if the geometry was calibrated on a flipped image"
        )


def ring_spread(ai: Any, frame: np.ndarray, mask: np.ndarray | None, method: Any) -> float:
    """Mean spread over azimuth (degrees 2θ) of the positions of the strongest rings."""
    from scipy.signal import find_peaks

    res = ai.integrate2d(
        frame.astype(np.float32), NPT_RAD, NPT_AZIM, unit="2th_deg", method=method, mask=mask
    )
    cake = np.asarray(res.intensity, dtype=np.float64)
    radial = np.asarray(res.radial)
    valid = cake > 0  # pyFAI leaves bins no pixel reached at 0
    counts = valid.sum(axis=0)
    profile = np.where(counts > 0, (cake * valid).sum(axis=0) / np.maximum(counts, 1), 0.0)
    background = np.median(profile[counts > 0]) if np.any(counts > 0) else 0.0
    peaks, props = find_peaks(profile, prominence=max(1e-12, 0.05 * (profile.max() - background)))
    if peaks.size == 0:
        return float("nan")
    strongest = peaks[np.argsort(props["prominences"])[::-1][:N_RINGS]]
    spreads = []
    for p in strongest:
        lo, hi = max(0, p - HALF_WINDOW), min(cake.shape[1], p + HALF_WINDOW + 1)
        window = cake[:, lo:hi]
        rows = np.all(valid[:, lo:hi], axis=1)
        if np.count_nonzero(rows) < 3:
            continue
        positions = radial[lo + np.argmax(window[rows], axis=1)]
        spreads.append(float(np.std(positions)))
    return float(np.mean(spreads)) if spreads else float("nan")


def choose(ai: Any, frame: np.ndarray, mask: np.ndarray | None, method: Any) -> Choice:
    """The flip whose rings are straightest; ``none`` unless another is clearly better."""
    spreads = {}
    for name, axes in FLIPS.items():
        flipped = np.flip(frame, axes) if axes else frame
        flipped_mask = np.flip(mask, axes) if (axes and mask is not None) else mask
        spreads[name] = ring_spread(ai, flipped, flipped_mask, method)
    finite = {k: v for k, v in spreads.items() if np.isfinite(v)}
    best = min(finite, key=finite.get) if finite else "none"
    choice = Choice(best, spreads)
    if best != "none" and not choice.clear:
        choice = Choice("none", spreads)
    return choice
