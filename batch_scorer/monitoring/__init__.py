"""Monitoring: feature profiles, drift, realized performance and the report."""
