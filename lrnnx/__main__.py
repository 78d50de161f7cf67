"""``python -m lrnnx``: the lrnnx command line (see :mod:`lrnnx.cli`)."""

import sys

from .cli import main

sys.exit(main())
