"""``rollback`` walks the alias's history the way an operator expects: an event that
changed nothing (a promote to the version already there) is passed over, a second
rollback undoes the first, and every move is an event of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_scorer import api
from batch_scorer.errors import UsageError
from tests.helpers import features_frame, train
from tests.registry_support import registry_config, setup_source


def _versions(cfg: Path) -> list[int]:
    models = (train("binary"), train("forest"), train("binary", features_frame(300, seed=9)))
    return [api.register_model(str(cfg), "churn", m).version.version for m in models]


def test_rollback_passes_over_no_op_promotes_and_a_second_rollback_undoes_the_first(
    tmp_path: Path, sqlite_url: str
) -> None:
    setup_source(sqlite_url)
    cfg = registry_config(tmp_path, sqlite_url)
    v1, v2, v3 = _versions(cfg)
    for version in (v1, v2, v3, v3, v3):  # the last two change nothing
        api.promote_model(str(cfg), "churn", version)
    back = api.rollback_model(str(cfg), "churn")
    assert (back.from_version, back.to_version) == (v3, v2)  # not v3 -> v3
    again = api.rollback_model(str(cfg), "churn")
    assert (again.from_version, again.to_version) == (v2, v3)  # undoes the rollback
    events = [(e.action, e.from_version, e.to_version) for e in api.model_history(str(cfg), "churn")]
    assert events[-2:] == [("rollback", v3, v2), ("rollback", v2, v3)]
    assert [e for e in events if e[0] == "promote"] == [
        ("promote", None, v1), ("promote", v1, v2), ("promote", v2, v3), ("promote", v3, v3), ("promote", v3, v3)]


def test_rollback_of_an_alias_that_held_one_version_only_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    setup_source(sqlite_url)
    cfg = registry_config(tmp_path, sqlite_url)
    version = api.register_model(str(cfg), "churn", train("binary")).version.version
    api.promote_model(str(cfg), "churn", version)
    api.promote_model(str(cfg), "churn", version)
    with pytest.raises(UsageError, match="nothing to roll back to"):
        api.rollback_model(str(cfg), "churn")
