"""Which detector pixels to leave out of an integration: a mask file, the detector's own pixel
mask, and the pixels a first frame shows as invalid (negative: Pilatus/Eiger module gaps and
dead pixels; at the top of the integer range: saturated or flagged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcproc.errors import StepError


def load_file(path: Path) -> np.ndarray:
    """A mask image fabio reads (EDF, TIFF, ...) or a .npy array; non-zero = masked."""
    if path.suffix == ".npy":
        return np.load(path) != 0
    import fabio

    try:
        return fabio.open(str(path)).data != 0
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError(f"mask file {path}: not an image fabio can read ({exc})") from None


def invalid(frame: np.ndarray) -> np.ndarray:
    """Pixels a frame marks as not measured: negative, or the dtype's largest value."""
    bad = np.zeros(frame.shape, dtype=bool)
    if frame.dtype.kind in "if":
        bad |= frame < 0
    if frame.dtype.kind in "ui":
        bad |= frame == np.iinfo(frame.dtype).max
    if frame.dtype.kind == "f":
        bad |= ~np.isfinite(frame)
    return bad


def combine(
    shape: tuple[int, ...],
    *,
    file: Path | None = None,
    dataset: np.ndarray | None = None,
    first: np.ndarray | None = None,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The union of the masks given (None when nothing is masked) and what each masked."""
    notes: dict[str, Any] = {}
    mask = np.zeros(shape, dtype=bool)
    for name, part in (
        ("mask_file", load_file(file) if file is not None else None),
        ("pixel_mask", _frame_of(dataset) if dataset is not None else None),
        ("invalid_in_first_frame", invalid(first) if first is not None else None),
    ):
        if part is None:
            continue
        if part.shape != shape:
            raise StepError(f"{name} has shape {part.shape}, the frames {shape}")
        notes[f"masked_{name}"] = int(np.count_nonzero(part))
        mask |= part
    return (mask if mask.any() else None), notes


def _frame_of(dataset: np.ndarray) -> np.ndarray:
    """A pixel mask stored once (h, w) or per frame (n, h, w): the first."""
    data = np.asarray(dataset)
    while data.ndim > 2:
        data = data[0]
    return data != 0
