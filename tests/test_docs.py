"""The documentation stays true to the repository: it points nowhere outside it, its
links resolve, the README links every docs page, every test docs/guarantees.md names
exists, the README keeps the two set-up commands CI runs, the configuration reference
is the code's own, every CLI command is documented, and documented command lines put
global options first.

Reads files and parses Python; no database, no model."""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from batch_scorer.cli.main import cli
from batch_scorer.config.reference import BEGIN, END, reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

INSTALL_AND_DEMO = "python3 -m pip install -e . && batch-scorer demo"
INSTALL_AND_TEST = "python3 -m pip install -e '.[test]' && python3 -m pytest"
MAX_README_LINES = 220

OUTSIDE = ("../", "DESIGN.md", "STYLE.md", "shared/")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
TEST_REF = re.compile(r"(tests/test_\w+\.py)?::(test_\w+)")
GLOBAL_OPTIONS = {"--config": True, "--debug": False, "-v": False, "-vv": False, "-vvv": False,
                  "--verbose": False, "-q": False, "--quiet": False}  # option -> takes a value
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "cron", "crontab", "ini"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks and inline code (links there are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation (backticks too) dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """The anchors of a page's headings outside fenced blocks (a repeated one gets ``-1``...)."""
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            slug = _slug(match.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> Iterator[str]:
    for target in LINK.findall(_prose(path.read_text())):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not files
            yield target


@cache
def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _docstrings(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "lineno", 1), doc


def _last_command(script: Path) -> str:
    lines = [ln.strip() for ln in script.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")][-1]


def _code(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of shell-like code: the lines of shell, cron and ini blocks,
    and inline code spans (output blocks, ```text, are not command lines)."""
    language: str | None = None  # None: outside a fenced block
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if FENCE.match(stripped):
            language = stripped.strip("`~").strip().lower() if language is None else None
        elif language is not None:
            if language in SHELL_BLOCKS:
                yield number, line
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield number, span


def _command_lines(text: str) -> Iterator[list[str]]:
    """The arguments after each ``batch-scorer`` in a piece of shell text, up to a shell operator."""
    # A lookahead captures the rest, so a second `batch-scorer` on the line is matched too.
    for match in re.finditer(r"(?:^|[\s/=])batch-scorer(?=\s|$)(?=(.*))", text):
        rest = re.split(r"\s(?:\||\|\||&&|;|>>?|2>&1|#)(?=\s|$)|\s#", " " + match.group(1))[0]
        try:
            yield shlex.split(rest)
        except ValueError:
            yield rest.split()


def test_docs_and_docstrings_never_point_outside_the_repository() -> None:
    found = [f"{_rel(p)}: {bad!r}" for p in PAGES for bad in OUTSIDE if bad in p.read_text()]
    for source in sorted((ROOT / "batch_scorer").rglob("*.py")):
        for line, doc in _docstrings(source):
            found += [f"{_rel(source)}:{line} docstring: {bad!r}" for bad in ("DESIGN.md", "STYLE.md") if bad in doc]
    assert not found, "\n".join(found)


def test_every_relative_link_resolves_to_a_file_and_heading_of_the_repository() -> None:
    broken = []
    for page in PAGES:
        for target in _links(page):
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            try:
                name = resolved.relative_to(ROOT).as_posix()
            except ValueError:
                broken.append(f"{_rel(page)}: {target} (outside the repository)")
                continue
            if not resolved.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{_rel(page)}: {target} (no heading #{anchor} in {name})")
    assert not broken, "\n".join(broken)


def test_the_readme_links_to_every_docs_page() -> None:
    text = README.read_text()
    unlinked = [_rel(page) for page in DOCS if f"({_rel(page)})" not in text]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_every_test_named_in_the_guarantees_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    missing, named = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        current = None
        for match in TEST_REF.finditer(line):
            current = match.group(1) or current
            if current is None:
                missing.append(f"line {number}: ::{match.group(2)} names no test file")
                continue
            path = ROOT / current
            named += 1
            if not path.exists():
                missing.append(f"line {number}: {current} does not exist")
            elif match.group(2) not in _test_functions(path):
                missing.append(f"line {number}: {current}::{match.group(2)} does not exist")
    assert not missing, "\n".join(missing)
    assert named >= 150, f"only {named} test references: was the page cut?"


def test_readme_is_a_front_door_with_the_two_setup_commands_ci_runs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert INSTALL_AND_DEMO in text.splitlines()
    assert INSTALL_AND_TEST in text.splitlines()
    assert _last_command(ROOT / ".ci" / "run") == INSTALL_AND_TEST


def test_configuration_reference_is_generated_from_the_config_models() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    between = text[text.index(BEGIN):text.index(END) + len(END)] + "\n"
    assert between == reference(), (
        "docs/configuration.md is stale between its markers; regenerate that part with: "
        "python -m batch_scorer.config.reference"
    )


def test_every_cli_command_is_documented_in_the_readme_or_operations() -> None:
    text = README.read_text() + (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in sorted(cli.commands) if f"batch-scorer {name}" not in text]
    assert not missing, f"commands nowhere in README.md or docs/operations.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_documented_command_lines_name_real_commands_with_global_options_first(page: Path) -> None:
    wrong = []
    for number, code in _code(page):
        for args in _command_lines(code):
            i = 0
            while i < len(args) and args[i] in GLOBAL_OPTIONS:
                i += 2 if GLOBAL_OPTIONS[args[i]] else 1
            if i >= len(args) or not re.fullmatch(r"[a-z][a-z-]*", args[i]):
                continue  # `batch-scorer --help`, `batch-scorer <command>`, prose
            command, after = args[i], args[i + 1:]
            if command not in cli.commands:
                wrong.append(f"line {number}: {command!r} is not a batch-scorer command: {code.strip()}")
            late = [a for a in after if a.split("=")[0] in GLOBAL_OPTIONS]
            if late:
                wrong.append(f"line {number}: global option(s) {late} after {command!r}: {code.strip()}")
    assert not wrong, "\n".join(wrong)
