"""Scheduling: the daemon that fires each job on its cron."""
