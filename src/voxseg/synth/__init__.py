"""Synthetic CT-like volumes (Hounsfield units) for the demo, the tests and the benchmarks.

Two sources of anatomy: `random_case` draws a whole abdomen from analytic shapes, `paint_ct`
paints a CT-like image around a real label map (e.g. KiTS19); `write_dataset` writes either as a
KiTS19-layout folder. Kidney tumours in both follow `tumour`'s model of renal cell carcinoma on
late arterial / nephrographic CT: heterogeneous, spatially correlated enhancement mostly below
cortex, irregular necrotic or cystic regions that grow with the tumour, an enhancing rim or
septa in some, and margins that blend into the parenchyma in places.

Modules, each importing only those above it: `tissue` (HU constants), `checks` (grid
validation), `shapes` (analytic shapes on mm grids), `texture` (smooth random fields),
`finish` (blur and noise), `tumour` (the tumour model), `torso` (body, spine, organs, bowel),
`case` (`random_case`), `background` (the body fitted around a label map), `paint`
(`paint_ct`), `dataset` (`write_dataset`).
"""

from voxseg.synth.case import SynthCase, random_case
from voxseg.synth.dataset import write_dataset
from voxseg.synth.paint import paint_ct

__all__ = ["SynthCase", "paint_ct", "random_case", "write_dataset"]
