"""Packaging: the project's top-level folders are installed inside one package, `adgan_edge`
(see adgan_edge/__init__.py); everything else is in pyproject.toml."""
from setuptools import find_packages, setup

FOLDERS = ("adgan", "agent", "training", "export", "calibration")

PACKAGES = find_packages(include=[name for f in FOLDERS for name in (f, f"{f}.*")])

setup(
    packages=["adgan_edge"] + [f"adgan_edge.{p}" for p in PACKAGES],
    package_dir={"adgan_edge": "adgan_edge", **{f"adgan_edge.{f}": f for f in FOLDERS}},
    package_data={"adgan_edge.agent": ["*.json", "**/*.json", "**/*.html"]},
)
