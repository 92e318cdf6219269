"""Queue: jobs in from assembly; jobs out to workers, and their results kept.

``jobs`` is the durable queue in SQLite; ``job_metrics`` reports it to
Prometheus.
"""
