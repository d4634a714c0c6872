"""regbench: a reproducible benchmark for single-view X-ray-to-CT rigid registration."""

__version__ = "0.1.0"
