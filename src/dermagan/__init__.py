"""dermagan: class-imbalance experiments on HAM10000 with honest, real-only evaluation."""

__version__ = "0.1.0"
