"""The library version (modules import it from here, not from the package root)."""

__version__ = "0.8.0"
