"""The LIMS schema check: is this database one hpcproc can use?

:func:`ensure_schema` runs when a :class:`~hpcproc.lims.Lims` opens its database:

- an empty database, or one holding only tables hpcproc creates (a database hpcproc made, maybe
  interrupted half-way), gets the missing tables (:func:`~hpcproc.lims.adapter.schema_tables`);
- every table hpcproc writes (:data:`REQUIRED`) must exist with the columns the adapter uses, and
  have no NOT NULL column without a default that hpcproc would not fill; otherwise
  :class:`SchemaError`, one line naming the table/column and the database URL (password masked).
  A database holding other tables (a real ISPyB, or a wrong database) is never altered: a missing
  table there is an error, not a creation;
- where ISPyB's ``SchemaStatus`` table exists (real ISPyB databases record there the schema
  patches applied), the patches are read into the :class:`SchemaReport` and logged; a patch not
  ``DONE`` (failed or half-applied) is logged as a warning, not refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import ispyb.sqlalchemy as isp
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from hpcproc.errors import LimsError

__all__ = ["REQUIRED", "SchemaError", "SchemaPatch", "SchemaReport", "ensure_schema"]

log = logging.getLogger(__name__)

MODEL_VERSION: str = isp.__schema_version__  # the ISPyB schema version of ispyb-api's models

# The tables hpcproc writes and the columns the adapter uses. None: every column of the model,
# because the adapter loads whole rows of that table (ORM entities or ``select(table)``).
REQUIRED: dict[str, tuple[str, ...] | None] = {
    "Person": ("personId", "login", "familyName", "givenName"),
    "Proposal": None,
    "BLSession": None,
    "DataCollectionGroup": None,
    "DataCollection": None,
    "ProcessingJob": (
        "processingJobId",
        "dataCollectionId",
        "recipe",
        "displayName",
        "comments",
        "automatic",
        "recordTimestamp",
    ),
    "ProcessingJobParameter": (
        "processingJobParameterId",
        "processingJobId",
        "parameterKey",
        "parameterValue",
    ),
    "AutoProcProgram": None,
    "AutoProcProgramMessage": None,
    "AutoProcProgramAttachment": None,
}


class SchemaError(LimsError):
    """The database's schema is not one hpcproc can use (one line, password masked)."""


@dataclass(frozen=True)
class SchemaPatch:
    """One row of ISPyB's SchemaStatus: a schema patch script and whether it was applied."""

    script: str
    status: str  # DONE | ONGOING | ERROR (ISPyB's values)
    time: datetime | None


@dataclass(frozen=True)
class SchemaReport:
    """What :func:`ensure_schema` found (``Lims.schema``)."""

    url: str  # password masked
    created: tuple[str, ...]  # tables created by this check (all of them on a fresh database)
    patches: tuple[SchemaPatch, ...] | None  # SchemaStatus rows, oldest first; None: no table
    model_version: str = MODEL_VERSION

    @property
    def latest_patch(self) -> str | None:
        return self.patches[-1].script if self.patches else None

    @property
    def unfinished_patches(self) -> tuple[SchemaPatch, ...]:
        return tuple(p for p in self.patches or () if (p.status or "").upper() != "DONE")

    def describe(self) -> str:
        """One line for a log or ``hpcproc`` status output."""
        if self.patches is None:
            origin = "created by hpcproc" if self.created else "no ISPyB SchemaStatus table"
        else:
            origin = f"{len(self.patches)} ISPyB schema patches, latest {self.latest_patch}"
            if self.unfinished_patches:
                origin += f", {len(self.unfinished_patches)} not DONE"
        made = f"; created {len(self.created)} tables" if self.created else ""
        return f"LIMS {self.url}: {origin}; models of ISPyB {self.model_version}{made}"


def _hpcproc_tables() -> list[Any]:
    from hpcproc.lims.adapter import schema_tables  # the adapter imports this module

    return schema_tables()


def required_columns() -> dict[str, tuple[str, ...]]:
    tables = isp.Base.metadata.tables
    return {
        name: cols if cols is not None else tuple(tables[name].c.keys())
        for name, cols in REQUIRED.items()
    }


def _problems(name: str, columns: list[dict[str, Any]]) -> list[str]:
    """What makes an existing table unusable: missing columns, NOT NULL columns hpcproc leaves
    empty."""
    have = {c["name"] for c in columns}
    needed = required_columns()[name]
    missing = [c for c in needed if c not in have]
    if missing:
        shown = ", ".join(f"{name}.{c}" for c in missing[:4])
        more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
        return [f"column {shown}{more} missing"]
    model = isp.Base.metadata.tables[name]
    problems = []
    for c in columns:
        if c["name"] in model.c or c.get("nullable", True):
            continue
        if c.get("default") is not None or c.get("autoincrement") is True:
            continue
        problems.append(f"column {name}.{c['name']} is NOT NULL without a default (not ISPyB's)")
    return problems


def _patches(engine: Engine) -> tuple[SchemaPatch, ...]:
    S = isp.SchemaStatus
    with engine.connect() as conn:
        rows = conn.execute(
            select(S.scriptName, S.schemaStatus, S.recordTimeStamp).order_by(
                S.recordTimeStamp, S.schemaStatusId
            )
        ).all()
    return tuple(SchemaPatch(script=r[0] or "", status=r[1] or "", time=r[2]) for r in rows)


def _fail(url: str, what: Iterable[str]) -> SchemaError:
    return SchemaError(
        f"LIMS database {url} has an incompatible schema: {'; '.join(what)} "
        f"(hpcproc writes ISPyB {MODEL_VERSION} tables {', '.join(REQUIRED)})"
    )


ATTEMPTS = 6  # looks at a schema that another process may be creating at the same time


def ensure_schema(
    engine: Engine, url: str, lock: AbstractContextManager[Any] | None = None
) -> SchemaReport:
    """Check (and on an empty or hpcproc-made database, create) the schema; see the module doc.

    ``url`` is the database URL as it may be shown (password masked). Raises
    :class:`SchemaError` if the schema is incompatible; database errors propagate.
    """
    with lock if lock is not None else nullcontext():
        for attempt in range(ATTEMPTS):
            try:
                return _ensure(engine, url)
            except SQLAlchemyError:
                # Another process may be creating the tables at this moment (one by one):
                # let it go on, then look again.
                if attempt == ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _ensure(engine: Engine, url: str) -> SchemaReport:
    inspector = inspect(engine)
    existing = set(inspector.get_table_names())
    present = [name for name in REQUIRED if name in existing]
    problems: list[str] = []
    if present:
        multi = inspector.get_multi_columns(filter_names=present)
        columns = {table: cols for (_schema, table), cols in multi.items()}
        for name in present:
            problems += _problems(name, columns.get(name, []))
    if problems:
        raise _fail(url, problems)

    tables = _hpcproc_tables()
    ours = {t.name for t in tables}
    missing = [name for name in REQUIRED if name not in existing]
    created: tuple[str, ...] = ()
    if missing:
        foreign = sorted(existing - ours)
        if foreign:  # not empty and not made by hpcproc: never alter it
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise _fail(
                url,
                [
                    f"table {', '.join(missing)} missing in a database hpcproc did not create "
                    f"(it holds {len(foreign)} other tables: {shown})"
                ],
            )
        isp.Base.metadata.create_all(engine, tables=tables)
        created = tuple(sorted(ours - existing))

    patches = _patches(engine) if "SchemaStatus" in existing else None
    report = SchemaReport(url=url, created=created, patches=patches)
    if report.unfinished_patches:
        log.warning(
            "%s; not DONE: %s",
            report.describe(),
            ", ".join(f"{p.script} ({p.status})" for p in report.unfinished_patches[:5]),
        )
    else:
        log.info("%s", report.describe())
    return report
