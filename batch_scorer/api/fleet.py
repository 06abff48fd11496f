"""The fleet at a glance: ``jobs`` lists every expanded job, ``jobs --graph`` maps which
job feeds which (Mermaid text). Reads only the configuration: no database needed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batch_scorer.api._common import ConfigLike, as_config, select_jobs
from batch_scorer.config import Config, JobConfig


@dataclass(frozen=True)
class JobInfo:
    """One expanded job as the configuration defines it."""

    job: str
    base: str
    model: str
    source: str
    where: str
    output: str
    schedule: str | None
    after: tuple[str, ...]


def _rel(path: object, cfg: Config) -> str:
    """A path as the config file names it (relative to its folder when inside it)."""
    p = Path(str(path))
    try:
        return str(p.relative_to(cfg.base_dir))
    except ValueError:
        return str(p)


def _model(cfg: Config, job: JobConfig) -> str:
    m = job.model
    if m.registry is not None:
        return f"registry {m.registry} " + (f"v{m.version}" if m.version is not None else f"@{m.alias}")
    return _rel(m.path, cfg)


def _info(cfg: Config, job: JobConfig) -> JobInfo:
    src = job.source
    where = ", ".join(f"{k}={v}" for k, v in {**src.where, **src.params}.items())
    source = src.table if src.table is not None else _rel(src.query, cfg)
    return JobInfo(job.name, job.base, _model(cfg, job), str(source), where, job.output.table, job.schedule,
                   tuple(job.depends_on))


def jobs(config: ConfigLike = None, names: Sequence[str] = ()) -> list[JobInfo]:
    """Every expanded job (or those ``names`` select), in config order."""
    cfg = as_config(config)
    chosen = select_jobs(cfg, names, all_jobs=not names) if cfg.jobs or names else []
    return [_info(cfg, cfg.job(n)) for n in chosen]


def graph(config: ConfigLike = None, names: Sequence[str] = ()) -> str:
    """A Mermaid flowchart: each job, the tables it reads and writes, and its ``after:`` edges.

    A query source is a node of its own (its file, drawn as a parallelogram) with an edge
    from each table the fleet knows (a job's output or its ``_latest``/``_daily`` view, a
    table source) that the query's text names: which job's output feeds which job."""
    cfg = as_config(config)
    infos = jobs(cfg, names)
    lines = ["flowchart LR"]
    tables: dict[str, str] = {}

    def node(name: str, kind: str) -> str:
        key = f"{kind}:{name}"
        if key not in tables:
            tables[key] = f"{kind[0]}{len(tables)}"
            label = name.replace('"', "'")
            shape = {"table": '[("{}")]', "query": '[/"{}"/]'}.get(kind, '["{}"]')
            lines.append(f"  {tables[key]}{shape.format(label)}")
        return tables[key]

    known = _known_tables(cfg)
    for info in infos:
        job = node(info.job, "job")
        query = cfg.job(info.job).source.query
        src = node(info.source, "table" if query is None else "query")
        if query is not None:
            text = _query_text(query)
            for table in sorted(t for t in known if re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", text, re.I)):
                edge = f"  {node(table, 'table')} --> {src}"
                if edge not in lines:
                    lines.append(edge)
        label = f"|{_escape(info.where)}|" if info.where else ""
        lines.append(f"  {src} -->{label} {job}")
        lines.append(f"  {job} --> {node(info.output, 'table')}")
        for upstream in info.after:
            lines.append(f"  {node(upstream, 'job')} -. after .-> {job}")
    return "\n".join(lines) + "\n"


def _known_tables(cfg: Config) -> set[str]:
    """Every table the fleet writes (outputs and their views) or reads by name."""
    out: set[str] = set()
    for name in cfg.jobs:
        job = cfg.job(name)
        table = job.output.table
        out |= {table, f"{table}_latest", f"{table}_daily"}
        if job.source.table is not None:
            out.add(job.source.table)
    return out


def _query_text(query: object) -> str:
    """A query source's SQL: its file's text (the SQL itself when it is not a file)."""
    path = Path(str(query))
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else str(query)
    except OSError:
        return ""


def _escape(text: str) -> str:
    return re.sub(r'[|"]', "'", text)
