"""voxseg: 3D CNNs for binary segmentation of volumetric medical images."""

__version__ = "0.1.0"
