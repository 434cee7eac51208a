"""hpcproc: real-time auto-processing for synchrotron beamlines."""

__version__ = "0.1.0"
