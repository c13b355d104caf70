import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import IDENTITY, IPL, oblique_direction
from voxseg.geometry import Geometry, Reorientation, orientation_code


def _sitk_image(array: np.ndarray, g: Geometry) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin)
    img.SetDirection(g.direction)
    return img


def _all_axis_directions():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for c in range(3):
                m[perm[c], c] = signs[c]
            yield tuple(m.reshape(-1))


def test_orientation_codes_match_simpleitk():
    for d in _all_axis_directions():
        expected = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(d)
        assert orientation_code(np.asarray(d).reshape(3, 3)) == expected
    assert orientation_code(np.asarray(IPL).reshape(3, 3)) == "IPL"
    assert orientation_code(np.asarray(IDENTITY).reshape(3, 3)) == "LPS"


@pytest.mark.parametrize("direction", list(_all_axis_directions()))
def test_reorientation_matches_simpleitk_dicomorient(direction):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=(3, 4, 5)).astype(np.int16)
    g = Geometry((3, 4, 5), (2.5, 1.5, 0.7), (5.0, -7.0, 11.0), direction)
    r = Reorientation.to_canonical(g)
    ref = sitk.DICOMOrient(_sitk_image(array, g), "LPS")
    np.testing.assert_array_equal(r.apply(array), sitk.GetArrayFromImage(ref))
    cg = r.apply_geometry(g)
    assert cg.shape == tuple(ref.GetSize()[::-1])
    np.testing.assert_allclose(cg.spacing, ref.GetSpacing()[::-1])
    np.testing.assert_allclose(cg.origin, ref.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(cg.direction, IDENTITY, atol=1e-12)
    np.testing.assert_array_equal(r.invert(r.apply(array)), array)


def test_reorientation_keeps_world_positions_for_oblique_direction():
    g = Geometry((4, 5, 6), (3.0, 1.0, 0.5), (1.0, 2.0, 3.0), oblique_direction(25))
    r = Reorientation.to_canonical(g)
    cg = r.apply_geometry(g)
    moved = r.apply(np.arange(np.prod(g.shape)).reshape(g.shape))
    # the voxel that lands at canonical index n came from file voxel moved[n]
    src = np.stack(np.unravel_index(moved.reshape(-1), g.shape))
    canon_idx = np.indices(cg.shape).reshape(3, -1)

    def world(geom, idx):
        itk = np.vstack([idx[::-1], np.ones(idx.shape[1])])
        return (geom.index_to_world() @ itk)[:3]

    np.testing.assert_allclose(world(cg, canon_idx), world(g, src), atol=1e-9)
    # A pure permutation: every file voxel lands exactly once (nothing dropped or repeated).
    np.testing.assert_array_equal(np.sort(moved.ravel()), np.arange(moved.size))


def test_geometry_dict_round_trip():
    g = Geometry((3, 4, 5), (2.5, 1.5, 0.7), (5.0, -7.0, 11.0), IPL)
    assert Geometry.from_dict(g.to_dict()) == g


def test_grid_difference_names_the_field_outside_its_tolerance():
    base = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    # The origin 5e-4 mm off is within its tolerance (1e-3); the direction 2e-4 off is not.
    tilted = (1.0, 2e-4, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    other = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (5e-4, 0.0, 0.0), tilted)
    assert not base.same_grid(other)
    assert base.grid_difference(other).startswith("direction")
    near = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (5e-4, 0.0, 0.0), IDENTITY)
    assert base.same_grid(near) and base.grid_difference(near) is None
    wider = Geometry((4, 5, 7), near.spacing, near.origin, near.direction)
    assert base.grid_difference(wider) == "shape (4, 5, 6) vs (4, 5, 7)"
