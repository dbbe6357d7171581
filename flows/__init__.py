"""Prefect 3 flows. They only orchestrate: ids and ranges in, counts out; the work is in ``loyalty``."""
