"""Configuration: ``config.yaml`` into one validated, frozen :class:`Config`."""

from __future__ import annotations

from batch_scorer.config.load import (
    CONFIG_ENV_VAR,
    Config,
    DatabaseConfig,
    Defaults,
    ExecutorConfig,
    JobConfig,
    LabelsConfig,
    ModelConfig,
    MonitorConfig,
    OutputConfig,
    RetentionConfig,
    RuntimeConfig,
    SchedulerConfig,
    SourceConfig,
    config_from_dict,
    default_config_path,
    load_config,
    resolve_sqlite_url,
)

__all__ = [
    "CONFIG_ENV_VAR", "Config", "DatabaseConfig", "Defaults", "ExecutorConfig", "JobConfig",
    "LabelsConfig", "ModelConfig", "MonitorConfig", "OutputConfig", "RetentionConfig",
    "RuntimeConfig", "SchedulerConfig", "SourceConfig", "config_from_dict", "default_config_path",
    "load_config", "resolve_sqlite_url",
]
