"""``python -m vilgkit`` (what ``torchrun -m vilgkit run ...`` launches)."""

import sys

from vilgkit.cli import main

sys.exit(main())
