"""Make a KiTS-layout set of CT-like cases around real KiTS19 anatomy at a clinical-ish grid.

Label maps from ../shared/data/kits19-labels are resampled (nearest neighbour) to in-plane
~1.6 mm and 3-5 mm slices, keeping their origin, direction and axis order, then a CT-like
image is painted around each with `voxseg.synth.paint_ct`. This is the setting of issue 3's
quality check: train on some cases, predict unseen ones.

    python benchmarks/make_kits_like.py --out /tmp/kits_like --cases 50
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from voxseg.data.io import read_image, write_image
from voxseg.geometry import Geometry
from voxseg.synth import paint_ct
from voxseg.synth.domain import domain as imaging_domain

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kits19-labels"


def resampled(label: np.ndarray, g: Geometry, spacing: tuple[float, float, float]):
    """Nearest-neighbour resample to `spacing` (array order), corner-aligned like ITK."""
    shape = tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(g.shape, g.spacing, spacing, strict=True)
    )
    factors = [n / m for n, m in zip(shape, g.shape, strict=True)]
    out = ndimage.zoom(label, factors, order=0, grid_mode=True, mode="nearest")
    true_spacing = tuple(s * m / n for s, m, n in zip(g.spacing, g.shape, shape, strict=True))
    # voxel 0's centre moves by half the change of voxel size along each index axis
    d = g.direction_matrix
    shift = sum(d[:, 2 - a] * (true_spacing[a] - g.spacing[a]) / 2 for a in range(3))
    origin = tuple(float(o + s) for o, s in zip(g.origin, shift, strict=True))
    return out, Geometry(shape, true_spacing, origin, g.direction)


SLICES_MM = {
    "nephrographic": (3.0, 4.0, 5.0),
    "corticomedullary": (2.0, 2.5, 3.0),
    "lowdose": (5.0,),
}
"""Slice thickness drawn per case in each imaging domain (`voxseg.synth.domain`): thin arterial
scans, thick low-dose ones; the first domain is the setting of every earlier figure."""


def make_case(case: Path, out: Path, seed: int, domain: str = "nephrographic") -> str:
    """One KiTS-like case from a KiTS19 case folder: 1.6 mm in-plane, slices drawn from
    `seed` among the domain's thicknesses, CT painted in `domain` with `seed`; written to
    out/<case name>. Returns a one-line log."""
    rng = np.random.default_rng(seed)
    label, g = read_image(case / "segmentation.nii.gz")
    # KiTS arrays: the slice axis is the one along the patient's superior-inferior direction
    slice_axis = int(np.argmax([abs(g.direction_matrix[2, 2 - a]) for a in range(3)]))
    target = [1.6, 1.6, 1.6]
    target[slice_axis] = max(g.spacing[slice_axis], float(rng.choice(SLICES_MM[domain])))
    small, sg = resampled(label, g, tuple(target))
    look = imaging_domain(domain)
    image = paint_ct(small, sg.spacing, seed=seed, direction=sg.direction_matrix, domain=look)
    folder = out / case.name
    write_image(folder / "imaging.nii.gz", image, sg, overwrite=True)
    write_image(folder / "segmentation.nii.gz", small.astype(np.uint8), sg, overwrite=True)
    return (
        f"{case.name}: {g.shape} @ {tuple(round(s, 2) for s in g.spacing)} -> "
        f"{sg.shape} @ {tuple(round(s, 2) for s in sg.spacing)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=50)
    p.add_argument("--first", type=int, default=0, help="first KiTS case index to use")
    p.add_argument("--domain", default="nephrographic", choices=sorted(SLICES_MM))
    args = p.parse_args()
    cases = sorted(SHARED.glob("case_*"))[args.first : args.first + args.cases]
    for i, case in enumerate(cases):
        print(make_case(case, args.out, seed=args.first + i, domain=args.domain), flush=True)


if __name__ == "__main__":
    main()
