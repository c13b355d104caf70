"""Data: image I/O (the only module that touches image files), dataset discovery, cache."""

from voxseg.data.discovery import Case, Dataset, discover

__all__ = ["Case", "Dataset", "discover"]
