"""Job matrices: one job written with ``matrix:`` becomes one job per combination.

``matrix: {country: [DE, FR], tier: [a, b]}`` on job ``churn`` gives
``churn.DE.a``, ``churn.DE.b``, ``churn.FR.a``, ``churn.FR.b`` (values joined
after the job name in the matrix's key order; the first key varies slowest).
In every string value of the job, ``{key}`` is replaced by that expansion's
value. This works on the parsed YAML, before validation, so every expansion is
then validated exactly like a hand-written job.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batch_scorer.errors import ConfigError
from batch_scorer.names import IDENTIFIER, JOB_NAME, PLAIN_NAME, RESERVED_BIND_PARAMS

MATRIX_KEY = "matrix"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Expansion:
    """Where an expanded job came from: the matrix job's name and this combination."""

    base: str
    values: dict[str, str]

    def describe(self) -> str:
        """``matrix job 'churn' with country=DE, tier=a`` (for error messages)."""
        combo = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return f"matrix job {self.base!r} with {combo}"


def expand_jobs(raw_jobs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Expansion]]:
    """Replace every matrix job in ``raw_jobs`` by its expansions, in config order.

    Returns the new jobs mapping (name -> raw settings, with ``name``, ``base``
    and ``matrix_values`` filled in) and, for each expanded name, its
    :class:`Expansion`. Two jobs with one name, or a matrix name equal to a job
    name, are ConfigErrors naming both.
    """
    jobs: dict[str, Any] = {}
    origins: dict[str, Expansion] = {}
    for name, job in raw_jobs.items():
        if isinstance(job, dict) and MATRIX_KEY in job:
            for exp_name, settings, origin in _expand_one(name, job):
                _add(jobs, origins, exp_name, settings, origin)
        else:
            _add(jobs, origins, name, job, None)
    bases = {o.base for o in origins.values()}
    for base in bases & set(jobs):
        other = origins.get(base)
        what = f"the expansion of {other.describe()}" if other else "a hand-written job"
        raise ConfigError(
            f"the matrix job {base!r} has the same name as {what}, so naming {base!r} "
            "(in a command or in after:) would be ambiguous; rename one of them"
        )
    return jobs, origins


def _add(
    jobs: dict[str, Any], origins: dict[str, Expansion], name: str, job: Any, origin: Expansion | None
) -> None:
    if name in jobs:
        first = origins.get(name)
        first_what = f"the expansion of {first.describe()}" if first else f"the hand-written job {name!r}"
        second_what = f"the expansion of {origin.describe()}" if origin else f"the hand-written job {name!r}"
        raise ConfigError(
            f"two jobs are called {name!r}: {first_what} and {second_what}; "
            "every job needs its own name (rename a job, or change a matrix value)"
        )
    jobs[name] = job
    if origin is not None:
        origins[name] = origin


def _expand_one(name: str, job: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Expansion]]:
    """Yield ``(expanded name, settings, origin)`` for each combination of ``job``'s matrix."""
    matrix = _matrix_values(name, job[MATRIX_KEY])
    body = {k: v for k, v in job.items() if k != MATRIX_KEY}
    _check_placeholders(name, body, list(matrix), ())
    for combo in itertools.product(*matrix.values()):
        values = dict(zip(matrix, combo, strict=True))
        exp_name = ".".join([name, *combo])
        if not JOB_NAME.match(exp_name):
            raise ConfigError(
                f"job {name!r}: the matrix gives the job name {exp_name!r}, which is longer than "
                "100 characters; shorten the job name or the matrix values"
            )
        settings = _substitute(body, values)
        settings.update(name=exp_name, base=name, matrix_values=dict(values))
        for section in ("source", "labels"):
            part = settings.get(section)
            if isinstance(part, dict) and part.get("query") is not None:
                # A query gets the values as bind parameters, never pasted into its SQL.
                settings[section] = {**part, "params": dict(values)}
        yield exp_name, settings, Expansion(name, dict(values))


def _matrix_values(name: str, matrix: Any) -> dict[str, list[str]]:
    """The matrix as ``{key: [value, ...]}`` (values as text), or a ConfigError saying what is wrong."""
    if not isinstance(matrix, dict) or not matrix:
        raise ConfigError(
            f"job {name!r}: matrix must be a non-empty mapping of key to a list of values, "
            f"e.g. matrix: {{country: [DE, FR]}} (got {matrix!r})"
        )
    out: dict[str, list[str]] = {}
    for key, values in matrix.items():
        if not isinstance(key, str) or not IDENTIFIER.match(key):
            raise ConfigError(
                f"job {name!r}: matrix key {key!r} must be a plain identifier (letters, digits "
                "and underscores, not starting with a digit): the job's strings use it as {key}"
            )
        if key in RESERVED_BIND_PARAMS:
            raise ConfigError(
                f"job {name!r}: matrix key {key!r} is a bind parameter the tool itself passes "
                f"(reserved: {', '.join(RESERVED_BIND_PARAMS)}); call it something else"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"job {name!r}: matrix key {key!r} needs a non-empty list of values, "
                f"e.g. {key}: [a, b] (got {values!r})"
            )
        texts = [_value_text(name, key, v) for v in values]
        for text in texts:
            if texts.count(text) > 1:
                raise ConfigError(
                    f"job {name!r}: matrix key {key!r} lists the value {text!r} twice, "
                    "which would give two jobs of the same name; remove one"
                )
        out[key] = texts
    return out


def _value_text(name: str, key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and PLAIN_NAME.match(value):
        return value
    hint = ""
    if isinstance(value, bool):
        hint = (
            " YAML reads unquoted yes/no/on/off/true/false as booleans (NO, the country "
            "code, too): quote it, e.g. 'NO'."
        )
    raise ConfigError(
        f"job {name!r}: matrix value {value!r} of key {key!r} is not a plain name "
        f"(letters, digits, '_' and '-', at most 100; a whole number is fine, quoted if it has a leading zero).{hint}"
    )


def _check_placeholders(name: str, value: Any, keys: list[str], where: tuple[str, ...]) -> None:
    """ConfigError for a ``{word}`` in a string of the job that is not a matrix key."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_placeholders(name, v, keys, (*where, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_placeholders(name, v, keys, (*where, str(i)))
    elif isinstance(value, str):
        for match in _PLACEHOLDER.finditer(value):
            if match.group(1) not in keys:
                close = difflib.get_close_matches(match.group(1), keys, n=1, cutoff=0.6)
                hint = f" (did you mean {{{close[0]}}}?)" if close else ""
                raise ConfigError(
                    f"job {name!r}: {'.'.join(where)} {value!r} uses the placeholder "
                    f"{match.group(0)}, which is not a matrix key{hint}; the matrix keys "
                    f"are: {', '.join(keys)}"
                )


def _substitute(value: Any, values: dict[str, str]) -> Any:
    """``value`` with ``{key}`` replaced in every string (placeholders already checked)."""
    if isinstance(value, dict):
        return {k: _substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, values) for v in value]
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    return value
