"""Job-end notifications: a real local SMTP server (aiosmtpd), specs, and failure isolation."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from hpcproc.errors import InputError
from hpcproc.notify import (
    JobNotice,
    LogNotifier,
    Notifier,
    Notifiers,
    SmtpNotifier,
    notifiers_from_spec,
)

SECRET = "s3cr3t-pw"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    envelopes: list = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd handler hook
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=password == SECRET)

    def messages(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(e.original_content, policy=email.policy.default)
            for e in self.envelopes
        ]


@pytest.fixture
def smtpd():
    """A real SMTP server on 127.0.0.1 (AUTH allowed without TLS); yields (received, port)."""
    received = Received()
    controller = Controller(
        received,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=received.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield received, controller.port
    finally:
        controller.stop()


def notice(status: str = "failed", **kw) -> JobNotice:
    steps = {
        "xrf_windows": ("success", "48 points"),
        "xrd_integrate": ("failed", "ValueError: poni file has no wavelength\nsee the log"),
    }
    if status == "success":
        steps["xrd_integrate"] = ("success", "48 frames")
    values = dict(
        job_id=12,
        recipe="xrf-map",
        status=status,
        scan_file=Path("/dls/i18/data/2024/cm12345-1/i18-000001.nxs"),
        scan_id="i18-000001",
        beamline="i18",
        visit="cm12345-1",
        steps=steps,
        processed_file=Path("/dls/i18/data/2024/cm12345-1/processed/i18-000001-xrf-map-job12.nxs"),
        url="https://results.example.org/jobs/12",
    )
    values.update(kw)
    return JobNotice(**values)


# --- JobNotice ---------------------------------------------------------------------------------


def test_subject_and_body() -> None:
    n = notice()
    assert n.subject() == "[hpcproc] i18 cm12345-1 scan i18-000001: xrf-map job 12 failed"
    body = n.body()
    lines = body.splitlines()
    failing = next(line for line in lines if "xrd_integrate" in line)
    assert "failed" in failing and "poni file has no wavelength" in failing
    assert "see the log" in body  # the second line of the message is kept, indented
    assert any("xrf_windows" in line and "success" in line for line in lines)
    assert str(n.processed_file) in body
    assert "https://results.example.org/jobs/12" in body


def test_subject_without_beamline_visit_or_scan_id() -> None:
    n = notice("success", scan_id=None, beamline=None, visit=None, url=None)
    assert n.subject() == "[hpcproc] scan i18-000001.nxs: xrf-map job 12 success"
    assert "Results" not in n.body() and "http" not in n.body()


# --- SmtpNotifier ------------------------------------------------------------------------------


def test_smtp_delivers_one_mail(smtpd) -> None:
    received, port = smtpd
    notifier = SmtpNotifier(
        "127.0.0.1", port, sender="hpcproc@example.org", recipients=["a@example.org", "b@x.org"]
    )
    assert isinstance(notifier, Notifier)
    notifier.send(notice())
    assert len(received.envelopes) == 1
    env = received.envelopes[0]
    assert env.mail_from == "hpcproc@example.org"
    assert env.rcpt_tos == ["a@example.org", "b@x.org"]
    (msg,) = received.messages()
    assert msg["From"] == "hpcproc@example.org"
    assert msg["To"] == "a@example.org, b@x.org"
    assert msg["Subject"] == "[hpcproc] i18 cm12345-1 scan i18-000001: xrf-map job 12 failed"
    body = msg.get_content()
    assert "ValueError: poni file has no wavelength" in body
    assert "https://results.example.org/jobs/12" in body


def test_only_failures_skips_a_success(smtpd) -> None:
    received, port = smtpd
    notifier = SmtpNotifier(
        "127.0.0.1", port, sender="h@example.org", recipients=["a@example.org"], only_failures=True
    )
    notifier.send(notice("success"))
    assert received.envelopes == []
    notifier.send(notice("failed"))
    assert len(received.envelopes) == 1


def test_login_uses_password_and_repr_hides_it(smtpd, caplog) -> None:
    received, port = smtpd
    notifier = SmtpNotifier(
        "127.0.0.1",
        port,
        sender="h@example.org",
        recipients=["a@example.org"],
        username="bob",
        password=SECRET,
    )
    assert SECRET not in repr(notifier) and "bob" in repr(notifier)
    with caplog.at_level(logging.DEBUG):
        notifier.send(notice())
    assert received.logins == [("bob", SECRET)]
    assert len(received.envelopes) == 1
    assert SECRET not in caplog.text


# --- specs -------------------------------------------------------------------------------------


def test_default_spec_is_log_only() -> None:
    for spec in (None, "", " , "):
        got = notifiers_from_spec(spec, environ={})
        assert len(got) == 1 and isinstance(got[0], LogNotifier)


def test_spec_from_environment() -> None:
    env = {"HPCPROC_NOTIFY": "smtp://mail.example.org?from=a@b.org&to=c@d.org"}
    (only,) = notifiers_from_spec(None, environ=env)
    assert isinstance(only, SmtpNotifier) and only.host == "mail.example.org" and only.port == 25
    # An explicit spec wins over the environment.
    (log,) = notifiers_from_spec("log", environ=env)
    assert isinstance(log, LogNotifier)


def test_spec_with_two_recipients_and_a_port() -> None:
    spec = (
        "log, smtp://bob:pa%2Css@mail.example.org:2525"
        "?from=hpcproc@example.org&to=a@example.org&to=c+tag@x.org&starttls=1&failures_only=1"
    )
    got = notifiers_from_spec(spec, environ={})
    assert [type(n) for n in got] == [LogNotifier, SmtpNotifier]
    smtp = got[1]
    assert (smtp.host, smtp.port) == ("mail.example.org", 2525)
    assert smtp.sender == "hpcproc@example.org"
    assert smtp.recipients == ["a@example.org", "c+tag@x.org"]  # "+" is not a space
    assert smtp.starttls and smtp.only_failures
    assert smtp.username == "bob" and smtp._password == "pa,ss"  # percent-decoded
    assert "pa,ss" not in repr(got) and "pa%2Css" not in repr(got)


def test_spec_password_from_environment() -> None:
    spec = "smtp://bob@mail.example.org?from=a@b.org&to=c@d.org"
    (smtp,) = notifiers_from_spec(spec, environ={"HPCPROC_SMTP_PASSWORD": SECRET})
    assert smtp.username == "bob" and smtp._password == SECRET
    # A password in the spec wins over the environment.
    spec = "smtp://bob:other@mail.example.org?from=a@b.org&to=c@d.org"
    (smtp,) = notifiers_from_spec(spec, environ={"HPCPROC_SMTP_PASSWORD": SECRET})
    assert smtp._password == "other"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (f"smtp://bob:{SECRET}@mail.example.org?from=a@b.org", "missing to"),
        (f"smtp://bob:{SECRET}@mail.example.org?to=a@b.org", "missing from"),
        (f"smtp://bob:{SECRET}@mail.example.org:99999?from=a@b.org&to=c@d.org", "bad port"),
        (f"smtp://bob:{SECRET}@mail.example.org:smtp?from=a@b.org&to=c@d.org", "bad port"),
        (f"smtp://bob:{SECRET}@?from=a@b.org&to=c@d.org", "missing host"),
        (f"smtp://bob:{SECRET}@h?from=a@b.org&to=c@d.org&bcc=e@f.org", "unknown option 'bcc'"),
        (f"smtp://bob:{SECRET}@h?from=a@b.org&to=nobody", "'nobody' is not an email address"),
        (f"smtp://bob:{SECRET}@h?from=a@b.org&to=c@d.org&starttls=maybe", "starttls='maybe'"),
        (f"smtps://bob:{SECRET}@h?from=a@b.org&to=c@d.org", "unknown notifier"),
        ("mail", "unknown notifier"),
        # A raw "/", "?" or "#" in the password must not leak through the host or port.
        ("smtp://bob:" + SECRET + "/x?y#z@h?from=a@b.org&to=c", "'c' is not an email address"),
    ],
)
def test_bad_spec_is_one_line_naming_the_problem(spec: str, why: str) -> None:
    with pytest.raises(InputError) as info:
        notifiers_from_spec(f"log,{spec}", environ={})
    text = str(info.value)
    assert "\n" not in text
    assert why in text
    assert SECRET not in text
    item = spec if SECRET not in spec else spec.split("://")[0] + "://bob:***@"
    assert item in text  # the item is named, its password masked


# --- LogNotifier and Notifiers -----------------------------------------------------------------


def test_log_notifier_levels(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="hpcproc.notify"):
        LogNotifier().send(notice("failed"))
        LogNotifier().send(notice("success"))
    failed, ok = caplog.records
    assert failed.levelno == logging.WARNING and ok.levelno == logging.INFO
    for rec in (failed, ok):
        assert rec.name == "hpcproc.notify"
        text = rec.getMessage()
        assert "job 12" in text and "xrf-map" in text and "i18-000001" in text
        assert "\n" not in text
    assert "failed" in failed.getMessage() and "xrd_integrate" in failed.getMessage()
    assert "success" in ok.getMessage()


def test_log_notifier_custom_logger(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="beamline.i18"):
        LogNotifier("beamline.i18").send(notice("success"))
    assert [r.name for r in caplog.records] == ["beamline.i18"]


def test_notifiers_keep_going_when_one_raises(smtpd, caplog) -> None:
    received, port = smtpd

    class Broken:
        def send(self, notice: JobNotice) -> None:
            raise RuntimeError("disk full\nsecond line")

        def __repr__(self) -> str:
            return "Broken()"

    closed = SmtpNotifier(
        "127.0.0.1",
        free_port(),
        sender="h@example.org",
        recipients=["a@example.org"],
        timeout=2.0,
        username="bob",
        password=SECRET,
    )
    working = SmtpNotifier("127.0.0.1", port, sender="h@example.org", recipients=["a@b.org"])
    notifiers = Notifiers([closed, Broken(), LogNotifier(), working])
    with caplog.at_level(logging.INFO, logger="hpcproc.notify"):
        notifiers.send(notice())  # must not raise
    warnings = [r for r in caplog.records if "could not tell" in r.getMessage()]
    assert len(warnings) == 2
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in warnings)
    assert "SmtpNotifier" in warnings[0].getMessage()
    assert "ConnectionRefusedError" in warnings[0].getMessage()
    assert "Broken()" in warnings[1].getMessage() and "disk full second line" in (
        warnings[1].getMessage()
    )
    # The log notifier still logged, and the SMTP notifier after the broken ones still sent.
    assert any(
        r.levelno == logging.WARNING and r.getMessage().startswith("job 12 xrf-map")
        for r in caplog.records
    )
    assert len(received.envelopes) == 1
    assert SECRET not in caplog.text


def test_a_job_that_ends_sends_mail(smtpd, cli, sim_scan, tmp_path) -> None:
    """`hpcproc run --notify smtp://...`: the job's end (here a failed step) is mailed, with the
    step's own message, to the SMTP server the option names."""
    received, port = smtpd
    recipe = tmp_path / "bad-window.yaml"
    recipe.write_text(
        "name: bad-window\nsteps:\n  - id: windows\n    uses: xrf_windows\n"
        "    with: {elements: [Fe-Ka], mca: /entry/instrument/xspress3/data, channels: [99]}\n"
    )
    spec = f"log,smtp://127.0.0.1:{port}?from=hpcproc@example.org&to=team@example.org"
    result = cli("run", recipe, sim_scan.path, "--notify", spec)
    assert result.exit_code == 1, result.output
    (msg,) = received.messages()
    assert msg["To"] == "team@example.org"
    assert "bad-window job" in msg["Subject"] and msg["Subject"].endswith("failed")
    body = msg.get_content()
    assert "windows  failed  StepError: channels [99] outside 0..7" in body
