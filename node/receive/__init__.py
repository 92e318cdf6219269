"""Receive: a TCP connection in; an acknowledged instance out, on disk and indexed.

The gate and PDU guard (``transport``), the C-STORE SCP (``scp``), who may
send (``peers``), what a data set must be (``validation``,
``dataset_check``), the instance store (``storage``) and the index of
instances and series (``index``) with the series' states (``series_state``).
"""
