"""The ``batch-scorer`` command line (a thin layer over :mod:`batch_scorer.api`)."""
