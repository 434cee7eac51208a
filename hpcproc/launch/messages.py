"""One message from a broker -> scan events, whatever its format (GDA status or bluesky)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from hpcproc.launch.bluesky import BlueskyRuns, split_document
from hpcproc.launch.events import MessageError, ScanEvent
from hpcproc.launch.gda import looks_like_gda, parse_gda

MAX_BYTES = 1 << 20  # a scan message is small; anything bigger is not one


class MessageParser:
    """Parses message bodies; keeps the state of open bluesky runs (thread-safe)."""

    def __init__(self) -> None:
        self.bluesky = BlueskyRuns()
        self._lock = threading.Lock()

    def parse(self, body: bytes | str, headers: Mapping[str, Any] | None = None) -> list[ScanEvent]:
        """The scan events in one message ([] for documents that say nothing to the launcher);
        MessageError (the dead-letter reason) for anything else."""
        if len(body) > MAX_BYTES:
            raise MessageError(f"message of {len(body)} bytes is too big for a scan message")
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MessageError(f"message is not JSON: {' '.join(str(exc).split())}") from None
        named = split_document(doc)
        if named is not None:
            with self._lock:
                event = self.bluesky.feed(*named)
            return [] if event is None else [event]
        if looks_like_gda(doc):
            return [parse_gda(doc)]
        kind = (
            type(doc).__name__
            if not isinstance(doc, dict)
            else f"object with keys {sorted(doc)[:8]}"
        )
        raise MessageError(
            f"message is neither a GDA scan status (no 'status') nor a bluesky document: {kind}"
        )
