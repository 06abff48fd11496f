"""The ODBC drivers BI tools read through, and how the ODBC tests reach them.

Excel, Power BI's ODBC connector and many BI tools read through ODBC; these
tests use the real drivers (Debian ``odbc-postgresql`` = psqlODBC,
``libsqliteodbc`` = the SQLite ODBC driver, ``unixodbc``; .ci/run installs them)
through pyodbc, with DSN-less connection strings naming the drivers as
odbcinst.ini registers them. Locally a missing driver skips with the reason;
with ``CI`` set it fails, so the ODBC tests can never pass by not running.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

PG_DRIVER = "PostgreSQL Unicode"
SQLITE_DRIVER = "SQLite3"
INSTALL = "apt-get install odbc-postgresql unixodbc libsqliteodbc (as .ci/run does) and pip install pyodbc"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"ODBC tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_driver(name: str) -> Any:
    """The pyodbc module, once ``name`` is a registered ODBC driver (else skip, or fail in CI)."""
    try:
        import pyodbc
    except ImportError:
        _unavailable(f"pyodbc is not installed; {INSTALL}")
    if name not in pyodbc.drivers():
        _unavailable(f"the ODBC driver {name!r} is not registered in odbcinst.ini; {INSTALL}")
    return pyodbc


def pg_odbc(url: str, timezone: str | None = "UTC", user: str | None = None) -> str:
    """A DSN-less psqlODBC connection string for a SQLAlchemy PostgreSQL URL.

    The URL's ``options`` (the test schema's search_path) go through ``pqopt``;
    ``timezone`` is the session TimeZone set by ``ConnSettings``, which is what
    docs/power-bi.md tells a BI user to set (``UTC``); None keeps the server's.
    """
    u = sa.engine.make_url(url)
    parts = [f"Driver={{{PG_DRIVER}}}", f"Server={u.host}", f"Port={u.port or 5432}",
             f"Database={u.database}", f"Uid={user or u.username}", f"Pwd={u.password or ''}"]
    options = u.query.get("options")
    if options:
        parts.append(f"pqopt={{options={options}}}")
    if timezone:
        parts.append(f"ConnSettings={{SET TimeZone TO '{timezone}'}}")
    return ";".join(parts) + ";"


def sqlite_odbc(url: str) -> str:
    """A DSN-less SQLite ODBC connection string for a ``sqlite:///`` URL; NoCreat: a
    wrong path is an error, not a new empty database."""
    return f"Driver={{{SQLITE_DRIVER}}};Database={sa.engine.make_url(url).database};NoCreat=1;"


def odbc_read(connection: str, sql: str, driver: str = PG_DRIVER) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of one query, read through the real ODBC driver."""
    pyodbc = require_driver(driver)
    conn = pyodbc.connect(connection)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        names = [d[0] for d in cur.description]
        return names, [tuple(row) for row in cur.fetchall()]
    finally:
        conn.close()


def column_types(rows: Sequence[tuple[Any, ...]], names: Sequence[str]) -> dict[str, set[type]]:
    """The Python types each column's non-NULL values arrived as."""
    return {n: {type(r[i]) for r in rows if r[i] is not None} for i, n in enumerate(names)}


@pytest.mark.parametrize("driver", [PG_DRIVER, SQLITE_DRIVER])
def test_odbc_driver_is_registered_with_unixodbc(driver: str) -> None:
    pyodbc = require_driver(driver)
    assert driver in pyodbc.drivers()
