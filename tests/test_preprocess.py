import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import IDENTITY, IPL, blob_case, geometry_for, oblique_direction
from voxseg.config import PreprocessConfig
from voxseg.preprocess import (
    normalise,
    preprocess_image,
    preprocess_label,
    resize,
    restore,
    target_shape,
)
from voxseg.regions import NON_ZERO, Region


def test_normalise_clips_then_standardises():
    out = normalise(np.array([-1000, 0, 100, 5000], np.int16), (-100, 300), 100.0, 50.0)
    np.testing.assert_allclose(out, [-4.0, -2.0, 0.0, 4.0])
    assert out.dtype == np.float32


@pytest.mark.parametrize("shape", [(7, 9, 11), (20, 5, 6), (3, 30, 31)])
def test_separable_resize_equals_torch_trilinear(shape):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 12, 14)).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(a)[None, None], size=shape, mode="trilinear", align_corners=False
    )
    np.testing.assert_allclose(resize(a, shape, chunk=3), ref[0, 0].numpy(), atol=1e-5)


def test_target_shape():
    assert target_shape((100, 512, 512), (2.5, 0.8, 0.8), (5.0, 1.6, 1.6)) == (50, 256, 256)


def test_binary_target_foreground_selection():
    label = np.array([0, 1, 2, 2], np.uint16)
    np.testing.assert_array_equal(Region("", None).mask(label), [0, 1, 1, 1])
    np.testing.assert_array_equal(Region("", (2,)).mask(label), [0, 0, 1, 1])


@pytest.mark.parametrize("direction", [IPL, IDENTITY, oblique_direction(15)])
@pytest.mark.parametrize("mode", ["shape", "spacing"])
def test_restore_puts_label_back_on_source_grid(direction, mode):
    image, label = blob_case(shape=(16, 20, 24))
    g = geometry_for(image.shape, direction=direction)
    cfg = PreprocessConfig(mode=mode, shape=(16, 16, 16), spacing=(2.0, 2.0, 2.0), crop_body=True)
    net_input, record = preprocess_image(image, g, cfg)
    assert net_input.shape == record.shape and net_input.dtype == np.float32
    target = preprocess_label(label, record, NON_ZERO)
    back = restore(target.astype(np.float32), record)
    assert back.shape == label.shape and back.dtype == np.uint8
    fg = label > 0
    dice = 2 * np.logical_and(back > 0, fg).sum() / (back.sum() + fg.sum())
    assert dice > 0.85, dice


def test_identity_preprocessing_restores_exactly():
    image, label = blob_case(shape=(8, 8, 8))
    g = geometry_for(image.shape, spacing=(1.0, 1.0, 1.0), direction=IPL)
    cfg = PreprocessConfig(mode="spacing", spacing=(1.0, 1.0, 1.0), crop_body=False)
    _, record = preprocess_image(image, g, cfg)
    target = preprocess_label(label, record, NON_ZERO)
    np.testing.assert_array_equal(restore(target.astype(np.float32), record), label > 0)


def test_record_round_trips_through_dict():
    image, _ = blob_case()
    _, record = preprocess_image(
        image, geometry_for(image.shape), PreprocessConfig(spacing=(2.0, 2.0, 2.0))
    )
    assert type(record).from_dict(record.to_dict()) == record
