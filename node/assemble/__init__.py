"""Assemble: indexed instances in; complete series out, handed over as jobs.

``assembly`` decides when a series is complete, ``routing`` which jobs a
complete series makes, and ``handover`` queues them with the series' move to
dispatched, exactly once.
"""
