"""``python -m stpm_edge.runtime.doctor``: the same as ``stpm-doctor``."""

import sys

from .cli import main

sys.exit(main())
