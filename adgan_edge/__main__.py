"""`python -m adgan_edge ...` is the `adgan` command, in a wheel install and in the repository."""
import sys

from adgan_edge import main

sys.exit(main())
