"""Which kind of file this is, from its first bytes (and, for text, its first lines)."""

from __future__ import annotations

from pathlib import Path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# What hpcproc reads, as said to a person whose file is of another kind.
READS = (
    "NeXus/HDF5, detector images through fabio (TIFF, CBF, EDF, ...), XDI, SPEC and XAFS "
    "column text files"
)
_IMAGE_SUFFIXES = {
    ".tif",
    ".tiff",
    ".cbf",
    ".edf",
    ".img",
    ".mccd",
    ".mar3450",
    ".mar2300",
    ".sfrm",
    ".gfrm",
    ".kccd",
    ".spe",
    ".pnm",
    ".png",
    ".jpg",
    ".jpeg",
    ".fit",
    ".fits",
    ".msk",
    ".npy",
    ".raw",
    ".esperanto",
}
_TEXT_SUFFIXES = {".dat", ".txt", ".xmu", ".csv", ".asc", ".nor", ".chi"}


def sniff(path: Path) -> str | None:
    """``hdf5``, ``image``, ``xdi``, ``spec``, ``columns`` or None (a kind hpcproc does not
    read)."""
    try:
        with open(path, "rb") as fd:
            head = fd.read(4096)
    except OSError:
        return None
    # HDF5's signature is at 0, or after a user block of 512, 1024, 2048, ... bytes
    if any(head[o : o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
        return "hdf5"
    if (
        head[:4] in (b"II*\x00", b"MM\x00*")
        or head.startswith(b"###CBF")
        or (head.startswith(b"{") and b"HeaderID" in head[:2048])
    ):
        return "image"
    if head.startswith(b"# XDI/"):
        return "xdi"
    if head.startswith((b"#F ", b"#S ")) or (head.startswith(b"#") and b"\n#S " in head):
        return "spec"
    suffix = path.suffix.lower()
    if suffix in _IMAGE_SUFFIXES:
        return "image"
    if suffix in _TEXT_SUFFIXES and _looks_like_columns(head):
        return "columns"
    return None


def _looks_like_columns(head: bytes) -> bool:
    """Text whose lines (past # comments) are rows of two or more numbers."""
    try:
        lines = head.decode("utf-8").splitlines()[:-1]  # the last may be cut
    except UnicodeDecodeError:
        return False
    rows = [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
    if not rows:
        return False
    try:
        return all(len(r) >= 2 and all(float(v) == float(v) for v in r) for r in rows[:20])
    except ValueError:
        return False
