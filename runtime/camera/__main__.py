"""``python -m stpm_edge.runtime.camera``: the same as ``stpm-camera``."""

import sys

from .cli import main

sys.exit(main())
