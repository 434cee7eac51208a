"""GDA-style scan status messages: one JSON object per status change of a scan.

    {"scanId": "i18-12345", "status": "RUNNING", "filePath": "/dls/i18/data/.../i18-12345.nxs",
     "beamline": "i18", "visit": "cm12345-1", "scanCommand": "mapscan ...",
     "scanDimensions": [20, 30], "percentComplete": 12.5,
     "processing": ["xrf-map", {"recipe": "xrd-map", "parameters": {"npt": 1000}}]}

Keys are also accepted in snake_case (``scan_id``, ``file_path``, ...). Statuses: RUNNING (also
STARTED, PREPARING, RESUMED), PAUSED, FINISHED (also COMPLETE, COMPLETED), FAILED (also
ABORTED, TERMINATED).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcproc.launch.events import (
    MessageError,
    ScanEvent,
    ScanState,
    recipe_requests,
    shape_field,
    text_field,
)

STATES = {
    "RUNNING": ScanState.STARTED,
    "STARTED": ScanState.STARTED,
    "PREPARING": ScanState.STARTED,
    "RESUMED": ScanState.STARTED,
    "PAUSED": ScanState.UPDATED,
    "FINISHED": ScanState.FINISHED,
    "COMPLETE": ScanState.FINISHED,
    "COMPLETED": ScanState.FINISHED,
    "FAILED": ScanState.FAILED,
    "ABORTED": ScanState.FAILED,
    "TERMINATED": ScanState.FAILED,
}


def looks_like_gda(doc: Any) -> bool:
    return isinstance(doc, Mapping) and "status" in doc and not {"name", "doc"} <= doc.keys()


def parse_gda(doc: Mapping[str, Any]) -> ScanEvent:
    """A GDA status message (already JSON-decoded) -> ScanEvent; MessageError if unusable."""
    status = doc.get("status")
    if not isinstance(status, str) or status.upper() not in STATES:
        raise MessageError(
            f"GDA message: status {status!r} is not one of {', '.join(sorted(STATES))}"
        )
    key = text_field(doc, "scanId", "scan_id", "uniqueId", "unique_id", "scanNumber")
    if key is None:
        raise MessageError("GDA message: no scanId (nor scan_id, uniqueId, scanNumber)")
    path = text_field(doc, "filePath", "file_path", "filepath")
    if path is not None and not Path(path).is_absolute():
        raise MessageError(f"GDA message for scan {key}: filePath {path!r} is not absolute")
    percent = doc.get("percentComplete", doc.get("percent_complete"))
    if percent is not None:
        try:
            percent = float(percent)
        except (TypeError, ValueError):
            raise MessageError(f"GDA message for scan {key}: percentComplete {percent!r}") from None
    return ScanEvent(
        key=key,
        state=STATES[status.upper()],
        source="gda",
        path=Path(path) if path else None,
        scan_id=text_field(doc, "scanId", "scan_id", "scanNumber") or key,
        beamline=text_field(doc, "beamline", "beamline_id"),
        visit=text_field(doc, "visit", "visitId", "visit_id"),
        scan_command=text_field(doc, "scanCommand", "scan_command", "command"),
        shape=shape_field(
            doc.get("scanDimensions", doc.get("scan_dimensions")), f"scan {key}: scanDimensions"
        ),
        percent=percent,
        recipes=recipe_requests(doc.get("processing"), f"scan {key}: processing"),
        reason=text_field(doc, "message", "reason")
        if STATES[status.upper()] is ScanState.FAILED
        else None,
    )
