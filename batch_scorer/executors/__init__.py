"""Executors: how a run's chunks are scored (threads on this machine; Dask for scale-out)."""
