"""bluesky event-model documents: a run is a start, descriptors, resources, events and a stop.

On the wire each document is ``["start", {...}]`` or ``{"name": "start", "doc": {...}}`` (as
bluesky's publishers send them). Every document is validated against event-model's JSON
schema. The scan file is named by the start document (``nexus_file``, or ``data_file``) or by
the first ``stream_resource``/``resource`` document of the run (its ``uri``, or ``root`` +
``resource_path``): the scan is *started* once both are known. The stop document ends it
(``exit_status`` success -> finished, abort/fail -> failed, with its ``reason``).

Start-document metadata used: ``scan_id``, ``beamline_id`` (or ``beamline``), ``data_session``
(the visit, or ``visit``), ``plan_name``, ``shape``, ``num_points`` (for percent complete from
events) and ``processing`` (recipes asked for, as in GDA messages).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from event_model import DocumentNames, schema_validators
from jsonschema.exceptions import ValidationError

from hpcproc.launch.events import (
    MessageError,
    ScanEvent,
    ScanState,
    recipe_requests,
    shape_field,
    text_field,
)

KNOWN = {n.value: n for n in DocumentNames}
_RUNS_KEPT = 1000  # runs remembered (oldest forgotten first); a stop of a forgotten run still ends


def split_document(message: Any) -> tuple[str, Mapping[str, Any]] | None:
    """``(name, doc)`` if ``message`` has the shape of a bluesky document, else None."""
    if isinstance(message, list) and len(message) == 2 and isinstance(message[0], str):
        name, doc = message
    elif isinstance(message, Mapping) and {"name", "doc"} <= message.keys():
        name, doc = message["name"], message["doc"]
    else:
        return None
    return (name, doc) if isinstance(doc, Mapping) else None


def _file_of(doc: Mapping[str, Any]) -> str | None:
    uri = doc.get("uri")
    if isinstance(uri, str) and uri:
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file"):
            raise MessageError(f"bluesky resource {doc.get('uid')}: uri {uri!r} is not a file")
        return unquote(parsed.path)
    root, rel = doc.get("root"), doc.get("resource_path")
    if isinstance(rel, str) and rel:
        return str(Path(str(root or "/")) / rel)
    return None


def _start_file(doc: Mapping[str, Any]) -> str | None:
    """The scan file a start document names (a path or a file:// URI), if any."""
    named = text_field(doc, "nexus_file", "data_file")
    if named is None:
        return None
    path = _file_of({"uid": doc.get("uid"), "uri": named}) or ""
    if not Path(path).is_absolute():
        raise MessageError(f"bluesky start {doc.get('uid')}: nexus_file {named!r} is not absolute")
    return path


class BlueskyRuns:
    """Turns a stream of documents into scan events (keeps what it needs of each open run)."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}  # run uid -> start doc + what we learnt

    def feed(self, name: str, doc: Mapping[str, Any]) -> ScanEvent | None:
        kind = KNOWN.get(name)
        if kind is None:
            raise MessageError(f"bluesky document of unknown kind {name!r}")
        try:
            schema_validators[kind].validate(dict(doc))
        except ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "document"
            raise MessageError(
                f"bluesky {name} document {doc.get('uid', '?')}: {where}: {exc.message}"
            ) from None
        if kind is DocumentNames.start:
            return self._start(doc)
        if kind in (DocumentNames.resource, DocumentNames.stream_resource):
            return self._resource(doc)
        if kind in (DocumentNames.event, DocumentNames.event_page):
            return self._event(doc)
        if kind is DocumentNames.descriptor:
            run = self._runs.get(str(doc["run_start"]))
            if run is not None:
                run["descriptors"].add(doc["uid"])
            return None
        if kind is DocumentNames.stop:
            return self._stop(doc)
        return None  # datums and the like: nothing the launcher needs

    def _start(self, doc: Mapping[str, Any]) -> ScanEvent | None:
        run = {
            "start": dict(doc),
            "file": _start_file(doc),
            "descriptors": set(),
        }
        self._runs[doc["uid"]] = run
        while len(self._runs) > _RUNS_KEPT:
            self._runs.pop(next(iter(self._runs)))
        return self._started(doc["uid"], run)

    def _resource(self, doc: Mapping[str, Any]) -> ScanEvent | None:
        run = self._runs.get(str(doc.get("run_start", "")))
        if run is None or run["file"]:
            return None  # a resource of a run we did not see start, or a second file
        run["file"] = _file_of(doc)
        return self._started(doc["run_start"], run)

    def _started(self, uid: str, run: dict[str, Any]) -> ScanEvent | None:
        if not run["file"] or run.get("announced"):
            return None
        run["announced"] = True
        return self._event_of(uid, ScanState.STARTED, Path(run["file"]))

    def _event(self, doc: Mapping[str, Any]) -> ScanEvent | None:
        # event docs name their descriptor, not their run: find the run through it
        for uid, run in self._runs.items():
            total = run["start"].get("num_points")
            if run.get("announced") and isinstance(total, int) and total > 0:
                seq = doc.get("seq_num")
                last = max(seq) if isinstance(seq, list) and seq else seq
                if isinstance(last, int) and doc.get("descriptor") in run.get("descriptors", ()):
                    return self._event_of(uid, ScanState.UPDATED, None, 100.0 * last / total)
        return None

    def _stop(self, doc: Mapping[str, Any]) -> ScanEvent:
        uid = str(doc["run_start"])
        ok = doc.get("exit_status") == "success"
        state = ScanState.FINISHED if ok else ScanState.FAILED
        reason = None if ok else (doc.get("reason") or str(doc.get("exit_status")))
        run = self._runs.get(uid)
        if run is None:  # e.g. the launcher restarted mid-run: the state store knows the scan
            return ScanEvent(key=uid, state=state, source="bluesky", reason=reason)
        path = Path(run["file"]) if run["file"] else None
        event = self._event_of(uid, state, path, 100.0 if ok else None, reason)
        del self._runs[uid]
        return event

    def _event_of(
        self,
        uid: str,
        state: ScanState,
        path: Path | None,
        percent: float | None = None,
        reason: str | None = None,
    ) -> ScanEvent:
        start = self._runs.get(uid, {}).get("start", {})
        return ScanEvent(
            key=uid,
            state=state,
            source="bluesky",
            path=path,
            scan_id=text_field(start, "scan_id"),
            beamline=text_field(start, "beamline_id", "beamline"),
            visit=text_field(start, "data_session", "visit"),
            scan_command=text_field(start, "plan_name"),
            shape=shape_field(start.get("shape"), f"bluesky run {uid}: shape"),
            percent=percent,
            recipes=recipe_requests(start.get("processing"), f"bluesky run {uid}: processing"),
            reason=reason,
        )
