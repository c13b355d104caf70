"""Synthetic CT: determinism, plausible HU and labels, KiTS19 layout on disk, real label maps,
and kidney tumours that look like renal cell carcinoma."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from voxseg.data.io import read_image, write_image
from voxseg.errors import ConfigError, InputError, OutputExistsError
from voxseg.geometry import Geometry, Reorientation
from voxseg.synth import SynthCase, paint_ct, random_case, write_dataset
from voxseg.synth.domain import DOMAINS, domain
from voxseg.synth.tumour import MIN_CONTRAST_HU, Kidney, Look, conspicuous, draw_look

KITS_LABELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kits19-labels"
SMALL = (24, 32, 32)


def _kidney_contrast(image: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Mean HU of kidney voxels and of the soft tissue (not fat, air or bone) around them."""
    ring = ndimage.binary_dilation(label > 0, iterations=3) & (label == 0)
    soft = ring & (image > -50) & (image < 300)
    return float(image[label == 1].mean()), float(image[soft].mean())


def _kits_label(case: str, step: tuple[int, int, int]) -> tuple[np.ndarray, Geometry]:
    """A real KiTS19 label map subsampled in memory, with the geometry that goes with it."""
    path = KITS_LABELS / case / "segmentation.nii.gz"
    if not path.is_file():
        pytest.skip(f"real KiTS19 labels not found at {path}")
    label, geometry = read_image(path)
    small = np.ascontiguousarray(label[:: step[0], :: step[1], :: step[2]])
    spacing = tuple(d * k for d, k in zip(geometry.spacing, step, strict=True))
    return small, Geometry(small.shape, spacing, geometry.origin, geometry.direction)


def test_random_case_is_deterministic_per_seed():
    a, b, c = random_case(3, SMALL), random_case(3, SMALL), random_case(4, SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.geometry == b.geometry
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 24, 24), SMALL])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_case_labels(shape, seed):
    case = random_case(seed, shape)
    assert isinstance(case, SynthCase)
    assert case.label.dtype == np.uint8 and case.label.shape == shape
    assert set(np.unique(case.label)) <= {0, 1, 2}
    kidney = case.label == 1
    half = shape[2] // 2  # canonical axis 2 runs right -> left: one kidney on each side
    assert kidney[..., :half].any() and kidney[..., half:].any()
    assert 0.003 < (case.label > 0).mean() < 0.05
    # Still a few voxels thick in-plane at small grids: seen in its thickest axial slice.
    assert kidney.sum(axis=(1, 2)).max() >= 16


def test_random_case_default_shape():
    case = random_case(0)
    assert case.image.shape == case.label.shape == case.geometry.shape == (64, 64, 64)
    assert case.geometry.spacing == (2.5, 1.6, 1.6)
    assert case.geometry.orientation == "LPS"  # canonical: identity direction
    centre = case.geometry.index_to_world() @ np.array([31.5, 31.5, 31.5, 1.0])
    assert np.allclose(centre[:3], 0)
    assert 0.005 < (case.label > 0).mean() < 0.03
    kidney, soft = _kidney_contrast(case.image, case.label)
    assert kidney > soft + 50


def test_random_case_hounsfield_units():
    case = random_case(1, SMALL)
    image = case.image
    assert image.dtype == np.int16
    assert image.min() >= -1024 and image.max() <= 3071
    corners = image[[0, -1]][:, [0, -1]][:, :, [0, -1]]
    assert abs(float(corners.mean()) + 1000) < 30  # air
    assert (image > 300).any()  # bone
    kidney, soft = _kidney_contrast(image, case.label)
    assert kidney > soft + 50


def test_most_random_cases_have_one_tumour():
    with_tumour = sum((random_case(seed, (16, 16, 16)).label == 2).any() for seed in range(20))
    assert 12 <= with_tumour < 20


def test_random_case_rejects_bad_grid():
    with pytest.raises(ConfigError, match="shape"):
        random_case(0, (4, 64, 64))
    with pytest.raises(ConfigError, match="spacing"):
        random_case(0, SMALL, (0.0, 1.0, 1.0))


def test_paint_ct_keeps_shape_and_is_deterministic():
    label = random_case(5, SMALL).label
    before = label.copy()
    image = paint_ct(label, (2.5, 1.6, 1.6), seed=7)
    assert image.dtype == np.int16 and image.shape == label.shape
    assert np.array_equal(image, paint_ct(label, (2.5, 1.6, 1.6), seed=7))
    assert not np.array_equal(image, paint_ct(label, (2.5, 1.6, 1.6), seed=8))
    assert np.array_equal(label, before)
    kidney, soft = _kidney_contrast(image, label)
    assert kidney > soft + 30


def test_paint_ct_without_foreground():
    image = paint_ct(np.zeros((12, 20, 20), dtype=np.uint8), (3.0, 2.0, 2.0), seed=0)
    assert image.shape == (12, 20, 20) and image.dtype == np.int16
    assert image.min() < -900 and image.max() > 0


def test_paint_ct_on_real_label_follows_its_orientation():
    # case_00023 is stored I,P,L: array axes are (left, posterior, inferior), 107 axial slices.
    label, geometry = _kits_label("case_00023", (8, 8, 2))
    image = paint_ct(label, geometry.spacing, seed=0, direction=geometry.direction_matrix)
    assert image.shape == label.shape and image.dtype == np.int16
    kidney, soft = _kidney_contrast(image, label)
    assert kidney > soft + 30

    reo = Reorientation.to_canonical(geometry)
    img_c, lab_c = reo.apply(image), reo.apply(label)
    _, dp, dl = (geometry.spacing[a] for a in reo.axes)
    kid = np.argwhere(lab_c == 1)
    bone = np.argwhere((img_c > 450) & (lab_c == 0))
    # Spine: on the midline between the kidneys and at their depth, not beside or above them.
    left, right = kid[kid[:, 2] > kid[:, 2].mean()], kid[kid[:, 2] <= kid[:, 2].mean()]
    midline = (left[:, 2].mean() + right[:, 2].mean()) / 2
    assert abs(np.median(bone[:, 2]) - midline) * dl < 20
    assert abs(np.median(bone[:, 1]) - kid[:, 1].mean()) * dp < 40


def _write_labels(root: Path, case: str, label: np.ndarray, geometry: Geometry) -> Path:
    return write_image(root / case / "segmentation.nii.gz", label, geometry)


def test_write_dataset_writes_kits_layout(tmp_path):
    seen = []
    out = tmp_path / "synth"
    folders = write_dataset(out, 2, shape=SMALL, seed=10, on_progress=lambda s: seen.append(s.done))
    assert folders == [out / "case_00000", out / "case_00001"]
    assert seen == [1, 2]
    for i, folder in enumerate(folders):
        image, image_geometry = read_image(folder / "imaging.nii.gz")
        label, label_geometry = read_image(folder / "segmentation.nii.gz")
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert image_geometry.same_grid(label_geometry)
        expected = random_case(10 + i, SMALL)
        assert expected.geometry.same_grid(image_geometry)
        assert np.array_equal(image, expected.image) and np.array_equal(label, expected.label)


def test_write_dataset_refuses_non_empty_output(tmp_path):
    out = tmp_path / "synth"
    out.mkdir()
    write_dataset(out, 1, shape=(16, 16, 16))  # an empty folder is fine
    with pytest.raises(OutputExistsError, match="--overwrite") as caught:
        write_dataset(out, 1, shape=(16, 16, 16), seed=1)
    assert str(out) in str(caught.value) and "\n" not in str(caught.value)
    write_dataset(out, 1, shape=(16, 16, 16), seed=1, overwrite=True)
    assert np.array_equal(
        read_image(out / "case_00000" / "segmentation.nii.gz")[0],
        random_case(1, (16, 16, 16)).label,
    )


def test_write_dataset_paints_real_labels(tmp_path):
    label, geometry = _kits_label("case_00023", (8, 8, 2))
    assert label.dtype == np.uint16  # KiTS19 stores some cases as uint16: must survive
    labels = tmp_path / "labels"
    _write_labels(labels, "case_00023", label, geometry)
    _, source_geometry = read_image(labels / "case_00023" / "segmentation.nii.gz")

    (folder,) = write_dataset(tmp_path / "out", 1, labels_dir=labels)
    out_label, out_geometry = read_image(folder / "segmentation.nii.gz")
    image, image_geometry = read_image(folder / "imaging.nii.gz")
    assert out_label.dtype == label.dtype and out_label.tobytes() == label.tobytes()
    assert out_geometry.same_grid(source_geometry) and out_geometry.shape == label.shape
    assert image.dtype == np.int16 and image_geometry.same_grid(out_geometry)


def test_write_dataset_needs_enough_labels(tmp_path):
    labels = tmp_path / "labels"
    case = random_case(0, (16, 16, 16))
    _write_labels(labels, "case_00000", case.label, case.geometry)
    with pytest.raises(InputError, match="fewer"):
        write_dataset(tmp_path / "out", 2, labels_dir=labels)
    with pytest.raises(InputError, match="no such folder"):
        write_dataset(tmp_path / "out", 1, labels_dir=tmp_path / "missing")


# ---------------------------------------------------------------- tumours

TUMOUR_SEEDS = (0, 1, 2)
RANDOM_TUMOURS = (0, 6, 14, 17)
"""random_case seeds whose tumour is 5 cm across or more (25-40 ml at 128^3): from that size on,
necrosis is certain."""


@dataclass(frozen=True)
class _TumourStats:
    """What a radiologist would look at, measured on the image alone."""

    mean: float
    """HU inside the tumour, one voxel in from its edge (no partial volume)."""
    sd: float
    cortex: float
    """Mean HU of the brighter half of the kidney away from the tumour."""
    noise: float
    """SD of the air outside the body: the noise the scanner added."""
    neighbours: float
    """Correlation of neighbouring tumour voxels along the finest axis (0 for white noise)."""
    necrotic: float
    """Largest connected low-attenuation (< 50 HU) region, as a share of the tumour."""


def _tumour_stats(image: np.ndarray, label: np.ndarray, spacing) -> _TumourStats:
    hu = image.astype(np.float32)
    tumour = label == 2
    inner = ndimage.binary_erosion(tumour)
    far = ndimage.distance_transform_edt(~tumour, sampling=spacing) > 5
    kidney = hu[(label == 1) & far]
    air = hu[hu < -900]  # clipped at -1024 below, so measure the upper half
    axis = int(np.argmin(spacing))
    pair = inner & np.roll(inner, -1, axis)
    smooth = ndimage.gaussian_filter(hu, [1.5 / d for d in spacing])
    low, _ = ndimage.label(inner & (smooth < 50))
    return _TumourStats(
        mean=float(hu[inner].mean()),
        sd=float(hu[inner].std()),
        cortex=float(kidney[kidney > np.median(kidney)].mean()),
        noise=float(np.percentile(air, 84.13) - np.median(air)),
        neighbours=float(np.corrcoef(hu[pair], np.roll(hu, -1, axis)[pair])[0, 1]),
        necrotic=float(np.bincount(low.ravel())[1:].max(initial=0) / tumour.sum()),
    )


def _assert_looks_like_rcc(stats: _TumourStats) -> None:
    assert stats.mean < stats.cortex - 15, stats  # enhances less than cortex
    assert stats.sd > 1.5 * stats.noise, stats  # heterogeneous, not just noise
    assert stats.neighbours > 0.4, stats  # and spatially correlated: texture, not white noise


@pytest.fixture(scope="module")
def kits_large_tumour() -> tuple[np.ndarray, Geometry]:
    """case_00025: a 530 ml tumour (KiTS19's are median ~25 ml), at 2.2 x 2.2 x 2.5 mm."""
    return _kits_label("case_00025", (3, 3, 1))


@pytest.mark.parametrize("seed", TUMOUR_SEEDS)
def test_painted_tumours_look_like_rcc(kits_large_tumour, seed):
    label, geometry = kits_large_tumour
    image = paint_ct(label, geometry.spacing, seed, geometry.direction_matrix)
    stats = _tumour_stats(image, label, geometry.spacing)
    _assert_looks_like_rcc(stats)
    assert stats.necrotic > 0.03, stats  # a large tumour has a necrotic / cystic region


@pytest.mark.parametrize("seed", RANDOM_TUMOURS)
def test_random_tumours_look_like_rcc(seed):
    case = random_case(seed, (128, 128, 128))
    stats = _tumour_stats(case.image, case.label, case.geometry.spacing)
    _assert_looks_like_rcc(stats)
    assert stats.necrotic > 0.03, stats


def test_tumour_looks_differ_between_seeds_and_repeat_within_one(kits_large_tumour):
    label, geometry = kits_large_tumour
    tumour = label == 2
    seeds = (3, 4, 5, 6, 7)  # five: three can land on one level by chance
    paint = [paint_ct(label, geometry.spacing, s, geometry.direction_matrix) for s in seeds]
    assert np.array_equal(paint[0], paint_ct(label, geometry.spacing, 3, geometry.direction_matrix))
    means = [float(image[tumour].mean()) for image in paint]
    assert max(means) - min(means) > 10, means
    for a, b in ((0, 1), (0, 2), (1, 2)):
        same = np.corrcoef(paint[a][tumour], paint[b][tumour])[0, 1]
        assert same < 0.6, (a, b, same)  # texture and necrosis move, not only the level


# ---------------------------------------------------------------- every tumour can be seen

SMALL_TUMOURS = ("case_00033", "case_00039", "case_00049")
"""KiTS19 cases with 7-9 ml tumours that, before `conspicuous`, were painted within 10 HU of the
kidney around them."""


KIDNEY = Kidney(cortex=180.0, medulla=120.0)


def _look(solid: float, rim: float = 0.0) -> Look:
    return replace(draw_look(np.random.default_rng(0), 10.0, KIDNEY), solid=solid, rim=rim)


@pytest.mark.parametrize("solid, surround", [(80.0, 140.0), (175.0, 140.0), (100.0, None)])
def test_a_conspicuous_tumour_is_left_as_drawn(solid, surround):
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    look = _look(solid)
    assert conspicuous(look, surround, KIDNEY, rng) == look
    assert rng.bit_generator.state == before  # no draw: the rest of the case is unchanged


@pytest.mark.parametrize(
    "solid, surround, low, high",
    [
        (130.0, 140.0, 95.0, 110.0),  # just below its surroundings: darker still
        (150.0, 140.0, 95.0, 110.0),  # above, but brighter would near cortex: darker
        (115.0, 100.0, 130.0, 145.0),  # above medulla-like surroundings: brighter, below cortex
        (140.0, 140.0, 95.0, 110.0),  # level with them: darker
    ],
)
def test_a_tumour_a_reader_could_not_see_moves_out_of_the_band(solid, surround, low, high):
    rng = np.random.default_rng(2)
    solids = [conspicuous(_look(solid), surround, KIDNEY, rng).solid for _ in range(200)]
    assert min(solids) >= low and max(solids) <= high, (min(solids), max(solids))
    assert max(solids) - min(solids) > 0.5 * (high - low)  # spread, not piled on the edge
    assert all(abs(x - surround) >= MIN_CONTRAST_HU for x in solids)


def test_a_moved_tumour_keeps_its_rim_below_cortex():
    moved = conspicuous(_look(115.0, rim=40.0), 100.0, KIDNEY, np.random.default_rng(3))
    assert moved.solid > 115 and moved.solid + moved.rim <= KIDNEY.cortex - 5


@pytest.mark.parametrize("case", SMALL_TUMOURS)
def test_small_painted_tumours_stand_out_from_the_kidney_around_them(case):
    """Measured on the image as a reader would: the tumour's inside against the parenchyma
    2-6 mm around it. Partial volume, the scanner's blur and ill-defined margins eat into
    the painted 30 HU, so the bar is 20."""
    label, geometry = _kits_label(case, (1, 3, 3))
    tumour = label == 2
    inner = tumour & (ndimage.distance_transform_edt(tumour, sampling=geometry.spacing) > 2)
    away = ndimage.distance_transform_edt(~tumour, sampling=geometry.spacing)
    ring = (label == 1) & (away > 2) & (away <= 6)
    for seed in range(3):
        image = paint_ct(label, geometry.spacing, seed, geometry.direction_matrix).astype(float)
        contrast = image[inner].mean() - image[ring].mean()
        assert abs(contrast) >= 20, (case, seed, contrast)


@pytest.mark.parametrize("seed", RANDOM_TUMOURS[:2])
def test_random_cases_measure_each_tumours_surroundings(monkeypatch, seed):
    """`random_case` puts its tumours through the same rule, against the kidney it painted."""
    import voxseg.synth.case as case_module

    seen = []

    def spy(look, surround, kidney, rng):
        out = conspicuous(look, surround, kidney, rng)
        seen.append((surround, out.solid, kidney))
        return out

    monkeypatch.setattr(case_module, "conspicuous", spy)
    random_case(seed, (64, 64, 64))
    assert len(seen) == 1, seen
    surround, solid, kidney = seen[0]
    assert kidney.medulla - 20 < surround < kidney.cortex + 20  # HU of the painted kidney
    assert abs(solid - surround) >= MIN_CONTRAST_HU


def test_the_default_domain_paints_what_the_painter_always_painted():
    import hashlib

    label = random_case(5, (24, 48, 48)).label
    image = paint_ct(label, (2.5, 1.6, 1.6), seed=7, domain=DOMAINS["nephrographic"])
    # The bytes painted before domains existed (commit 688dac1): earlier figures stay valid.
    assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == "e9af3e498b57aa5b"


def test_domains_change_the_look_they_name_and_not_the_anatomy():
    label = random_case(5, (48, 96, 96)).label
    spacing = (2.5, 1.6, 1.6)
    painted = {n: paint_ct(label, spacing, seed=7, domain=d) for n, d in DOMAINS.items()}
    depth = ndimage.distance_transform_edt(label == 1, sampling=spacing)

    def cortex_minus_medulla(image):
        return float(image[(depth > 0) & (depth < 3)].mean() - image[depth > 9].mean())

    def grain(image):  # noise: what a 3-voxel smoothing removes in the body (median: not edges)
        smooth = ndimage.uniform_filter(image.astype(np.float32), 3)
        return float(np.median(np.abs(image - smooth)[(image > -300) & (image < 300)]))

    base = painted["nephrographic"]
    assert cortex_minus_medulla(painted["corticomedullary"]) > 1.5 * cortex_minus_medulla(base)
    assert cortex_minus_medulla(painted["lowdose"]) < 0.5 * cortex_minus_medulla(base)
    assert grain(painted["lowdose"]) > 1.3 * grain(base)  # SD 30-45 against 10-20 HU
    assert all(p.shape == label.shape and p.dtype == np.int16 for p in painted.values())
    with pytest.raises(ConfigError, match="unknown imaging domain 'venous'.*nephrographic"):
        domain("venous")
