"""dermagan: class-imbalance experiments on HAM10000 with honest, real-only evaluation."""

import os

__version__ = "0.1.0"

# Figures are only ever written to files: the non-interactive backend, chosen once for every module
# (before matplotlib is first imported; an explicit MPLBACKEND from the user still wins).
os.environ.setdefault("MPLBACKEND", "Agg")
