"""Read a YAML config text, refusing a key written twice in one mapping.

PyYAML's ``safe_load`` lets the last of two equal keys win silently, so a job
name written twice would quietly lose the first job. Here the second one is a
:class:`ConfigError` naming the key and both line numbers. Merge keys
(``<<: *anchor``) still work: a key given next to a merge overrides the merged
value, as YAML intends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode

from batch_scorer.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(Exception):
    """Raised inside the loader; turned into a ConfigError once the file name is known."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.second_line = key, first_line, second_line


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings refuse a key that occurs twice."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build the mapping after checking its explicitly written keys are distinct."""
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
            except TypeError:
                continue  # an unhashable key: SafeLoader itself reports it below
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, path: Path) -> Any:
    """Parse ``text`` (the contents of ``path``); ConfigError on bad YAML or a repeated key."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as dup:
        raise ConfigError(
            f"config file {str(path)!r} writes the key {dup.key!r} twice in the same mapping "
            f"(lines {dup.first_line} and {dup.second_line}); YAML would silently keep only "
            "the second. Remove one, or rename it (two jobs need two names)."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
