"""Tell people that a processing job ended: a log line, an email, or both.

A :class:`JobNotice` describes one ended job (recipe, scan, overall status, each step's status and
message, the processed file, an optional results-page URL). A *notifier* is anything with
``send(notice)`` (the :class:`Notifier` protocol):

- :class:`LogNotifier` writes one line to a logger: INFO for a success, WARNING otherwise.
- :class:`SmtpNotifier` sends one plain-text email per notice with the standard library
  (``smtplib``), optionally with STARTTLS and a login, optionally only for jobs that did not
  succeed.

:class:`Notifiers` is a list of notifiers that sends each notice to all of them. A notification
must never fail a job, so a notifier that raises is logged as a one-line warning and the others
still run; ``Notifiers.send`` never raises (``Exception``; not ``KeyboardInterrupt``).

:func:`notifiers_from_spec` builds them from a comma-separated spec, given on the command line or,
when that is ``None``, in the environment variable ``HPCPROC_NOTIFY``::

    log
    smtp://[user[:password]@]host[:port]?from=a@b&to=c@d[&to=e@f][&starttls=1][&failures_only=1]

An empty or absent spec means ``log``. Percent-encode reserved characters in a user name or
password (``%40`` for ``@``, ``%2C`` for a comma), or leave the password out of the spec and put it
in ``HPCPROC_SMTP_PASSWORD``. A malformed item raises :class:`~hpcproc.errors.InputError` naming
the item (its password masked) and what is wrong. Passwords are never logged nor shown by
``repr``.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote

from hpcproc.errors import InputError

__all__ = [
    "ENV_PASSWORD",
    "ENV_SPEC",
    "JobNotice",
    "LogNotifier",
    "Notifier",
    "Notifiers",
    "SmtpNotifier",
    "notifiers_from_spec",
]

ENV_SPEC = "HPCPROC_NOTIFY"
ENV_PASSWORD = "HPCPROC_SMTP_PASSWORD"

log = logging.getLogger("hpcproc.notify")


def _one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


@dataclass(frozen=True)
class JobNotice:
    """One processing job that ended, as told to people."""

    job_id: int
    recipe: str
    status: str  # "success", "failed", ...
    scan_file: Path
    scan_id: str | None = None
    beamline: str | None = None
    visit: str | None = None
    steps: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (status, message)
    processed_file: Path | None = None
    url: str | None = None  # a results page

    @property
    def succeeded(self) -> bool:
        """True for a success; any other status (failed, skipped, ...) is worth a warning."""
        return str(self.status).lower() == "success"

    @property
    def scan(self) -> str:
        """How the scan is named to people: its id, else its file name."""
        return self.scan_id or Path(self.scan_file).name

    def subject(self) -> str:
        """E.g. ``[hpcproc] i18 cm12345-1 scan i18-000001: xrf-map job 12 failed``."""
        where = " ".join(p for p in (self.beamline, self.visit) if p)
        head = f"{where} scan {self.scan}" if where else f"scan {self.scan}"
        return _one_line(f"[hpcproc] {head}: {self.recipe} job {self.job_id} {self.status}")

    def body(self) -> str:
        """Plain text: the job, the scan, a line per step, the processed file and the URL."""
        lines = [f"Job {self.job_id} (recipe {self.recipe}) {self.status}.", ""]
        lines.append(f"Scan:      {self.scan}")
        lines.append(f"Scan file: {self.scan_file}")
        if self.beamline:
            lines.append(f"Beamline:  {self.beamline}")
        if self.visit:
            lines.append(f"Visit:     {self.visit}")
        lines.append("")
        if self.steps:
            lines.append("Steps:")
            width = max(len(s) for s in self.steps)
            status_width = max(len(str(st)) for st, _ in self.steps.values())
            for sid, (status, message) in self.steps.items():
                msg_lines = str(message or "").splitlines() or [""]
                first = f"  {sid:<{width}}  {status!s:<{status_width}}  {msg_lines[0]}".rstrip()
                lines.append(first)
                indent = " " * (2 + width + 2 + status_width + 2)
                lines.extend(f"{indent}{m}".rstrip() for m in msg_lines[1:])
        else:
            lines.append("Steps: none recorded")
        lines.append("")
        lines.append(f"Processed file: {self.processed_file or 'none'}")
        if self.url:
            lines.append(f"Results: {self.url}")
        return "\n".join(lines) + "\n"


@runtime_checkable
class Notifier(Protocol):
    """Anything told when a job ends."""

    def send(self, notice: JobNotice) -> None: ...


class LogNotifier:
    """One log line per notice: INFO for a success, WARNING otherwise."""

    def __init__(self, logger_name: str = "hpcproc.notify") -> None:
        self.logger_name = logger_name
        self.logger = logging.getLogger(logger_name)

    def send(self, notice: JobNotice) -> None:
        level = logging.INFO if notice.succeeded else logging.WARNING
        failed = [
            f"{sid}: {_one_line(msg)}" if msg else sid
            for sid, (st, msg) in notice.steps.items()
            if str(st).lower() == "failed"
        ]
        extra = f" (failed steps: {'; '.join(failed)})" if failed else ""
        self.logger.log(
            level,
            "job %s %s scan %s %s%s",
            notice.job_id,
            _one_line(notice.recipe),
            _one_line(notice.scan),
            _one_line(notice.status),
            extra,
        )

    def __repr__(self) -> str:
        return f"LogNotifier({self.logger_name!r})"


class SmtpNotifier:
    """One plain-text email per notice, through an SMTP server."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        recipients: list[str],
        timeout: float = 10.0,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        only_failures: bool = False,
    ) -> None:
        if not recipients:
            raise ValueError("SmtpNotifier needs at least one recipient")
        self.host = host
        self.port = int(port)
        self.sender = sender
        self.recipients = list(recipients)
        self.timeout = timeout
        self.starttls = starttls
        self.username = username
        self._password = password
        self.only_failures = only_failures

    def message(self, notice: JobNotice) -> EmailMessage:
        """The email for ``notice``."""
        msg = EmailMessage()
        msg["Subject"] = notice.subject()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(notice.body())
        return msg

    def send(self, notice: JobNotice) -> None:
        if self.only_failures and notice.succeeded:
            return
        msg = self.message(notice)
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self._password or "")
            smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)

    def __repr__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        flags = "".join(
            f", {name}=True"
            for name, on in (("starttls", self.starttls), ("only_failures", self.only_failures))
            if on
        )
        return (
            f"SmtpNotifier(smtp://{user}{self.host}:{self.port}, from={self.sender!r}, "
            f"to={self.recipients!r}{flags})"
        )


class Notifiers(list):
    """Notifiers that each get every notice; one that raises never stops the others."""

    def __init__(self, notifiers: Iterable[Notifier] = ()) -> None:
        super().__init__(notifiers)

    def send(self, notice: JobNotice) -> None:
        """Send ``notice`` to every notifier; log (never raise) what fails."""
        for notifier in self:
            try:
                notifier.send(notice)
            except Exception as exc:
                log.warning(
                    "notifier %r could not tell about job %s: %s",
                    notifier,
                    notice.job_id,
                    _one_line(f"{type(exc).__name__}: {exc}"),
                )

    def __repr__(self) -> str:
        return f"Notifiers({list.__repr__(self)})"


# --- specs ---------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SMTP_KEYS = ("from", "to", "starttls", "failures_only")
# Where the query starts: the "?" before a known option, so that a password holding a raw "?",
# "/", "#" or "@" still ends up in the password (and is masked), never in the host or the query.
_QUERY = re.compile(r"\?(?=(?:" + "|".join(_SMTP_KEYS) + r")=)")


@dataclass(frozen=True)
class _Url:
    scheme: str
    user: str | None  # as written (percent-encoded)
    password: str | None  # as written (percent-encoded)
    hostport: str
    query: str | None

    def masked(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (":***" if self.password is not None else "") + "@"
        query = f"?{self.query}" if self.query is not None else ""
        return f"{self.scheme}://{userinfo}{self.hostport}{query}"


def _split(item: str) -> _Url | None:
    """``scheme://[user[:password]@]hostport[?query]``, or None if ``item`` has no ``://``."""
    scheme, sep, rest = item.partition("://")
    if not sep:
        return None
    m = _QUERY.search(rest)
    end = m.start() if m else (rest.rfind("?") if "?" in rest else len(rest))
    netloc = rest[:end]
    query = rest[end + 1 :] if end < len(rest) else None
    userinfo, at, hostport = netloc.rpartition("@")
    user = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    return _Url(scheme, user, password, hostport, query)


def _mask(item: str) -> str:
    """``item`` with its password (``scheme://user:password@...``) replaced by ``***``."""
    url = _split(item)
    return item if url is None else url.masked()


def _is_address(addr: str) -> bool:
    """True for ``a@b`` or ``Name <a@b>``."""
    _name, email = parseaddr(addr)
    local, at, domain = email.rpartition("@")
    return bool(local and at and domain) and not any(c.isspace() for c in email)


def _flag(bad: Callable[[str], InputError], values: dict[str, list[str]], key: str) -> bool:
    got = values.get(key, [])
    if len(got) > 1:
        raise bad(f"{key} given {len(got)} times")
    value = got[0].strip().lower() if got else ""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad(f"{key}={got[0]!r} is not 1/0/true/false")


def _host_port(bad: Callable[[str], InputError], hostport: str) -> tuple[str, int]:
    hostport = hostport.removesuffix("/")
    if "/" in hostport or "#" in hostport:
        raise bad("unexpected path or fragment; use smtp://host[:port]?from=...&to=...")
    if hostport.startswith("["):  # IPv6: [::1]:25
        host, close, rest = hostport[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise bad(f"bad host {hostport!r}")
        raw_port = rest[1:] if rest else None
    else:
        host, colon, raw_port = hostport.partition(":")
        raw_port = raw_port if colon else None
    if not host:
        raise bad("missing host")
    if raw_port is None:
        return host, 25
    if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
        raise bad(f"bad port {raw_port!r} (a number 1-65535)")
    return host, int(raw_port)


def _query(bad: Callable[[str], InputError], query: str | None) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for part in (query or "").split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise bad(f"{key!r} has no '=' (use key=value)")
        if key not in _SMTP_KEYS:
            raise bad(f"unknown option {key!r} (known: {', '.join(_SMTP_KEYS)})")
        values.setdefault(key, []).append(unquote(value))  # "+" stays "+" (a+tag@b)
    return values


def _smtp(item: str, environ: Mapping[str, str]) -> SmtpNotifier:
    url = _split(item)
    assert url is not None
    shown = repr(url.masked())

    def bad(why: str) -> InputError:
        return InputError(f"notify spec {shown}: {why}")

    host, port = _host_port(bad, url.hostport)
    values = _query(bad, url.query)
    senders = [s.strip() for s in values.get("from", []) if s.strip()]
    if not senders:
        raise bad("missing from=<address>")
    if len(senders) > 1:
        raise bad("from given more than once")
    recipients = [r.strip() for r in values.get("to", []) if r.strip()]
    if not recipients:
        raise bad("missing to=<address>")
    for addr in (*senders, *recipients):
        if not _is_address(addr):
            raise bad(f"{addr!r} is not an email address")
    username = unquote(url.user) if url.user else None
    password = unquote(url.password) if url.password is not None else None
    if password is not None and not username:
        raise bad("a password needs a user name (user:password@host)")
    if username and password is None:
        password = environ.get(ENV_PASSWORD) or None
    return SmtpNotifier(
        host,
        port,
        sender=senders[0],
        recipients=recipients,
        starttls=_flag(bad, values, "starttls"),
        username=username,
        password=password,
        only_failures=_flag(bad, values, "failures_only"),
    )


def notifiers_from_spec(spec: str | None, *, environ: Mapping[str, str] | None = None) -> Notifiers:
    """The notifiers a spec names (see the module docstring); ``log`` alone by default.

    ``spec=None`` reads ``HPCPROC_NOTIFY`` from ``environ`` (default ``os.environ``); an empty
    spec, or none in the environment either, means ``log``. Raises ``InputError`` for a malformed
    item.
    """
    env = os.environ if environ is None else environ
    if spec is None:
        spec = env.get(ENV_SPEC)
    items = [i.strip() for i in (spec or "").split(",") if i.strip()]
    if not items:
        return Notifiers([LogNotifier()])
    notifiers = Notifiers()
    for item in items:
        url = _split(item)
        if url is None and item.lower() == "log":
            notifiers.append(LogNotifier())
        elif url is not None and url.scheme.lower() == "smtp":
            notifiers.append(_smtp(item, env))
        else:
            raise InputError(
                f"notify spec {_mask(item)!r}: unknown notifier (use 'log' or 'smtp://...')"
            )
    return notifiers
