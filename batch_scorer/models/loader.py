"""Loading a model safely and learning its contract.

A model arrives as bytes: read once from a file (:func:`load_model`) or from a
registry table (:func:`load_model_bytes`). Those same bytes are hashed, checked
against the sha256 pin, and only then deserialized, so what is loaded is exactly
what was checked. Pickle/joblib files run code when loaded; a ``.skops`` file
(:mod:`skops.io`) does not, and only types skops trusts, plus those the job
lists in ``model.trusted_types``, are accepted from it.

Before a row is read, the fitted model is checked for what batch-scorer can
store: fitted, one prediction per row, as many features as the job names
(:mod:`batch_scorer.models.contract` holds those rules). What the model reveals
(its columns, classes, kind and feature kinds) is learnt once, here, into a
:class:`LoadedModel`; :mod:`batch_scorer.models.scoring` scores with it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import joblib
import sklearn

from batch_scorer.errors import ModelError
from batch_scorer.files import warn_if_writable_by_others
from batch_scorer.models.contract import check_fitted, check_n_features, check_single_output, model_kind
from batch_scorer.models.features import fitted_kinds

log = logging.getLogger(__name__)

# "joblib" and "pickle" are both read by joblib.load (it reads plain pickles too).
FORMATS = ("joblib", "pickle", "skops")
SKOPS_SUFFIX = ".skops"
_ZIP_MAGIC = b"PK\x03\x04"  # a .skops file is a zip archive
# How a pickle (protocol 2+) and joblib's compressed files (zlib, gzip, bz2, xz, lz4) begin.
_PICKLE_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score: the estimator and what we know about its contract."""

    estimator: Any
    path: Path | None  # None when the bytes came from elsewhere (a registry table)
    sha256: str
    version: str
    features: tuple[str, ...]
    by_name: bool  # fitted on a DataFrame: feed columns by name, not position
    is_classifier: bool
    has_proba: bool
    classes: tuple[Any, ...] | None
    pickled_sklearn_version: str
    kind: str  # "classifier", "regressor", "clusterer" or "other" (contract.model_kind)
    source: str  # where it came from, for messages: "file models/m.joblib", "registry churn v3"
    fmt: str  # one of FORMATS
    # What each feature was at fit time ('numeric'/'text'), where the model tells;
    # see batch_scorer.models.features.
    feature_kinds: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def describe_kind(self) -> str:
        """What kind of model this is, in words: ``classifier with 2 classes``, ``regressor``..."""
        if self.kind == "classifier":
            text = f"classifier with {self.n_classes} classes" if self.n_classes else "classifier"
            return text if self.has_proba else f"{text}, without predict_proba"
        if self.kind == "clusterer":
            return "clusterer (it predicts cluster labels)"
        if self.kind == "regressor":
            return "regressor"
        return "model that is neither a classifier, a regressor nor a clusterer"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex (what ``model.sha256`` pins)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def format_for(path: Path) -> str:
    """The format a model file is read in, by its suffix: ``skops`` for ``.skops``, else ``joblib``."""
    return "skops" if path.suffix.lower() == SKOPS_SUFFIX else "joblib"


def load_model(
    job: str,
    path: Path,
    pinned_sha256: str | None = None,
    version: str | None = None,
    features: list[str] | None = None,
    allow_version_mismatch: bool = False,
    *,
    fmt: str | None = None,
    trusted_types: Sequence[str] = (),
) -> LoadedModel:
    """Read a model file once and load it with :func:`load_model_bytes`. Raises :class:`ModelError`.

    ``fmt`` defaults to the file's suffix (:func:`format_for`).
    """
    data, fmt = read_model(job, path, fmt)
    loaded = load_model_bytes(
        job,
        data,
        source=f"file {path}",
        fmt=fmt,
        pinned_sha256=pinned_sha256,
        version=version,
        features=features,
        allow_version_mismatch=allow_version_mismatch,
        trusted_types=trusted_types,
    )
    return replace(loaded, path=path)


def read_model(job: str, path: Path, fmt: str | None = None) -> tuple[bytes, str]:
    """A model file's bytes (read once) and its format (``fmt``, else by suffix); warns
    when others may write the file."""
    fmt = fmt or format_for(path)
    data = read_model_file(job, path)
    risk = (
        "anyone who can write it can change what it predicts"
        if fmt == "skops"
        else "anyone who can write it can run code as this user"
    )
    warn_if_writable_by_others(path, f"job {job!r}: model file", risk)
    return data, fmt


def read_model_file(job: str, path: Path, command: str | None = None) -> bytes:
    """The bytes of a model file, read once; a clear :class:`ModelError` for a
    missing path, a directory, an unreadable or an empty file. ``command``: the file was
    named on a command (``models register``), not by a job's ``model.path``."""
    who = f"job {job!r}: model.path" if command is None else f"{command}:"
    if path.is_dir():
        raise ModelError(
            f"{who} {path} is a directory, not a model file. Point "
            f"{'model.path' if command is None else 'it'} at the file the model was saved to "
            "(e.g. models/churn.joblib)."
        )
    if not path.exists():
        fix = "fix model.path in the config" if command is None else "check the path given"
        raise ModelError(
            f"{'job ' + repr(job) + ':' if command is None else who} model file {path} not found. Train and save "
            f"the model there (joblib.dump(model, path)), or {fix}."
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"job {job!r}: cannot read model file {path}: {type(exc).__name__}: {exc.strerror or exc}. "
            "Check that it is a regular file this user may read."
        ) from exc
    if not data:
        raise ModelError(
            f"job {job!r}: model file {path} is empty (0 bytes): it was created but never written, "
            "or saving it was interrupted. Save the model again (joblib.dump or skops.io.dump)."
        )
    return data


def load_model_bytes(
    job: str,
    data: bytes,
    *,
    source: str,
    fmt: str,
    pinned_sha256: str | None = None,
    version: str | None = None,
    features: Sequence[str] | None = None,
    allow_version_mismatch: bool = False,
    trusted_types: Sequence[str] = (),
) -> LoadedModel:
    """Check the pin on ``data``, deserialize those same bytes, check the model can
    be scored, and learn its contract. Raises :class:`ModelError`.

    ``source`` says where the bytes came from and follows "model" in messages
    ("file models/churn.joblib", "registry churn v3"). ``fmt`` is one of
    :data:`FORMATS`; ``trusted_types`` are the types a skops file may hold beyond
    those skops trusts (the job's ``model.trusted_types``); pickles ignore it.
    """
    if fmt not in FORMATS:
        raise ModelError(f"job {job!r}: model {source}: unknown model format {fmt!r}; use one of {list(FORMATS)}.")
    if not data:
        raise ModelError(f"job {job!r}: model {source} is empty (0 bytes). Save the model again.")
    sha = hashlib.sha256(data).hexdigest()
    if pinned_sha256 is not None and sha != pinned_sha256:
        raise ModelError(
            f"job {job!r}: model {source} has sha256 {sha}, but the config pins "
            f"{pinned_sha256}. The model was not loaded. If the new model is intended, "
            "update model.sha256; otherwise restore the pinned one."
        )
    estimator, saved_with = _deserialize(job, data, source, fmt, trusted_types)
    _check_version(job, source, fmt, saved_with, allow_version_mismatch)
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(
            f"job {job!r}: model {source} holds a {type(estimator).__name__}, not a model with a "
            "predict() method. Save the fitted estimator or Pipeline itself."
        )
    check_fitted(job, source, estimator)
    check_single_output(job, source, estimator)
    feats, by_name = _features(job, source, estimator, features)
    check_n_features(job, source, estimator, feats, by_name)
    kind = model_kind(estimator)
    return LoadedModel(
        estimator=estimator,
        path=None,
        sha256=sha,
        version=version or sha[:12],
        features=feats,
        by_name=by_name,
        is_classifier=kind == "classifier",
        has_proba=callable(getattr(estimator, "predict_proba", None)),
        classes=tuple(getattr(estimator, "classes_", ())) if kind == "classifier" else None,
        pickled_sklearn_version=saved_with,
        kind=kind,
        source=source,
        fmt=fmt,
        feature_kinds=fitted_kinds(estimator, feats),
    )


def _check_version(job: str, source: str, fmt: str, saved_with: str, allowed: bool) -> None:
    if saved_with == sklearn.__version__:
        return
    verb = "saved" if fmt == "skops" else "pickled"
    if not allowed:
        raise ModelError(
            f"job {job!r}: model {source} was {verb} with scikit-learn {saved_with}, "
            f"but scikit-learn {sklearn.__version__} is installed. Re-train or re-save the "
            "model with this version, install the matching version, or set "
            "allow_version_mismatch: true on the job to accept the risk."
        )
    log.warning(
        "job %s: model %s with scikit-learn %s, running %s (allowed by the job)",
        job, verb, saved_with, sklearn.__version__,
    )


def _deserialize(job: str, data: bytes, source: str, fmt: str, trusted: Sequence[str]) -> tuple[Any, str]:
    """The estimator in ``data`` and the scikit-learn version it was saved with
    (from scikit-learn's InconsistentVersionWarning, which both formats raise)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fmt == "skops":
            estimator = _load_skops(job, data, source, trusted)
        else:
            estimator = _unpickle(job, data, source)
    saved_with = sklearn.__version__
    for w in caught:
        original = getattr(w.message, "original_sklearn_version", None)
        if original:
            saved_with = str(original)
    return estimator, saved_with


def _unpickle(job: str, data: bytes, source: str) -> Any:
    try:
        return joblib.load(io.BytesIO(data))  # noqa: S301 - pinned by sha256 above; see docs/operations.md ("Replacing a model file")
    except Exception as exc:  # any unpickling failure is a bad model file
        if _looks_truncated(data, exc):
            problem = (
                f"it is truncated (it ends before the model does: {type(exc).__name__}). It was "
                "probably copied or saved only in part; save it again with joblib.dump"
            )
        elif data.startswith(_ZIP_MAGIC):
            problem = "it is a zip archive, not a pickle: a skops file? Give it the .skops suffix"
        else:
            problem = (
                f"{type(exc).__name__}: {exc}. The file may be corrupt or not a joblib/pickle "
                "file; save it again with joblib.dump"
            )
        raise ModelError(f"job {job!r}: cannot load model {source}: {problem}.") from exc


def _looks_truncated(data: bytes, exc: Exception) -> bool:
    """Whether a failed unpickling of what looks like a pickle or a compressed joblib
    file ran out of data (pickle and joblib say it in these words)."""
    if not data.startswith(_PICKLE_MAGICS):
        return False  # random bytes can fail with the same words; do not call them truncated
    if isinstance(exc, EOFError):
        return True
    text = str(exc)
    return isinstance(exc, pickle.UnpicklingError | ValueError) and any(
        word in text for word in ("truncated", "exhausted", "EOF")
    )


def _load_skops(job: str, data: bytes, source: str, trusted: Sequence[str]) -> Any:
    """A skops file's object, after checking every type in it is trusted (by skops or the job)."""
    import skops.io as sio  # imported here: it indexes all of scikit-learn (~0.5 s) on import

    if not data.startswith(_ZIP_MAGIC):
        raise ModelError(
            f"job {job!r}: cannot load model {source}: it is not a skops file (a skops file is a "
            "zip archive). Was it saved with joblib.dump? Then give it the .joblib suffix."
        )
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except zipfile.BadZipFile as exc:
        raise ModelError(
            f"job {job!r}: cannot load model {source}: it is truncated or corrupt (the zip archive "
            "has no end). It was probably copied or saved only in part; save it again with "
            "skops.io.dump."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive is a bad file
        raise ModelError(
            f"job {job!r}: cannot load model {source}: not a readable skops file "
            f"({type(exc).__name__}: {exc}). Save it again with skops.io.dump."
        ) from exc
    refused = [t for t in untrusted if t not in set(trusted)]
    if refused:
        raise ModelError(
            f"job {job!r}: model {source} holds types that skops does not trust by default: "
            f"{', '.join(refused)}. Loading them could run their code, so the model was not "
            "loaded. If you have reviewed them and trust them, list them under the job's "
            f"model.trusted_types (trusted_types: [{', '.join(refused)}]); when registering, pass "
            f"--trust TYPE once per type (batch-scorer models register ... "
            f"{' '.join('--trust ' + t for t in refused)}) or trusted_types=[...] from Python."
        )
    try:
        return sio.loads(data, trusted=list(trusted))  # skops adds its own defaults
    except Exception as exc:  # noqa: BLE001 - any failure to build the model is a bad file
        raise ModelError(
            f"job {job!r}: cannot load model {source}: {type(exc).__name__}: {exc}. The file may be "
            "corrupt, or need a module this environment lacks; save it again with skops.io.dump."
        ) from exc


def _features(
    job: str, source: str, estimator: Any, configured: Sequence[str] | None
) -> tuple[tuple[str, ...], bool]:
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        fitted = tuple(str(n) for n in names)
        if configured is not None and list(configured) != list(fitted):
            missing = sorted(set(fitted) - set(configured))
            extra = sorted(set(configured) - set(fitted))
            raise ModelError(
                f"job {job!r}: the features: list does not match the columns the model was "
                f"fitted on (missing {missing}, not used {extra}, or another order). Remove "
                "features: from the job (the model knows its columns) or correct it."
            )
        return fitted, True
    if configured:
        return tuple(configured), False
    raise ModelError(
        f"job {job!r}: model {source} does not record the columns it was fitted on (it was "
        "fitted on an array, not a DataFrame). List them in order under the job's "
        "features: key."
    )
