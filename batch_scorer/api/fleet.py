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
    """A Mermaid flowchart: each job, the tables it reads and writes, and its ``after:`` edges."""
    infos = jobs(config, names)
    lines = ["flowchart LR"]
    tables: dict[str, str] = {}

    def node(name: str, kind: str) -> str:
        key = f"{kind}:{name}"
        if key not in tables:
            tables[key] = f"{kind[0]}{len(tables)}"
            label = name.replace('"', "'")
            lines.append(f'  {tables[key]}[("{label}")]' if kind == "table" else f'  {tables[key]}["{label}"]')
        return tables[key]

    for info in infos:
        job = node(info.job, "job")
        src = node(info.source, "table")
        out = node(info.output, "table")
        label = f"|{_escape(info.where)}|" if info.where else ""
        lines.append(f"  {src} -->{label} {job}")
        lines.append(f"  {job} --> {out}")
        for upstream in info.after:
            lines.append(f"  {node(upstream, 'job')} -. after .-> {job}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return re.sub(r'[|"]', "'", text)
