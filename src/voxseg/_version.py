"""The package version, importable from any layer (the top package imports it too)."""

__version__ = "0.1.0"
