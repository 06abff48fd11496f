"""The run: plan, stream, publish; many jobs, backfill, signals, progress."""
