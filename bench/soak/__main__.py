"""C{python -m bench.soak}: see L{bench.soak.cli}."""

import sys

from bench.soak.cli import main

sys.exit(main())
