"""Hounsfield units of the painted tissues and the scanner constants that shape every image."""

# Portal-venous-like contrast for the body; kidneys and tumours as in KiTS19's late arterial /
# nephrographic phase (cortex brighter than medulla).
AIR = -1000.0
FAT = -100.0
SOFT = 40.0
VISCERAL_FAT = -80.0
MUSCLE = 55.0
LIVER = 60.0
SPLEEN = 105.0
BONE_RIM = 700.0
MARROW = 400.0
DISC = 90.0
CSF = 15.0
RIB = 600.0
AORTA = 200.0
IVC = 155.0
CORTEX = 180.0
MEDULLA = 120.0
SINUS = -60.0
GAS = -950.0
FLUID = 15.0
CONTRAST = 250.0
STOOL = -250.0
HU_RANGE = (-1024, 3071)

BLUR_MM = 0.9
"""Gaussian sigma in mm: the scanner's point spread, so edges are not voxel-sharp."""
VERTEBRA_MM = 35.0
"""Period of vertebra + disc along the superior axis."""
DISC_MM = 8.0
