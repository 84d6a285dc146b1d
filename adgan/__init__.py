"""The `adgan` command line: one entry point over agent, training, export and calibration."""

__version__ = "0.1.0"
