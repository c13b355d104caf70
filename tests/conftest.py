"""Shared fixtures: tiny NIfTI cases with non-trivial spacing and direction, written for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxseg.data.io import write_image
from voxseg.geometry import Geometry

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KITS_LABELS = SHARED_DATA / "kits19-labels"

# KiTS19 headers (code IPL): ITK index axes i, j, k run towards inferior, posterior, left.
IPL = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def oblique_direction(degrees: float = 20.0) -> tuple[float, ...]:
    """A rotation about the S axis composed with a flip: non-identity, non-axis-aligned."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0, 1.0])
    return tuple(float(v) for v in (rot @ flip).reshape(-1))


def kits_dir(root: Path) -> Path:
    if not KITS_LABELS.is_dir():
        pytest.skip(f"real KiTS19 labels not found at {KITS_LABELS} (shared data absent)")
    return KITS_LABELS


def blob_case(shape=(16, 20, 24), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-ish int16 image with a bright ellipsoid labelled 1 (and a small 2 inside it)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = (yy / 0.9) ** 2 + (xx / 0.9) ** 2 < 1
    organ = (zz / 0.6) ** 2 + ((yy - 0.1) / 0.4) ** 2 + ((xx + 0.2) / 0.35) ** 2 < 1
    image = np.where(body, 40, -1000).astype(np.float32)
    image[organ] = 180
    image += rng.normal(0, 10, shape).astype(np.float32)
    label = organ.astype(np.uint8)
    label[organ & (xx < -0.3)] = 2
    return image.astype(np.int16), label


def write_case(
    folder: Path,
    image: np.ndarray,
    label: np.ndarray | None,
    geometry: Geometry,
    image_name: str = "imaging.nii.gz",
    label_name: str = "segmentation.nii.gz",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / image_name, image, geometry)
    if label is not None:
        write_image(folder / label_name, label, geometry)
    return folder


def geometry_for(
    shape, spacing=(2.5, 1.2, 0.8), direction=IPL, origin=(10.0, -20.0, 30.0)
) -> Geometry:
    return Geometry(shape=tuple(shape), spacing=tuple(spacing), origin=origin, direction=direction)


def blocking(package: str) -> str:
    """Python source that makes importing `package` (or any submodule) fail, to prepend to a
    `python -c` script: a path that must not need it shows it does not."""
    return f"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({package + "."!r}):
            raise ImportError(f"{package} is blocked in this test ({{name}})")

sys.meta_path.insert(0, Block())
"""


@pytest.fixture
def kits_tiny(tmp_path: Path) -> Path:
    """Three labelled KiTS19-layout cases (I,P,L direction, anisotropic) and one unlabelled."""
    root = tmp_path / "kits"
    for i in range(4):
        image, label = blob_case(seed=i)
        write_case(
            root / f"case_{i:05d}", image, label if i < 3 else None, geometry_for(image.shape)
        )
    return root


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    """A tiny trained seed run (16^3, one epoch) on three KiTS-layout cases, shared by the
    tests that only read it; the cases are in run.parent / "kits"."""
    from typer.testing import CliRunner

    from voxseg.cli import app

    root = tmp_path_factory.mktemp("trained")
    data = root / "kits"
    for i in range(3):
        image, label = blob_case(seed=i)
        write_case(data / f"case_{i:05d}", image, label, geometry_for(image.shape))
    out = root / "run"
    args = ["train", "--data", data, "--out", out, "--model", "seed", "--shape", "16", "16", "16"]
    args += ["--epochs", "1", "--cache", root / "cache"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out


def prepared_cases(n: int, shape=(16, 16, 16)):
    """`n` blob cases as training sees them (normalised, canonical, identity geometry)."""
    from voxseg.geometry import Reorientation
    from voxseg.preprocess import PreprocessRecord, normalise
    from voxseg.train.prepared import PreparedCase, foreground_positions

    g = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    rec = PreprocessRecord(g, Reorientation.to_canonical(g), tuple((0, s) for s in shape), shape)
    out = []
    for i in range(n):
        image, label = blob_case(shape, seed=i)
        target = (label > 0).astype(np.uint8)
        image = normalise(image, (-100, 300), 100, 100)
        out.append(PreparedCase(f"c{i}", image, target, foreground_positions(target), rec))
    return out
