"""Unit tests for behaviours otherwise only covered by slow end-to-end runs: post-processing
and its choice, the sampler's world-size independence, cache invalidation, deep supervision."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import blob_case, prepared_cases
from voxseg.config import PreprocessConfig
from voxseg.data import discover
from voxseg.losses import build_loss, deep_supervision_loss
from voxseg.postprocess import CANDIDATES, candidate_dice, choose_keep_largest, keep_largest
from voxseg.regions import NON_ZERO, Region
from voxseg.train.prepared import cache_key, load_or_prepare
from voxseg.train.sampler import SamplerConfig, epoch_batches


def _blobs(sizes: list[int]) -> np.ndarray:
    """Cubes of the given sides along one axis, separated by background."""
    mask = np.zeros((8, 8, 64), bool)
    x = 1
    for s in sizes:
        mask[2 : 2 + min(s, 5), 2:5, x : x + s] = True
        x += s + 2
    return mask


def test_keep_largest_keeps_the_n_largest_components():
    mask = _blobs([6, 2, 4])
    kept = keep_largest(mask, 2)
    assert kept[:, :, 1:7].any() and kept[:, :, 13:17].any() and not kept[:, :, 9:11].any()
    assert keep_largest(mask, 0) is mask and keep_largest(mask, 5) is mask
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # 26-connected: one component
    assert keep_largest(diagonal, 1).sum() == 2


def test_candidate_dice_and_the_choice():
    target = _blobs([6, 4])
    pred = target | np.roll(_blobs([2]), 40, axis=2)  # plus one small false blob
    scores = candidate_dice(pred, target)
    assert scores.shape == (len(CANDIDATES),)
    assert scores[CANDIDATES.index(2)] == pytest.approx(1.0) and scores[0] < 1.0
    assert scores[CANDIDATES.index(1)] < 1.0  # the second true component is lost
    choice = choose_keep_largest(dict(zip(CANDIDATES, scores, strict=True)))
    assert choice == 2
    assert choose_keep_largest({0: 0.9, 1: 0.901, 2: 0.9}) == 0  # below MIN_GAIN: keep all
    assert choose_keep_largest({}) == 0


@pytest.mark.parametrize("patch", [(8, 8, 8), None])
@pytest.mark.parametrize("world", [2, 4])
def test_n_processes_draw_exactly_the_batches_of_one(patch, world):
    cases = prepared_cases(3)
    one = SamplerConfig(4, patch, 0.5, "full", seed=3, steps_per_epoch=3)
    whole = list(epoch_batches(cases, 2, one, -1.0))
    shards = [
        list(epoch_batches(cases, 2, replace(one, rank=r, world_size=world), -1.0))
        for r in range(world)
    ]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([s[step].image for s in shards]), batch.image)
        np.testing.assert_array_equal(np.concatenate([s[step].label for s in shards]), batch.label)
    later = list(epoch_batches(cases, 2, one, -1.0, start=1))  # resuming mid-epoch
    np.testing.assert_array_equal(later[0].image, whole[1].image)


def test_cache_is_rebuilt_when_a_setting_or_the_file_changes(kits_tiny: Path, tmp_path: Path):
    case = discover(kits_tiny).labelled[0]
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0))
    cache = tmp_path / "cache"
    first = load_or_prepare(case, cfg, NON_ZERO, cache)
    assert len(list(cache.iterdir())) == 1
    again = load_or_prepare(case, cfg, NON_ZERO, cache)
    np.testing.assert_array_equal(first.image, again.image)
    assert len(list(cache.iterdir())) == 1  # reused
    coarser = replace(cfg, spacing=(4.0, 4.0, 4.0))
    assert cache_key(case, coarser, NON_ZERO) != cache_key(case, cfg, NON_ZERO)
    assert load_or_prepare(case, coarser, NON_ZERO, cache).image.shape != first.image.shape
    # another target
    assert cache_key(case, cfg, (Region("t", (2,)),)) != cache_key(case, cfg, NON_ZERO)
    before = cache_key(case, cfg, NON_ZERO)
    os.utime(case.label, ns=(1, 1))  # the file changed (same size, other mtime)
    assert cache_key(case, cfg, NON_ZERO) != before


def test_deep_supervision_loss_weights_halve_per_level():
    loss = build_loss("bce")
    target = torch.zeros(1, 1, 8, 8, 8)
    target[..., 2:6, 2:6, 2:6] = 1
    outs = [torch.full((1, 1, 8 // 2**k, 8 // 2**k, 8 // 2**k), float(k)) for k in range(3)]
    expected = (
        sum(
            w * loss(o, torch.nn.functional.interpolate(target, size=o.shape[-3:], mode="nearest"))
            for w, o in zip([1, 0.5, 0.25], outs, strict=True)
        )
        / 1.75
    )
    torch.testing.assert_close(deep_supervision_loss(loss, outs, target), expected)
    # One output: exactly the plain loss.
    torch.testing.assert_close(deep_supervision_loss(loss, outs[:1], target), loss(outs[0], target))


def test_full_augmentation_is_seeded_per_sample_and_keeps_labels_binary_and_nested():
    from voxseg.train.augment import augment

    image, label = blob_case((16, 24, 24), seed=1)
    image = image.astype(np.float32) / 100
    inner = np.zeros_like(label)
    inner[6:10, 10:14, 10:14] = 1
    regions = np.stack([label > 0, (label > 0) & (inner > 0)]).astype(np.float32)  # nested
    seeds = (1, 1, 2, 3, 4)
    outs = [augment(image, regions, np.random.default_rng(s), (4.0, 1.0, 1.0)) for s in seeds]
    np.testing.assert_array_equal(outs[0][0], outs[1][0])  # same seed, same sample
    assert any(not np.array_equal(a[0], image) for a in outs)
    for aug_image, aug_label in outs:
        assert aug_image.shape == image.shape and aug_image.dtype == np.float32
        assert aug_label.shape == regions.shape
        assert set(np.unique(aug_label)) <= {0.0, 1.0}
        assert not (aug_label[1] > aug_label[0]).any()  # the inner region stays inside


@pytest.mark.parametrize(("cost", "expected"), [({2: 1.0, 1: 0.6}, 1), ({2: 0.5, 1: 0.9}, 2)])
def test_thread_tuner_keeps_the_faster_thread_count(monkeypatch, cost, expected):
    """A simulated machine whose step time depends on the thread count (a busy core makes
    two threads slower than one)."""
    from voxseg.train import threads

    now = {"threads": 2}
    monkeypatch.setattr(threads.torch, "set_num_threads", lambda n: now.update(threads=n))
    tuner = threads.ThreadTuner(most=2)
    for step in range(100):
        tuner.observe(cost[now["threads"]], step)
    assert tuner.current == expected and now["threads"] == expected
    assert bool(tuner.switches) == (expected == 1)
    tuner.restore()
    assert now["threads"] == 2


def test_sample_dice_weighs_a_missed_small_object_fully():
    """Batch Dice hides a missed small tumour behind a large hit in the same batch; per-sample
    Dice (nnU-Net's 3D default) counts it as half the batch. An empty patch adds ~1 and
    almost no gradient."""
    target = torch.zeros(2, 1, 12, 12, 12)
    target[0, :, 1:11, 1:11, 1:11] = 1  # large object, hit
    target[1, :, 5:7, 5:7, 5:7] = 1  # small object, missed
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[1] = -20.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    batch = build_loss("dice_bce", batch_dice=True)(logits, target) - bce
    sample = build_loss("dice_bce", batch_dice=False)(logits, target) - bce
    assert float(batch) < 0.01
    assert 0.49 < float(sample) < 0.51  # mean of a perfect 0 and a missed 1

    empty = torch.zeros(1, 1, 12, 12, 12)
    x = torch.full((1, 1, 12, 12, 12), -5.0, requires_grad=True)
    dice_only = build_loss("dice_bce", batch_dice=False).dice
    value = dice_only(x, empty)
    value.backward()
    assert float(value) > 0.99 and float(x.grad.abs().max()) < 1e-8
