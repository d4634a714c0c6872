"""Optimisers over rigid poses (increments follow :mod:`regbench.geometry.poses`)."""
