"""``python -m dcsim`` (and ``torchrun -m dcsim``): the command line of :mod:`dcsim.cli`."""

import sys

from .cli import main

sys.exit(main())
