"""``python -m lplr_index``: the command line."""

import sys

from .cli import main

sys.exit(main())
