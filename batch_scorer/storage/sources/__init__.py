"""Readers: a job's source probed, then streamed in chunks (SQL generic, PostgreSQL Arrow)."""
