"""Work: a claimed job in; its results (SEG, SR, CSV, label map) out, queued to send.

``supervisor`` keeps child processes running (the embedded ``worker_pool``
and a ``segnode worker`` host's ``celery_worker`` processes), ``worker``
claims and runs jobs, ``dispatch`` sends them to Celery workers instead,
``pipeline`` segments, measures and writes one series, ``comparison``
scores a segmentation against a reference SEG.
"""
