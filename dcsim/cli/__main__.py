"""``python -m dcsim.cli``: the command line."""

from . import main

raise SystemExit(main())
