"""Passwords out of every message: URLs rendered masked, free text scrubbed.

A base module (no other batch-scorer imports): config, storage and the CLI's
log filter all use it, so no error text or log line ever carries a password.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_PASSWORD_IN_TEXT = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_PASSWORD_SETTING = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask_url(url: str | URL) -> str:
    """Render a URL with its password replaced by ``***``."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return mask_text(str(url))
    return parsed.render_as_string(hide_password=True)


def mask_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove passwords from free text (error messages may echo a URL or DSN)."""
    text = _PASSWORD_IN_TEXT.sub(r"\1***\3", text)
    text = _PASSWORD_SETTING.sub(r"\1***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without SQLAlchemy's background link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
