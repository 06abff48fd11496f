"""``python -m batch_scorer.cli`` is the ``batch-scorer`` command."""

from batch_scorer.cli.main import main

main()
