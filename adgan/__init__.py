"""The `adgan` command line: one entry point over agent, training, export and calibration."""

from agent import __version__  # noqa: F401 (one version, the package's)
