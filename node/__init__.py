"""The DICOM node: receive, store, assemble series (and, later, queue, work, send)."""
