import sys

from adgan.cli import main

sys.exit(main())
