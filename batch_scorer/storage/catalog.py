"""What the database's catalogue says about tables and views, asked once per engine.

Reflecting a table costs about 15 queries (columns, keys, indexes, comments);
a fleet of 200 jobs writing one output table would ask the same questions 400
times. An engine's :class:`Catalog` remembers the answers: which tables and
views exist, reflected tables, PostgreSQL column type OIDs. What the tool
creates itself is recorded as it goes; DDL by others is seen by the next
command (a new engine), and the daemon forgets everything before each batch of
fires (:meth:`Catalog.clear`). The catalogue is dropped with its engine.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

_Key = tuple[str | None, str]


class Catalog:
    """One engine's remembered catalogue (module doc). Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._tables: dict[str | None, set[str]] = {}
        self._views: dict[str | None, set[str]] = {}
        self._reflected: dict[_Key, sa.Table] = {}
        self._oids: dict[_Key, dict[str, int]] = {}
        self._memo: dict[str, Any] = {}

    def clear(self) -> None:
        """Forget everything (the next questions go to the database)."""
        with self._lock:
            self._tables.clear()
            self._views.clear()
            self._reflected.clear()
            self._oids.clear()
            self._memo.clear()

    def _names(self, cache: dict[str | None, set[str]], schema: str | None, views: bool) -> set[str]:
        with self._lock:
            if schema in cache:
                return cache[schema]
        insp = sa.inspect(self._engine)
        names = set(insp.get_view_names(schema=schema) if views else insp.get_table_names(schema=schema))
        with self._lock:
            cache[schema] = names
        return names

    def has_table(self, name: str, schema: str | None = None) -> bool:
        return name in self._names(self._tables, schema, views=False)

    def has_view(self, name: str, schema: str | None = None) -> bool:
        return name in self._names(self._views, schema, views=True)

    def created(self, name: str, schema: str | None = None, view: bool = False) -> None:
        """Record that the tool just made a table or view."""
        with self._lock:
            cache = self._views if view else self._tables
            if schema in cache:
                cache[schema].add(name)
            self._reflected.pop((schema, name), None)

    def table(self, name: str, schema: str | None = None, conn: Connection | None = None) -> sa.Table:
        """The reflected table (``NoSuchTableError`` if there is none)."""
        with self._lock:
            found = self._reflected.get((schema, name))
        if found is None:
            found = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn or self._engine)
            with self._lock:
                self._reflected[(schema, name)] = found
        return found

    def remember(self, key: str, load: Any) -> Any:
        """``load()``'s answer, asked once (e.g. "the ledger is up to date")."""
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = load()
        with self._lock:
            self._memo[key] = value
        return value

    def oids(self, key: _Key, load: Any) -> dict[str, int]:
        """PostgreSQL type OIDs of a table's columns, from ``load()`` the first time."""
        with self._lock:
            found = self._oids.get(key)
        if found is None:
            found = load()
            with self._lock:
                self._oids[key] = found
        return found


_catalogs: weakref.WeakKeyDictionary[Engine, Catalog] = weakref.WeakKeyDictionary()
_catalogs_lock = threading.Lock()


def catalog(engine: Engine) -> Catalog:
    """The engine's catalogue, made on first use, dropped with the engine."""
    with _catalogs_lock:
        found = _catalogs.get(engine)
        if found is None:
            found = _catalogs[engine] = Catalog(engine)
            sa.event.listen(engine, "engine_disposed", lambda _engine: found.clear())
        return found
