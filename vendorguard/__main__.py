"""``python -m vendorguard``: the ``vendorguard`` command."""

import sys

from .cli import main

sys.exit(main())
