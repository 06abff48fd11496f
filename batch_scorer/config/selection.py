"""Job names: what a name selects, ``after:`` dependencies, and dependency order.

A name selects, in this order of precedence: the job of exactly that name; or
every expansion of the matrix job of that name (``churn``); or the expansions
whose leading matrix values it spells (``churn.DE`` of a ``{country, tier}``
matrix selects ``churn.DE.a`` and ``churn.DE.b``). Expansions come in config
order.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path

from batch_scorer.config.job import JobConfig
from batch_scorer.errors import ConfigError, UsageError


def matrix_jobs(jobs: Mapping[str, JobConfig]) -> dict[str, list[str]]:
    """``{matrix job name: [its expanded job names, in config order]}``."""
    out: dict[str, list[str]] = {}
    for name, job in jobs.items():
        if job.matrix_values:
            out.setdefault(job.base, []).append(name)
    return out


def resolve_name(jobs: Mapping[str, JobConfig], name: str) -> list[str] | None:
    """The expanded job names ``name`` selects (see the module docstring), or None."""
    if name in jobs:
        return [name]
    found = [n for n, job in jobs.items() if job.matrix_values and name in _prefixes(job)]
    return found or None


def _prefixes(job: JobConfig) -> set[str]:
    parts = [job.base, *job.matrix_values.values()]
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def unknown_name(
    jobs: Mapping[str, JobConfig], name: str, source_file: Path | None, what: str = "unknown job"
) -> ConfigError:
    """The error for a name that selects nothing: the known names and a did-you-mean hint."""
    matrices = matrix_jobs(jobs)
    choices = [*jobs, *matrices]
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    known = ", ".join(jobs) or "(none)"
    text = f"{what} {name!r}{hint}. Jobs in {source_file or 'the config'}: {known}."
    if matrices:
        text += f" Matrix jobs (a name selects all its expansions): {', '.join(matrices)}."
    return ConfigError(text)


def select(
    jobs: Mapping[str, JobConfig], names: Sequence[str], all_jobs: bool, source_file: Path | None
) -> list[str]:
    """Expanded job names for ``names`` (in the order given, no repeats), or all jobs."""
    if isinstance(names, str):
        raise UsageError(
            f"job names must be a list, e.g. [{names!r}], not the bare string {names!r} "
            "(a string would be read as one job name per character)"
        )
    names = list(names)
    if all_jobs and names:
        raise UsageError(f"give job names or --all (all_jobs=True from Python), not both (names given: {names})")
    if all_jobs:
        return list(jobs)
    if not names:
        raise UsageError("name at least one job, or pass --all (all_jobs=True from Python) for every job")
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise UsageError(f"job names must be strings; got {name!r}")
        found = resolve_name(jobs, name)
        if found is None:
            raise unknown_name(jobs, name, source_file)
        out.extend(found)
    return list(dict.fromkeys(out))


def resolve_after(
    jobs: Mapping[str, JobConfig], describe: Mapping[str, str], source_file: Path | None
) -> dict[str, tuple[str, ...]]:
    """Each job's ``after:`` as expanded job names in config order; ConfigError on a bad entry or a cycle.

    ``describe`` maps an expanded job name to where it came from, for messages.
    """
    position = {name: i for i, name in enumerate(jobs)}
    deps: dict[str, tuple[str, ...]] = {}
    for name, job in jobs.items():
        label = f"job {name!r}" + (f" ({describe[name]})" if name in describe else "")
        found: set[str] = set()
        for entry in job.after:
            got = resolve_name(jobs, entry)
            if got is None:
                raise unknown_name(jobs, entry, source_file, what=f"{label}: after: names unknown job")
            found.update(got)
        if name in found:
            raise ConfigError(
                f"{label}: after: {job.after} includes the job itself; a job cannot run after "
                "itself (name the other jobs, or their expansions, instead)"
            )
        deps[name] = tuple(sorted(found, key=position.__getitem__))
    _refuse_cycles(deps)
    return deps


def _refuse_cycles(deps: Mapping[str, tuple[str, ...]]) -> None:
    """ConfigError naming the first cycle found, e.g. ``a -> b -> a``."""
    done: set[str] = set()
    for start in deps:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                path.append(node)
                on_path.add(node)
            children = deps[node]
            if i < len(children):
                stack.append((node, i + 1))
                child = children[i]
                if child in on_path:
                    cycle = [*path[path.index(child):], child]
                    raise ConfigError(
                        "jobs wait for each other in a cycle (after:): "
                        f"{' -> '.join(cycle)}; remove one of these after: entries"
                    )
                if child not in done:
                    stack.append((child, 0))
            else:
                path.pop()
                on_path.discard(node)
                done.add(node)


def dependency_order(deps: Mapping[str, tuple[str, ...]], names: Sequence[str]) -> list[list[str]]:
    """``names`` in waves: each job comes after every selected job it depends on.

    Dependencies count transitively (if a runs after b and b after c, a comes
    after c even when b is not selected), but jobs outside ``names`` are not
    added. Within a wave, jobs keep the order of ``names``.
    """
    chosen = list(dict.fromkeys(names))
    selected = set(chosen)
    reach: dict[str, set[str]] = {}

    def upstream(name: str) -> set[str]:
        if name not in reach:
            reach[name] = set()
            for dep in deps[name]:
                reach[name] |= {dep, *upstream(dep)}
        return reach[name]

    level: dict[str, int] = {}

    def wave(name: str) -> int:
        if name not in level:
            before = upstream(name) & selected
            level[name] = 1 + max((wave(d) for d in before), default=-1)
        return level[name]

    waves: list[list[str]] = []
    for name in chosen:
        n = wave(name)
        while len(waves) <= n:
            waves.append([])
        waves[n].append(name)
    return [w for w in waves if w]
