"""Let ISPyB's MySQL-flavoured ``ispyb.sqlalchemy`` models create their tables on SQLite.

The models are generated from the MariaDB schema, so ``create_all`` on SQLite fails twice over:
the SQLite type compiler cannot render MySQL-only types (TINYINT, MEDIUMINT, LONGTEXT, ...) and
server defaults such as ``current_timestamp()`` or ``current_user()`` are not SQLite syntax.

Importing this module registers SQLAlchemy compile rules for the ``sqlite`` dialect only (MySQL
and MariaDB render exactly as before), so the schema is never copied: the tables come from the
``ispyb.sqlalchemy`` models themselves. What SQLite cannot express is dropped, not emulated:
``ON UPDATE current_timestamp()`` (the adapter sets the times it needs explicitly) and
``current_user()`` (no default). The rules are enough to create every table of ISPyB 12.1.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn, CreateIndex, DefaultClause
from sqlalchemy.sql.elements import TextClause

__all__ = ["SQLITE_TYPE_MAP", "sqlite_default"]

# MySQL type -> the SQLite type name it is created as (affinity is what matters on SQLite).
SQLITE_TYPE_MAP: dict[type, str] = {
    mysql.TINYINT: "INTEGER",
    mysql.MEDIUMINT: "INTEGER",
    mysql.BIT: "INTEGER",
    mysql.YEAR: "INTEGER",
    mysql.TINYTEXT: "TEXT",
    mysql.MEDIUMTEXT: "TEXT",
    mysql.LONGTEXT: "TEXT",
    mysql.TINYBLOB: "BLOB",
    mysql.MEDIUMBLOB: "BLOB",
    mysql.LONGBLOB: "BLOB",
    mysql.SET: "TEXT",
    mysql.ENUM: "VARCHAR",
}


def _register_type(mysql_type: type, sqlite_name: str) -> None:
    @compiles(mysql_type, "sqlite")
    def _render(element: Any, compiler: Any, **kw: Any) -> str:
        return sqlite_name


for _type, _name in SQLITE_TYPE_MAP.items():
    _register_type(_type, _name)


# MySQL server-default expressions -> SQLite replacement ("": drop the default).
_DEFAULT_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"^\s*current_timestamp(\(\d*\))?(\s+on\s+update\s+current_timestamp(\(\d*\))?)?\s*$",
            re.IGNORECASE,
        ),
        "CURRENT_TIMESTAMP",
    ),
    (re.compile(r"^\s*(now|localtimestamp)\(\d*\)\s*$", re.IGNORECASE), "CURRENT_TIMESTAMP"),
    (re.compile(r"^\s*curdate\(\)\s*$", re.IGNORECASE), "CURRENT_DATE"),
    (re.compile(r"^\s*curtime\(\)\s*$", re.IGNORECASE), "CURRENT_TIME"),
    (re.compile(r"^\s*(current_user|user|uuid)\(\)\s*$", re.IGNORECASE), ""),
)


def sqlite_default(expression: str) -> str | None:
    """The SQLite DEFAULT for a MySQL server-default expression.

    Returns the replacement text, ``""`` to drop the default, or ``None`` when the expression
    needs no change.
    """
    for pattern, replacement in _DEFAULT_REWRITES:
        if pattern.match(expression):
            return replacement
    return None


@compiles(CreateColumn, "sqlite")
def _sqlite_create_column(element: CreateColumn, compiler: Any, **kw: Any) -> str:
    text = compiler.visit_create_column(element, **kw)
    column = element.element
    default = getattr(column, "server_default", None)
    if not isinstance(default, DefaultClause) or not isinstance(default.arg, TextClause):
        return text
    expression = default.arg.text
    replacement = sqlite_default(expression)
    if replacement is None:
        return text
    rendered = re.compile(r"\s+DEFAULT\s+\(?" + re.escape(expression) + r"\)?")
    new = f" DEFAULT {replacement}" if replacement else ""
    return rendered.sub(lambda _m: new, text, count=1)


# MySQL index names are per table, SQLite's per database (ISPyB reuses names such as `name`):
# on SQLite each index is created as "<table>_<index>".
_CREATE_INDEX = re.compile(r"^(\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?)(\S+)")


@compiles(CreateIndex, "sqlite")
def _sqlite_create_index(element: CreateIndex, compiler: Any, **kw: Any) -> str:
    text = compiler.visit_create_index(element, **kw)
    index = element.element
    if index.table is None or index.name is None:
        return text
    name = compiler.preparer.quote(f"{index.table.name}_{index.name}")
    return _CREATE_INDEX.sub(lambda m: m.group(1) + name, text, count=1)
