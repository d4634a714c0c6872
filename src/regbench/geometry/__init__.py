"""Pose conventions, shared by every stage (see :mod:`regbench.geometry.poses`)."""
