"""Queue: jobs in from assembly; jobs out to workers, and their results kept.

``jobs`` is the durable queue in SQLite, whose every state change goes
through ``job_state``'s one transition table; ``results`` are the typed
results of finished jobs (serialised to the database only here);
``job_metrics`` reports the queue to Prometheus.
"""
