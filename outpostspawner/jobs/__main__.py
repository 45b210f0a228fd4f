"""``python -m outpostspawner.jobs submit|status|cancel``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
