"""adgan-edge as installed: one top-level name in site-packages.

A wheel installs the project's packages (adgan, agent, training, export, calibration) inside
this folder, not as top-level names of site-packages, where generic names such as `agent` or
`export` could overwrite or shadow other distributions' modules (JetPack's system packages
live beside them). Importing `adgan_edge` (the `adgan` command does) puts that folder at the
front of `sys.path` for this process only, so the code keeps importing `agent`, `training`, ...
In the repository (its own top-level folders, an editable install, the tests) the folder is
the repository's root.
"""
from __future__ import annotations

import os
import sys

HOME = os.path.dirname(os.path.abspath(__file__))
# the folder that holds the packages: this one in a wheel, the repository's root otherwise
ROOT = HOME if os.path.isdir(os.path.join(HOME, "agent")) else os.path.dirname(HOME)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def main(argv: list[str] | None = None) -> int:
    """The `adgan` command."""
    from adgan.cli import main as cli_main
    return cli_main(argv)
