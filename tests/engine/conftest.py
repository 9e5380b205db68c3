"""Puts ``support/`` (toy data, Trainables and the TrainToy stage) on ``sys.path`` for the engine tests."""

import sys
from pathlib import Path

SUPPORT = Path(__file__).parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))
