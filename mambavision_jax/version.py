"""The package's version (a leaf: the hub cache keys its entries by it)."""

__version__ = "0.1.0"
