"""One seeding function for every process: random, numpy and torch (when loaded)."""

from __future__ import annotations

import random
import sys

import numpy as np


def seed_everything(seed: int) -> int:
    """Seeds random, numpy and (when loaded) torch; returns the seed for the record."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    return seed
