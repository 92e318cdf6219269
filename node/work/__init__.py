"""Work: a claimed job in; its results (SEG, SR, CSV, label map) out, queued to send.

``worker_pool`` supervises the worker processes, ``worker`` claims and runs
jobs, ``pipeline`` segments, measures and writes one series, ``comparison``
scores a segmentation against a reference SEG.
"""
