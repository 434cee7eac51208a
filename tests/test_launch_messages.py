"""Message formats -> scan events: GDA status messages and bluesky documents (no broker)."""

from __future__ import annotations

import json
from pathlib import Path

import event_model
import pytest

from hpcproc.launch.events import MessageError, RecipeRequest, ScanState
from hpcproc.launch.messages import MessageParser

SCAN = Path("/dls/i18/data/2026/cm12345-1/i18-000042.nxs")


def parse(parser: MessageParser, message: object) -> list:
    return parser.parse(json.dumps(message).encode())


def test_gda_message_fields() -> None:
    [event] = parse(
        MessageParser(),
        {
            "scanId": "i18-000042",
            "status": "running",
            "filePath": str(SCAN),
            "beamline": "i18",
            "visit": "cm12345-1",
            "scanCommand": "mapscan x 0 1 0.1 y 0 1 0.1",
            "scanDimensions": [11, 11],
            "percentComplete": "12.5",
            "processing": ["xrd-map", {"recipe": "xrf-map", "parameters": {"window_width": 60}}],
        },
    )
    assert (event.key, event.state, event.source, event.path) == (
        "i18-000042",
        ScanState.STARTED,
        "gda",
        SCAN,
    )
    assert (event.beamline, event.visit, event.shape, event.percent) == (
        "i18",
        "cm12345-1",
        (11, 11),
        12.5,
    )
    assert event.recipes == (
        RecipeRequest("xrd-map"),
        RecipeRequest("xrf-map", {"window_width": 60}),
    )
    [end] = parse(MessageParser(), {"scan_id": "i18-000042", "status": "FAILED", "message": "x"})
    assert (end.state, end.path, end.reason) == (ScanState.FAILED, None, "x")


def test_bluesky_run_becomes_start_progress_and_end() -> None:
    parser = MessageParser()
    run = event_model.compose_run(
        metadata={"scan_id": 42, "beamline_id": "i18", "data_session": "cm12345-1",
                  "num_points": 4, "processing": ["xrf-map"]}
    )  # fmt: skip
    descriptor = run.compose_descriptor(name="primary", data_keys={})
    assert parse(parser, ["start", run.start_doc]) == []  # no file known yet
    assert parse(parser, {"name": "descriptor", "doc": descriptor.descriptor_doc}) == []
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5", uri=f"file://localhost{SCAN}", data_key="d", parameters={}
    )
    [started] = parse(parser, ["stream_resource", resource.stream_resource_doc])
    assert (started.state, started.path, started.key) == (
        ScanState.STARTED,
        SCAN,
        run.start_doc["uid"],
    )
    assert (started.scan_id, started.beamline, started.visit) == ("42", "i18", "cm12345-1")
    assert started.recipes == (RecipeRequest("xrf-map"),)
    [update] = parse(parser, ["event", descriptor.compose_event(data={}, timestamps={}, seq_num=2)])
    assert (update.state, update.percent) == (ScanState.UPDATED, 50.0)
    [stopped] = parse(parser, ["stop", run.compose_stop(exit_status="abort", reason="beam lost")])
    assert (stopped.state, stopped.path, stopped.reason) == (ScanState.FAILED, SCAN, "beam lost")
    # A stop whose start this parser never saw (restarted launcher): the key is all it has.
    other = event_model.compose_run()
    [late] = parse(MessageParser(), ["stop", other.compose_stop()])
    assert (late.key, late.state, late.path) == (other.start_doc["uid"], ScanState.FINISHED, None)


def test_bluesky_start_may_name_the_file() -> None:
    run = event_model.compose_run(metadata={"nexus_file": str(SCAN)})
    [started] = parse(MessageParser(), ["start", run.start_doc])
    assert started.path == SCAN


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2, 3]", "neither a GDA scan status"),
        (b'{"status": "RUNNING"}', "no scanId"),
        (b'{"scanId": "a", "status": "RUNNING", "filePath": "rel/x.nxs"}', "is not absolute"),
        (b'{"scanId": "a", "status": "RUNNING", "scanDimensions": ["x"]}', "list of integers"),
        (b'{"scanId": "a", "status": "RUNNING", "percentComplete": "half"}', "percentComplete"),
        (b'{"scanId": "a", "status": "RUNNING", "processing": [7]}', "neither a recipe name"),
        (b'["stop", {"uid": "u"}]', "bluesky stop document u"),
        (b'["gossip", {"uid": "u"}]', "unknown kind 'gossip'"),
        (b'["start", {"uid": "u", "time": 1, "nexus_file": "http://x/y"}]', "is not a file"),
        (b'["start", {"uid": "u", "time": 1, "nexus_file": "x/y.nxs"}]', "is not absolute"),
        (b'["start", {"uid": "u", "time": 1, "nexus_file": "file:///d/y.nxs"}]', None),
    ],
)
def test_bad_messages_say_why_in_one_line(body: bytes, reason: str | None) -> None:
    parser = MessageParser()
    if reason is None:
        [event] = parser.parse(body)
        assert event.path == Path("/d/y.nxs")
        return
    with pytest.raises(MessageError) as info:
        parser.parse(body)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_too_big_is_refused() -> None:
    with pytest.raises(MessageError, match="too big"):
        MessageParser().parse(b" " * (2 << 20))
