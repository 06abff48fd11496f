"""Query files as SQL text: comments out, string literals kept, bind names found.

A query file is trusted SQL written by the job's owner, but it reaches the
database through SQLAlchemy's ``text()``, which reads every ``:name`` as a bind
parameter: also one inside a comment (``/* :as_of */``) or a string literal
(``'12:30'``). :func:`prepare_query` scans the text the way the database's own
lexer does:

- comments (``-- ...`` to the end of the line, ``/* ... */``, nested on
  PostgreSQL) become a space, so a trailing comment cannot swallow SQL that is
  wrapped around the query;
- string literals and quoted identifiers are kept; each ``:`` in them is
  escaped as ``\\:``, which ``text()`` turns back into ``:``, so the database
  receives them unchanged;
- the bind names left are those ``text()`` finds (its own rule, copied below),
  all outside literals and comments.

Lexical rules: ``'...'`` with ``''`` for a quote, ``"..."`` with ``""``;
PostgreSQL adds ``E'...'`` (backslash escapes) and dollar quoting
(``$$...$$``, ``$tag$...$tag$``); SQLite adds ``[...]`` and `` `...` ``
identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# SQLAlchemy's rule for a bind in text(): ":name" not after ":", a word
# character or a backslash, and not followed by ":" or a word character.
BIND = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")
# ":name::type" (a PostgreSQL cast) fails the rule above; a space before the
# cast makes it a bind without changing the SQL's meaning.
_BIND_BEFORE_CAST = re.compile(r"(?<![:\w\\])(:\w+)(?=::)")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


@dataclass(frozen=True)
class QueryText:
    """A query ready for ``text()``: its SQL (comments out, literals escaped) and bind names in order."""

    sql: str
    binds: tuple[str, ...]


def prepare_query(sql: str, postgres: bool) -> QueryText:
    """The query without comments or a trailing ``;``, and the bind names it uses.

    ``postgres`` picks PostgreSQL's lexical rules, otherwise SQLite's. Raises
    ValueError naming the line of an unterminated literal or comment.
    """
    out = []
    for kind, text in _segments(sql, postgres):
        if kind == "code":
            out.append(_BIND_BEFORE_CAST.sub(r"\1 ", text))
        elif kind == "literal":
            out.append(text.replace(":", "\\:"))
        else:
            out.append(" ")
    clean = "".join(out).strip()
    while clean.endswith(";"):
        clean = clean[:-1].rstrip()
    names = tuple(dict.fromkeys(BIND.findall(clean)))
    return QueryText(clean, names)


def _segments(sql: str, postgres: bool) -> Iterator[tuple[str, str]]:
    """``(kind, text)`` pieces covering ``sql``: ``code``, ``literal`` or ``comment``."""
    i = start = 0
    while i < len(sql):
        found = _special_at(sql, i, postgres)
        if found is None:
            i += 1
            continue
        kind, end = found
        if start < i:
            yield "code", sql[start:i]
        yield kind, sql[i:end]
        i = start = end
    if start < len(sql):
        yield "code", sql[start:]


def _special_at(sql: str, i: int, postgres: bool) -> tuple[str, int] | None:
    """A comment or literal starting at ``i``: its kind and where it ends; None for code."""
    c = sql[i]
    if sql.startswith("--", i):
        end = sql.find("\n", i)
        return "comment", len(sql) if end < 0 else end
    if sql.startswith("/*", i):
        return "comment", _block_comment_end(sql, i, nested=postgres)
    if c == "'":
        escapes = postgres and i > 0 and sql[i - 1] in "eE" and not _word_before(sql, i - 1)
        return "literal", _quoted_end(sql, i, "'", backslash=escapes)
    if c == '"' or (not postgres and c == "`"):
        return "literal", _quoted_end(sql, i, c)
    if not postgres and c == "[":
        end = sql.find("]", i + 1)
        return "literal", _checked(sql, i, end, "[ identifier") + 1
    if postgres and c == "$" and not _word_before(sql, i):
        tag = _DOLLAR_TAG.match(sql, i)
        if tag is not None:
            end = sql.find(tag.group(), tag.end())
            return "literal", _checked(sql, i, end, "dollar-quoted string") + len(tag.group())
    return None


def _word_before(sql: str, i: int) -> bool:
    """Whether the character before ``i`` continues an identifier (``a$b``, ``name'``)."""
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")


def _quoted_end(sql: str, i: int, quote: str, backslash: bool = False) -> int:
    """End of the literal opened by ``quote`` at ``i`` (a doubled quote stays inside)."""
    j = i + 1
    while j < len(sql):
        ch = sql[j]
        if backslash and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if sql.startswith(quote, j + 1):
                j += 2
                continue
            return j + 1
        j += 1
    raise ValueError(f"unterminated {quote}...{quote} literal starting on line {_line(sql, i)}")


def _block_comment_end(sql: str, i: int, nested: bool) -> int:
    depth, j = 1, i + 2
    while j < len(sql):
        if sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        elif nested and sql.startswith("/*", j):
            depth += 1
            j += 2
        else:
            j += 1
    raise ValueError(f"unterminated /* comment starting on line {_line(sql, i)}")


def _checked(sql: str, i: int, end: int, what: str) -> int:
    if end < 0:
        raise ValueError(f"unterminated {what} starting on line {_line(sql, i)}")
    return end


def _line(sql: str, i: int) -> int:
    return sql.count("\n", 0, i) + 1
