"""C{python -m goophry_tx}: the C{goophry} command."""

import sys

from goophry_tx.cli import main

sys.exit(main())
