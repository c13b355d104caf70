"""voxseg: 3D CNNs for binary segmentation of volumetric medical images.

The Python API mirrors the command line and imports torch only when first used:
`voxseg.fit`, `voxseg.predict` (`engine="onnx"` needs no torch), `voxseg.evaluate`,
`voxseg.evaluate_regions`, `voxseg.export_onnx`.
"""

from __future__ import annotations

from typing import Any

from voxseg._version import __version__

__all__ = ["evaluate", "evaluate_regions", "export_onnx", "fit", "predict", "__version__"]

_LAZY = {
    "fit": ("voxseg.api", "fit"),
    "predict": ("voxseg.prediction", "predict"),
    "evaluate": ("voxseg.evaluation", "evaluate"),
    "evaluate_regions": ("voxseg.evaluation", "evaluate_regions"),
    "export_onnx": ("voxseg.export", "export_onnx"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'voxseg' has no attribute {name!r}")
