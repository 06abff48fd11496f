"""The environment's part in a config: ``${VAR}`` expansion and the runtime overrides.

Both are applied once, when the config is loaded: afterwards the frozen
:class:`~batch_scorer.config.Config` is the only place anything reads them
from, so no caller needs ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from batch_scorer.errors import ConfigError

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

MODEL_THREADS_ENV = "BATCH_SCORER_MODEL_THREADS"
SCORING_THREADS_ENV = "BATCH_SCORER_SCORING_THREADS"
PROGRESS_SECONDS_ENV = "BATCH_SCORER_PROGRESS_SECONDS"

# The one key whose unset ${VAR} does not fail the load: commands that never
# connect (schedule --next, listing jobs) must work without DATABASE_URL.
_LENIENT_KEYS = {("database", "url")}


def unset_variable_message(key: str, name: str) -> str:
    """The error for a ``${name}`` in config key ``key`` whose variable is not set."""
    return (
        f"config key {key} uses ${{{name}}} but the environment variable "
        f"{name} is not set. Export it, or write ${{{name}:-default}}."
    )


def expand_env(value: Any, where: tuple[str, ...] = ()) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of ``value``.

    An unset variable without a default is a ConfigError naming the key, except
    in ``database.url``: there the text is kept unexpanded and
    :meth:`DatabaseConfig.require_url` raises that error when a command connects.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, (*where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*where, str(i))) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    try:
        return _expand_text(value, ".".join(where))
    except ConfigError:
        if where in _LENIENT_KEYS:
            return value
        raise


def _expand_text(text: str, key: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ and (os.environ[name] != "" or default is None):
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(unset_variable_message(key, name))

    return ENV_PATTERN.sub(sub, text)


def first_unset_variable(text: str) -> str | None:
    """The name of the first ``${VAR}`` (without default) left in ``text``, if any."""
    for match in ENV_PATTERN.finditer(text):
        if match.group(2) is None:
            return match.group(1)
    return None


def apply_env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` with the runtime knobs the environment sets written into it.

    ``BATCH_SCORER_MODEL_THREADS`` -> ``runtime.model_threads``,
    ``BATCH_SCORER_SCORING_THREADS`` -> ``runtime.scoring_threads``,
    ``BATCH_SCORER_PROGRESS_SECONDS`` -> ``runtime.progress_seconds``,
    ``BATCH_SCORER_ALLOW_SECONDS_CRON`` (``1``/``0``) -> ``scheduler.allow_seconds_field``.
    An unset or empty variable leaves the file's value; a malformed one is a
    ConfigError naming the variable.
    """
    overrides: list[tuple[str, str, str, Callable[[str, str], Any]]] = [
        (MODEL_THREADS_ENV, "runtime", "model_threads", _count),
        (SCORING_THREADS_ENV, "runtime", "scoring_threads", _count),
        (PROGRESS_SECONDS_ENV, "runtime", "progress_seconds", _seconds),
        ("BATCH_SCORER_ALLOW_SECONDS_CRON", "scheduler", "allow_seconds_field", _switch),
    ]
    out = dict(data)
    for env_name, section, key, parse in overrides:
        text = os.environ.get(env_name, "").strip()
        if not text:
            continue
        current = out.get(section)
        merged = dict(current) if isinstance(current, dict) else {}
        merged[key] = parse(env_name, text)
        out[section] = merged
    return out


def _count(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"environment variable {name}={text!r} must be a whole number of threads >= 1; "
            f"fix it or unset it (unset = the config's value or the default)"
        )
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ConfigError(
            f"environment variable {name}={text!r} must be a number of seconds >= 0; "
            "fix it or unset it (unset = the config's value or the default)"
        )
    return value


def _switch(name: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise ConfigError(
            f"environment variable {name}={text!r} must be 1 (on) or 0 (off); "
            "fix it or unset it (unset = the config's value or the default)"
        )
    return text == "1"
