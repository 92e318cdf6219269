"""The DICOM node, one package per stage a series passes through, in order:

receive (connections, C-STOREs, the instance store and index) → assemble
(complete series, routed into jobs) → queue (durable jobs) → work (worker
processes run the pipeline) → send (results to their destinations by
C-STORE) → retention (the disk kept below its limits).

Beside the stages: ``service`` (starts and stops them), ``cli``, ``metrics``,
``database``, ``backoff``, ``disk_space`` and ``config_record``.
"""
