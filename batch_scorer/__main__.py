"""``python -m batch_scorer`` is the ``batch-scorer`` command."""

from batch_scorer.cli.main import main

main()
