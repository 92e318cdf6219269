"""Segmentation models, pre- and post-processing, and quantification."""
