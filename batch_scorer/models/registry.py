"""The model registry: every query on ``model_versions``, ``model_aliases`` and
``model_alias_events`` lives here.

A registered model is a name with versions numbered 1, 2, ... Each version holds
the artifact's bytes (joblib/pickle or skops), their sha256, and what the model
revealed when it was registered (class, kind, feature columns). Registering the
same bytes under a name again returns the existing version. Aliases
(``champion``, ``challenger``...) point at versions; every change of an alias is
an event (``register``, ``promote``, ``rollback``) saying who (OS user @ host),
when, from which version to which, and why.

Writes to one name are serialized: ``BEGIN IMMEDIATE`` on SQLite (one writer at
a time), and on PostgreSQL a transaction-scoped advisory lock on the name
(``pg_advisory_xact_lock``), taken before anything is read, so two processes
registering or promoting at once each see the other's committed result: version
numbers never collide, and two promotes leave one alias value and two events.
(A row lock, ``SELECT ... FOR UPDATE``, cannot serialize the first registration
of a name: there is no row to lock yet.)

Loading a version (:func:`load_version`) reads its bytes and checks their
sha256 against the one recorded at registration *before* anything is
unpickled: bytes changed in the database by hand are refused, never loaded.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import DatabaseError, ModelError, UsageError
from batch_scorer.masking import first_line
from batch_scorer.models.loader import LoadedModel, load_model_bytes
from batch_scorer.storage.db import begin_write, is_postgres
from batch_scorer.storage.locks import lock_key
from batch_scorer.storage.retry import is_insufficient_privilege
from batch_scorer.storage.schema import feature_profiles, model_alias_events, model_aliases, model_versions, utcnow

log = logging.getLogger(__name__)

REGISTER, PROMOTE, ROLLBACK = "register", "promote", "rollback"
DEFAULT_ALIAS = "champion"
_VERSION_COLUMNS = [c for c in model_versions.c if c.name != "artifact"]


def version_label(version: int) -> str:
    """What output rows and the ledger's ``model_version`` carry for a registry version: ``v3``.

    Short and stable: the ledger's ``model_name`` and ``model_registry_version``
    say which registered model it is."""
    return f"v{version}"


def actor() -> str:
    """Who is acting: the OS user @ this host (recorded on every registry write)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers): the uid
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, without its bytes."""

    name: str
    version: int
    sha256: str
    format: str
    sklearn_version: str | None
    estimator_class: str
    kind: str
    features: tuple[str, ...]
    note: str | None
    registered_at: datetime
    registered_by: str
    aliases: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``v3``: :func:`version_label`."""
        return version_label(self.version)


@dataclass(frozen=True)
class AliasEvent:
    """One change of an alias (``model_alias_events``)."""

    id: int
    name: str
    alias: str
    action: str
    from_version: int | None
    to_version: int
    at: datetime
    by: str
    note: str | None


@dataclass(frozen=True)
class Registered:
    """The outcome of :func:`register`: the version, and whether this call created it."""

    version: ModelVersion
    created: bool
    event: AliasEvent | None = None


@dataclass(frozen=True)
class AliasMove:
    """The outcome of :func:`set_alias` (a promote or a rollback)."""

    name: str
    alias: str
    from_version: int | None
    to_version: int
    event: AliasEvent


def describe(
    name: str, data: bytes, fmt: str, *, source: str, trusted_types: Sequence[str] = (),
    features: Sequence[str] | None = None,
) -> LoadedModel:
    """Load bytes about to be registered (the usual checks: fitted, one prediction per row,
    skops types trusted) to learn what the model is. Raises :class:`ModelError`."""
    label = f"registry {name}"
    try:
        return load_model_bytes(label, data, source=source, fmt=fmt, features=features,
                                trusted_types=trusted_types)
    except ModelError as exc:  # the loader speaks of a job and its config: say what happened here
        text = str(exc).replace(f"job {label!r}: ", f"registering model {name!r}: ", 1)
        text = text.replace("Fit it, save it again, and update model.sha256", "Fit it, then register it again")
        raise ModelError(text) from None


def register(
    engine: Engine, name: str, data: bytes, model: LoadedModel, *, alias: str | None = None,
    note: str | None = None, profile: Sequence[dict[str, Any]] = (), by: str | None = None,
) -> Registered:
    """Store ``data`` (``model`` is what :func:`describe` learnt from it) as the name's next
    version, or return the version already holding these bytes. With ``alias``, point it at
    the version (a ``register`` event, unless it already points there). ``profile``: the
    reference profile rows (``feature``, ``bin``... as ``Profile.to_rows`` gives them), stored
    as ``reference:<name>:<version>`` with a new version, or with an existing one that has no
    reference yet (one that has keeps it: its runs' drift stays comparable)."""
    sha = hashlib.sha256(data).hexdigest()
    by = by or actor()
    with _writing(engine, name) as conn:
        existing = conn.execute(
            sa.select(model_versions.c.version).where(model_versions.c.name == name, model_versions.c.sha256 == sha)
        ).scalar()
        created = existing is None
        if created:
            version = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(model_versions.c.version), 0))
                                       .where(model_versions.c.name == name)).scalar_one()) + 1
            conn.execute(model_versions.insert().values(
                name=name, version=version, sha256=sha, format=model.fmt,
                sklearn_version=model.pickled_sklearn_version, estimator_class=_class_name(model.estimator),
                kind=model.kind, features=json.dumps(list(model.features)), note=note,
                registered_at=utcnow(), registered_by=by, artifact=data,
            ))
        else:
            version = int(existing)
        if profile:
            _store_reference(conn, name, version, profile, created)
        event = None
        if alias is not None and _alias_version(conn, name, alias) != version:
            event = _move(conn, name, alias, version, REGISTER, note, by)
        entry = _get_version(conn, name, version)
        assert entry is not None
        return Registered(entry, created, event)


def _store_reference(
    conn: Connection, name: str, version: int, profile: Sequence[dict[str, Any]], created: bool
) -> None:
    pid = reference_profile_id(name, version)
    if not created and conn.execute(
        sa.select(sa.func.count()).select_from(feature_profiles).where(feature_profiles.c.profile_id == pid)
    ).scalar():
        log.warning("model %s %s: already registered with a drift reference (%s); the reference given "
                    "now is not stored (the version's runs keep comparing with the first)", name,
                    version_label(version), pid)
        return
    conn.execute(feature_profiles.insert(), [
        {**row, "profile_id": pid, "model_name": name, "model_version": version_label(version)} for row in profile
    ])


def reference_profile_id(name: str, version: int) -> str:
    """The ``feature_profiles.profile_id`` of a version's reference profile."""
    return f"reference:{name}:{version}"


def set_alias(
    engine: Engine, name: str, alias: str, version: int, action: str, note: str | None = None,
    by: str | None = None,
) -> AliasMove:
    """Point ``alias`` of ``name`` at ``version`` and record the event (``promote``). An
    alias already there still gets its event: two promotes at once leave two events."""
    with _writing(engine, name) as conn:
        _require_version(conn, name, version)
        before = _alias_version(conn, name, alias)
        event = _move(conn, name, alias, version, action, note, by or actor())
        return AliasMove(name, alias, before, version, event)


def rollback(engine: Engine, name: str, alias: str, note: str | None = None, by: str | None = None) -> AliasMove:
    """Move ``alias`` back to the version it held before its latest change (module doc).

    Events that changed nothing (a promote to the version already there) are passed
    over; a second rollback undoes the first. :class:`UsageError` when there is no
    earlier version."""
    with _writing(engine, name) as conn:
        current = _alias_version(conn, name, alias)
        if current is None:
            raise UsageError(f"model {name!r} has no alias {alias!r} to roll back{_known_aliases(conn, name)}")
        e = model_alias_events.c
        latest = conn.execute(
            sa.select(e.from_version, e.to_version).where(e.name == name, e.alias == alias,
                                                          e.from_version.is_distinct_from(e.to_version))
            .order_by(e.id.desc()).limit(1)
        ).first()
        if latest is None or latest.from_version is None:
            raise UsageError(
                f"model {name!r} alias {alias!r} points at {version_label(current)} and held no "
                f"version before that, so there is nothing to roll back to. Promote a version instead "
                f"(batch-scorer models promote {name} VERSION --alias {alias})."
            )
        target = int(latest.from_version)
        event = _move(conn, name, alias, target, ROLLBACK, note, by or actor())
        return AliasMove(name, alias, current, target, event)


def resolve(conn: Connection, name: str, alias: str | None = None, version: int | None = None,
            job: str | None = None) -> ModelVersion:
    """The version an alias points at (or the version given); :class:`ModelError` naming the
    job when there is none."""
    who = f"job {job!r}: " if job else ""
    if not _has_registry(conn):
        raise ModelError(f"{who}model registry {name!r}: no model is registered in this database yet. "
                         f"Register one: batch-scorer models register {name} MODEL_FILE --alias champion")
    if version is None:
        assert alias is not None
        version = _alias_version(conn, name, alias)
        if version is None:
            raise ModelError(
                f"{who}model registry {name!r} has no alias {alias!r}{_known_aliases(conn, name)}. Point it at "
                f"a version: batch-scorer models promote {name} VERSION --alias {alias} "
                f"(batch-scorer models list {name} shows the versions)."
            )
    found = _get_version(conn, name, version)
    if found is None:
        raise ModelError(f"{who}model registry {name!r} has no version {version}{_known_versions(conn, name)}.")
    return found


def load_version(
    conn: Connection, entry: ModelVersion, *, job: str, features: Sequence[str] | None = None,
    allow_version_mismatch: bool = False, trusted_types: Sequence[str] = (),
) -> LoadedModel:
    """Read a version's bytes, check their sha256 against the registered one, and only
    then load them (through :func:`batch_scorer.models.loader.load_model_bytes`, pinned)."""
    data = artifact(conn, entry, job=job)
    return load_model_bytes(
        job, data, source=f"registry {entry.name} {entry.label}", fmt=entry.format, pinned_sha256=entry.sha256,
        version=entry.label, features=features, allow_version_mismatch=allow_version_mismatch,
        trusted_types=trusted_types,
    )


def artifact(conn: Connection, entry: ModelVersion, *, job: str | None = None) -> bytes:
    """A version's stored bytes, after checking that their sha256 is the registered one."""
    v = model_versions.c
    data = conn.execute(sa.select(v.artifact).where(v.name == entry.name, v.version == entry.version)).scalar()
    data = bytes(data or b"")
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry.sha256:
        who = f"job {job!r}: " if job else ""
        raise ModelError(
            f"{who}model registry {entry.name!r} {entry.label}: the stored artifact's sha256 is {sha}, but "
            f"{entry.sha256} was registered: its bytes were changed in model_versions after registration. "
            "They were not loaded. Register the intended model file again (a new version) and promote it."
        )
    return data


def list_versions(engine: Engine, name: str | None = None) -> list[ModelVersion]:
    """Every version (of one name), by name and version, with the aliases pointing at each."""
    with engine.connect() as conn:
        if not _has_registry(conn):
            return []
        v = model_versions.c
        query = sa.select(*_VERSION_COLUMNS).order_by(v.name, v.version)
        if name is not None:
            query = query.where(v.name == name)
        rows = conn.execute(query).all()
        a = model_aliases.c
        aliases: dict[tuple[str, int], list[str]] = {}
        alias_query = sa.select(a.name, a.alias, a.version).order_by(a.alias)
        for row in conn.execute(alias_query if name is None else alias_query.where(a.name == name)):
            aliases.setdefault((row.name, row.version), []).append(row.alias)
        return [_version(r, tuple(aliases.get((r.name, r.version), ()))) for r in rows]


def history(engine: Engine, name: str) -> list[AliasEvent]:
    """Every alias event of ``name``, oldest first."""
    with engine.connect() as conn:
        if not _has_registry(conn):
            return []
        e = model_alias_events.c
        rows = conn.execute(sa.select(model_alias_events).where(e.name == name).order_by(e.id)).all()
        return [_event(r) for r in rows]


def get_version(engine: Engine, name: str, version: int) -> ModelVersion:
    """One version; :class:`UsageError` when there is none."""
    with engine.connect() as conn:
        if not _has_registry(conn):
            raise UsageError(f"model {name!r} has no version {version}: no model is registered in this database")
        return _require_version(conn, name, version)


def read_artifact(engine: Engine, name: str, version: int) -> tuple[ModelVersion, bytes]:
    """A version and its bytes (sha256-checked), e.g. to export them to a file."""
    with engine.connect() as conn:
        entry = _require_version(conn, name, version) if _has_registry(conn) else None
        if entry is None:
            raise UsageError(f"model {name!r} has no version {version}: no model is registered in this database")
        return entry, artifact(conn, entry)


def alias_version(engine: Engine, name: str, alias: str) -> int | None:
    """The version ``alias`` points at now, or None."""
    with engine.connect() as conn:
        return _alias_version(conn, name, alias) if _has_registry(conn) else None


# -- inside a transaction ---------------------------------------------------------------


@contextmanager
def _writing(engine: Engine, name: str) -> Iterator[Connection]:
    """A write transaction holding the name's lock (module doc)."""
    try:
        with begin_write(engine) as conn:
            if is_postgres(conn):
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"),
                             {"k": lock_key(conn, f"model registry {name}")})
            yield conn
    except sa.exc.SQLAlchemyError as exc:
        if not is_insufficient_privilege(exc):
            raise
        user = engine.url.username or "this database user"
        raise DatabaseError(
            f"model {name!r}: {user} may not change the model registry ({first_line(exc)}). Register, "
            "promote and roll back as a role granted INSERT on model_versions and model_alias_events "
            "and INSERT, UPDATE on model_aliases (docs/registry.md); a scorer only reads the registry."
        ) from exc


def _move(conn: Connection, name: str, alias: str, version: int, action: str, note: str | None,
          by: str) -> AliasEvent:
    before = _alias_version(conn, name, alias)
    now = utcnow()
    a = model_aliases.c
    if before is None:
        conn.execute(model_aliases.insert().values(name=name, alias=alias, version=version, set_at=now, set_by=by))
    else:
        conn.execute(model_aliases.update().where(a.name == name, a.alias == alias)
                     .values(version=version, set_at=now, set_by=by))
    result = conn.execute(model_alias_events.insert().values(
        name=name, alias=alias, action=action, from_version=before, to_version=version, at=now, by=by, note=note))
    return AliasEvent(int(result.inserted_primary_key[0]), name, alias, action, before, version, now, by, note)


def _alias_version(conn: Connection, name: str, alias: str) -> int | None:
    a = model_aliases.c
    value = conn.execute(sa.select(a.version).where(a.name == name, a.alias == alias)).scalar()
    return None if value is None else int(value)


def _require_version(conn: Connection, name: str, version: int) -> ModelVersion:
    found = _get_version(conn, name, version)
    if found is None:
        raise UsageError(f"model {name!r} has no version {version}{_known_versions(conn, name)}")
    return found


def _get_version(conn: Connection, name: str, version: int) -> ModelVersion | None:
    v = model_versions.c
    row = conn.execute(sa.select(*_VERSION_COLUMNS).where(v.name == name, v.version == version)).first()
    return None if row is None else _version(row)


def _known_versions(conn: Connection, name: str) -> str:
    v = model_versions.c
    versions = conn.execute(sa.select(v.version).where(v.name == name).order_by(v.version)).scalars().all()
    if not versions:
        return f" (no version of {name!r} is registered: batch-scorer models list shows what is)"
    return f" (registered: {', '.join(version_label(int(x)) for x in versions)})"


def _known_aliases(conn: Connection, name: str) -> str:
    a = model_aliases.c
    names = conn.execute(sa.select(a.alias).where(a.name == name).order_by(a.alias)).scalars().all()
    return f" (its aliases: {', '.join(names)})" if names else ""


def _has_registry(conn: Connection) -> bool:
    return bool(sa.inspect(conn).has_table(model_versions.name))


def _version(row: Any, aliases: tuple[str, ...] = ()) -> ModelVersion:
    return ModelVersion(
        name=row.name, version=int(row.version), sha256=row.sha256, format=row.format,
        sklearn_version=row.sklearn_version, estimator_class=row.estimator_class, kind=row.kind,
        features=tuple(json.loads(row.features)), note=row.note, registered_at=row.registered_at,
        registered_by=row.registered_by, aliases=aliases,
    )


def _event(row: Any) -> AliasEvent:
    return AliasEvent(int(row.id), row.name, row.alias, row.action,
                      None if row.from_version is None else int(row.from_version), int(row.to_version),
                      row.at, row.by, row.note)


def _class_name(estimator: Any) -> str:
    cls = type(estimator)
    return f"{cls.__module__}.{cls.__qualname__}"[:200]
