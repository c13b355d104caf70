"""voxseg: 3D CNNs for binary segmentation of volumetric medical images.

The Python API mirrors the command line and imports torch only when first used:
`voxseg.fit`, `voxseg.predict`, `voxseg.evaluate`.
"""

from __future__ import annotations

from typing import Any

from voxseg._version import __version__

__all__ = ["evaluate", "fit", "predict", "__version__"]

_LAZY = {
    "fit": ("voxseg.api", "fit"),
    "predict": ("voxseg.prediction", "predict"),
    "evaluate": ("voxseg.evaluation", "evaluate"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'voxseg' has no attribute {name!r}")
