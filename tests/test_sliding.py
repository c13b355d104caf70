"""`voxseg.sliding`, the window both engines predict through, gives MONAI's numbers: the same
importance map, window positions, padding and normalisation as
`monai.inferers.sliding_window_inference` (mode="gaussian"), for any network callable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from voxseg.sliding import importance_map, predict_volume, window_starts


@pytest.mark.parametrize("window", [(16, 16, 16), (8, 24, 40), (32, 8, 16)])
def test_importance_map_is_monais(window):
    expected = compute_importance_map(window, mode="gaussian", sigma_scale=0.125).numpy()
    np.testing.assert_allclose(importance_map(window), expected, rtol=1e-6, atol=0)


def test_window_starts_are_monais():
    for size, window, overlap in [(16, 16, 0.25), (17, 16, 0.25), (100, 32, 0.5), (40, 8, 0.9)]:
        interval = _get_scan_interval((size,), (window,), 1, (overlap,))
        expected = [s[0].start for s in dense_patch_slices((size,), (window,), interval)]
        assert window_starts(size, window, overlap) == expected


def _net(block: torch.Tensor) -> torch.Tensor:
    """A position-dependent two-channel 'network' (N, 1, D, H, W) -> (N, 2, D, H, W): each
    output voxel depends on its neighbours and on where it sits in the window, so a wrong
    window position, weight or padding changes the result."""
    ramp = torch.linspace(-1, 1, block.shape[-1])
    smooth = torch.nn.functional.avg_pool3d(block, 3, stride=1, padding=1)
    return torch.sigmoid(torch.cat([smooth + ramp, block * ramp - 0.3], dim=1))


def _as_numpy(block: np.ndarray) -> np.ndarray:
    return _net(torch.from_numpy(block)[None, None])[0].numpy()


CASES = {
    "overlap 0.25": ((20, 24, 30), (16, 16, 16), 0.25),
    "overlap 0.5": ((20, 24, 30), (16, 16, 16), 0.5),
    "overlap 0": ((33, 16, 40), (16, 16, 16), 0.0),
    "anisotropic window": ((20, 50, 41), (8, 24, 24), 0.25),
    "volume smaller than the window": ((10, 12, 14), (16, 16, 16), 0.25),
    "smaller along one axis only": ((10, 20, 33), (16, 16, 16), 0.25),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sliding_window_is_monais(case):
    shape, window, overlap = CASES[case]
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    expected = sliding_window_inference(
        torch.from_numpy(x)[None, None], roi_size=window, sw_batch_size=1, predictor=_net,
        overlap=overlap, mode="gaussian", padding_mode="constant", cval=-1.3,
    )[0].numpy()  # fmt: skip
    got = predict_volume(
        _as_numpy, x, divisor=(8, 8, 8), window=window, overlap=overlap, pad_value=-1.3
    )
    assert got.dtype == np.float32 and got.shape == (2, *shape)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_whole_volume_pads_at_the_end_to_the_divisor():
    x = np.random.default_rng(4).standard_normal((13, 18, 22)).astype(np.float32)
    seen = []

    def network(block):
        seen.append(block.shape)
        return _as_numpy(block)

    got = predict_volume(network, x, divisor=(8, 4, 8), window=None, pad_value=-1.3)
    assert seen == [(16, 20, 24)]
    padded = np.pad(x, [(0, 3), (0, 2), (0, 2)], constant_values=-1.3)
    np.testing.assert_array_equal(got, _as_numpy(padded)[:, :13, :18, :22])


@pytest.mark.parametrize("window", [None, (16, 16, 16)])
def test_tta_is_the_mean_over_mirrors(window):
    x = np.random.default_rng(5).standard_normal((20, 24, 18)).astype(np.float32)
    kwargs = {"divisor": (8, 8, 8), "window": window, "pad_value": 0.0}
    plain = [predict_volume(_as_numpy, x, **kwargs)]
    for axis in range(3):
        mirrored = predict_volume(_as_numpy, np.flip(x, axis), **kwargs)
        plain.append(np.flip(mirrored, axis + 1))
    got = predict_volume(_as_numpy, x, tta=True, **kwargs)
    np.testing.assert_allclose(got, np.mean(plain, axis=0), rtol=0, atol=1e-6)
    assert np.abs(got - plain[0]).max() > 1e-3  # the mirrors differ, so the test can tell
