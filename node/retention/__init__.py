"""Retention: what is on disk in; series removed when their time or the space is up.

``policy`` plans what may go, ``removal`` moves a series through removing to
removed, ``keeper`` is the thread that does both on a schedule.
"""
