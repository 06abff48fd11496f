"""File-level checks shared by the config and model loaders."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def warn_if_writable_by_others(path: Path, what: str, risk: str) -> bool:
    """Warn (don't refuse) when ``path`` is writable by group or others.

    Model files are unpickled (which runs code) and the config names which
    model files get loaded, so either one writable by others is a way in.
    Returns whether it warned.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    log.warning("%s %s is writable by group or others; %s (chmod go-w it)", what, path, risk)
    return True
