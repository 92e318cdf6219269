"""Synthetic studies with known truth, and the demo that sends one through a node.

``anatomy`` samples a torso phantom's CT and PET with their truth, ``study``
writes them as a scanner's DICOM files, ``demo`` plays scanner and PACS
around a real ``segnode serve``. Used by ``segnode demo``, the tests and the
benchmarks; above ``node``, which only the demo imports.
"""
