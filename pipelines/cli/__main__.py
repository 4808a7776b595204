"""``python -m pipelines.cli``: the ``lmforge`` command without the installed script."""

import sys

from . import main

sys.exit(main())
