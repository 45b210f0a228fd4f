"""``python -m outpostspawner.forwarder``; see :mod:`outpostspawner.forwarder.app`."""

import sys

from .app import main

sys.exit(main())
