"""Region-based targets: parsing, encoding, nesting, sampling, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import blob_case, geometry_for, write_case
from tests.test_cli import assert_user_error, invoke
from voxseg.config import RunConfig
from voxseg.data.io import read_image, read_info, read_note
from voxseg.errors import ConfigError
from voxseg.losses import build_loss
from voxseg.regions import (
    BINARY_NOTE,
    KITS,
    NON_ZERO,
    Region,
    channels,
    encode,
    file_note,
    label_map,
    label_words,
    nest,
    note_regions,
    parse_label_values,
    parse_regions,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kits", KITS),
        ("1,2;2", (Region("labels 1,2", (1, 2)), Region("label 2", (2,)))),
        ("organ=3,1;lesion=3", (Region("organ", (1, 3)), Region("lesion", (3,)))),
        ("1;2", (Region("label 1", (1,)), Region("label 2", (2,)))),  # disjoint is fine
        ("2 1; 2", (Region("labels 1,2", (1, 2)), Region("label 2", (2,)))),  # as --foreground
    ],
)
def test_regions_parse(text, expected):
    assert parse_regions(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("2;1,2", "largest to the smallest"),  # the outer region comes second
        ("a=1,2;b=1,2", "no label value of its own"),
        ("a;2", "positive label values"),
        ("0,1", "positive label values"),
        ("x=1;x=2", "names must differ"),
        (";".join(str(v) for v in range(1, 11)), "1 to 8 regions"),
    ],
)
def test_bad_regions_are_refused_naming_the_option(text, needle):
    with pytest.raises(ConfigError, match="--regions") as info:
        parse_regions(text)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,2", (1, 2)), ("2 1", (1, 2)), ("2, 2,1", (1, 2)), ("1.5", ()), ("0,1", ()), ("a", ())],
)
def test_foreground_and_regions_read_label_values_alike(text, expected):
    from voxseg.regions import parse_foreground

    assert parse_label_values(text) == expected
    if expected:
        assert parse_foreground(text) == expected
        assert parse_regions(text) == (Region(label_words(expected), expected),)
    else:
        with pytest.raises(ConfigError, match="--foreground"):
            parse_foreground(text)
        with pytest.raises(ConfigError, match="--regions"):
            parse_regions(text)


def test_encode_and_channels_round_trip_every_region():
    label = np.random.default_rng(0).integers(0, 4, (5, 6, 7)).astype(np.uint8)
    regions = (Region("a", (1, 2, 3)), Region("b", (2, 3)), Region("c", (3,)))
    bits = encode(label, regions)
    chans = channels(bits, 3)
    for r, region in enumerate(regions):
        np.testing.assert_array_equal(chans[r] > 0, np.isin(label, region.labels))
    # One region of every non-zero label is the plain binary target.
    np.testing.assert_array_equal(encode(label, (Region("f", None),)), label > 0)


def test_label_map_keeps_the_inner_region_inside_the_outer_one():
    outer = np.zeros((1, 4, 4), bool)
    inner = np.zeros((1, 4, 4), bool)
    outer[0, :2] = True
    inner[0, 1:3] = True  # half of the "tumour" lies outside the "kidney"
    lm = label_map(np.stack([outer, inner]), KITS)
    assert lm[0, 0].tolist() == [1, 1, 1, 1]
    assert lm[0, 1].tolist() == [2, 2, 2, 2]
    assert lm[0, 2:].max() == 0  # tumour outside kidney+tumour is dropped
    # Disjoint regions are not clipped: each keeps its own value.
    disjoint = parse_regions("1;2")
    lm = label_map(np.stack([outer, inner]), disjoint)
    assert lm[0, 2].tolist() == [2, 2, 2, 2]
    assert nest(np.stack([outer, inner]), disjoint)[1].sum() == inner.sum()


def test_file_note_round_trips_and_names_binary_masks():
    assert note_regions(file_note(KITS)) == ((1, 2), (2,))
    assert file_note(NON_ZERO) == BINARY_NOTE and note_regions(BINARY_NOTE) is None


def test_resampled_regions_stay_nested():
    from voxseg.config import PreprocessConfig
    from voxseg.preprocess import preprocess_label, record_for

    image, label = blob_case((16, 20, 24), seed=3)
    g = geometry_for(image.shape)
    cfg = PreprocessConfig(mode="shape", shape=(11, 13, 29), crop_body=False)
    record = record_for(g, None, cfg)
    target = channels(preprocess_label(label, record, KITS), 2)
    assert target[1].sum() > 0 and not (target[1] > target[0]).any()


def test_dice_bce_scores_each_region_with_bce():
    """Two overlapping sigmoid outputs: MONAI's DiceCELoss would switch to softmax CE."""
    loss = build_loss("dice_bce")
    logits = torch.randn(2, 2, 6, 6, 6)
    target = (torch.rand(2, 2, 6, 6, 6) > 0.6).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    torch.testing.assert_close(loss(logits, target), dice + bce)


def test_foreground_sampling_finds_the_small_region():
    """With two regions, half the foreground-centred patches centre on the small one (its
    own share of the voxels is a few %)."""
    from voxseg.train.prepared import PreparedCase, foreground_positions
    from voxseg.train.sampler import SamplerConfig, epoch_batches

    label = np.zeros((24, 24, 24), np.uint8)
    label[4:20, 4:20, 4:20] = 1
    label[10:12, 10:12, 10:12] = 2  # 8 of 4096 voxels
    bits = encode(label, KITS)
    image = np.zeros(label.shape, np.float32)
    case = PreparedCase("c", image, bits, foreground_positions(bits, 2), None)
    cfg = SamplerConfig(4, (4, 4, 4), 1.0, "off", seed=0, steps_per_epoch=50, regions=2)
    batches = list(epoch_batches([case], 0, cfg, 0.0))
    has_tumour = np.concatenate([b.label[:, 1].reshape(4, -1).max(1) for b in batches])
    assert batches[0].label.shape == (4, 2, 4, 4, 4)
    assert 0.3 < has_tumour.mean() < 0.8  # ~0.5; a binary target would give ~0.01


@pytest.mark.parametrize(
    ("regions", "given", "expected"),
    [
        (((1, 2), (2,)), {}, False),  # several regions: per patch
        (((1, 2, 3), (2, 3), (3,)), {}, False),
        (((1, 2), (2,)), {"train.batch_dice": True}, True),  # the user's --batch-dice wins
        (((2,),), {}, True),  # one region is one target: per batch
        (None, {}, True),  # binary
    ],
)
def test_regions_train_with_the_dice_per_patch_unless_told(regions, given, expected):
    from voxseg.train.run import region_dice

    changes: dict = {"preprocess.spacing": (1.0, 1.0, 1.0)}
    if regions:
        names = tuple(f"r{i}" for i in range(len(regions)))
        changes |= {"data.regions": regions, "data.region_names": names}
    config = RunConfig().override(changes)
    config = region_dice(config.override(given), given)
    assert config.train.batch_dice is expected


def test_config_refuses_foreground_with_regions_and_upgrades_keep_largest(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        RunConfig().override(
            {"data.foreground": (1,), "data.regions": ((1, 2),), "data.region_names": ("k",)},
            complete=False,
        )
    with pytest.raises(ConfigError, match="region_names"):
        RunConfig().override({"data.regions": ((1, 2), (2,))}, complete=False)
    d = RunConfig().override({"preprocess.spacing": (1.0, 1.0, 1.0)}).to_dict()
    d["version"], d["infer"]["keep_largest"] = 2, 2
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert RunConfig.load(tmp_path / "config.json").infer.keep_largest == (2,)


# ---- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region_run(tmp_path_factory) -> Path:
    """A tiny U-Net trained with --regions kits and deep supervision on four KiTS-layout cases
    (1 and 2 labels)."""
    root = tmp_path_factory.mktemp("regions")
    for i in range(4):
        image, label = blob_case((20, 32, 36), seed=i)
        write_case(root / "kits" / f"case_{i:05d}", image, label, geometry_for(image.shape))
    args = ["train", "--data", root / "kits", "--out", root / "run", "--regions", "kits"]
    args += ["--model", "unet", "--shape", "32", "32", "32", "--epochs", "2"]
    result = invoke(*args, "--deep-supervision", "--cache", root / "cache")
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.mark.slow
def test_region_model_predicts_a_label_map_on_the_exact_grid(region_run, tmp_path):
    config = RunConfig.load(region_run / "config.json")
    assert config.data.targets() == KITS and config.model.options["out_channels"] == 2
    assert config.model.options["deep_supervision"]  # one head per region at every level
    assert not config.train.batch_dice  # regions: the Dice per patch
    assert len(config.infer.keep_largest) == 2  # chosen per region on validation
    data = region_run.parent / "kits"
    out = tmp_path / "pred"
    result = invoke("predict", "--model", region_run, "-i", data, "-o", out, "--probabilities")
    assert result.exit_code == 0, result.output
    for case in sorted(data.iterdir()):
        pred = out / f"{case.name}.nii.gz"
        source = read_info(case / "imaging.nii.gz").geometry
        assert read_info(pred).geometry == source
        labels, _ = read_image(pred)
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert note_regions(read_note(pred)) == ((1, 2), (2,))
        for name in ("kidney_tumour", "tumour"):
            prob = sitk.ReadImage(str(out / f"{case.name}_prob_{name}.nii.gz"))
            assert prob.GetSize() == source.shape[::-1]
    # Scored per region, with the composite; the JSON says how.
    result = invoke(
        "evaluate", "--pred", out, "--gt", data, "--regions", "kits", "--out", tmp_path / "m.json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert [r["name"] for r in metrics["regions"]] == ["kidney+tumour", "tumour"]
    # The composite against Dice computed here from the files (each region per case, then the
    # mean over cases and regions), not from the JSON's own per-region fields.
    by_region = {"kidney+tumour": [], "tumour": []}
    for case in sorted(data.glob("case_*")):
        pred_labels = read_image(out / f"{case.name}.nii.gz")[0]
        truth = read_image(case / "segmentation.nii.gz")[0]
        for name, low in (("kidney+tumour", 1), ("tumour", 2)):
            p, g = pred_labels >= low, truth >= low
            both = p.sum() + g.sum()
            by_region[name].append(1.0 if both == 0 else 2 * (p & g).sum() / both)
    expected = np.mean([np.mean(v) for v in by_region.values()])
    assert metrics["composite_dice"] == pytest.approx(expected)
    assert "composite_dice" in metrics["definitions"]
    # The same label maps asked for other regions: refused, naming what they hold.
    result = invoke("evaluate", "--pred", out, "--gt", data, "--regions", "1;2")
    assert_user_error(result, "label map of regions '1,2;2'")
    # The report scores what the run learned: per region, one colour each.
    page = tmp_path / "r.html"
    result = invoke("report", region_run, "--pred", out, "--gt", data, "--out", page)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert "Composite Dice" in html and "<h3>tumour: global Dice" in html
    assert "prediction thin (kidney+tumour magenta, tumour orange)" in html


@pytest.mark.slow
def test_binary_predictions_scored_per_region_are_refused(run, tmp_path):
    data = run.parent / "kits"
    out = tmp_path / "pred"
    assert invoke("predict", "--model", run, "-i", data, "-o", out).exit_code == 0
    result = invoke("evaluate", "--pred", out, "--gt", data, "--regions", "kits")
    assert_user_error(result, "binary model", "without --regions")
    # Files voxseg did not write: the values tell (0/1 only cannot hold a tumour label).
    plain = tmp_path / "plain"
    for f in out.iterdir():
        mask, g = read_image(f)
        write_case(plain, mask, None, g, image_name=f.name)
    result = invoke("evaluate", "--pred", plain, "--gt", data, "--regions", "kits")
    assert_user_error(result, "binary masks")


def test_regions_need_the_unet(tmp_path, kits_tiny):
    result = invoke(
        "train",
        "--data",
        kits_tiny,
        "--out",
        tmp_path / "r",
        "--regions",
        "kits",
        "--preset",
        "seed",
    )
    assert_user_error(result, "--regions needs the U-Net")
    result = invoke("train", "--data", kits_tiny, "--out", tmp_path / "r", "--regions", "2;1,2")
    assert_user_error(result, "--regions '2;1,2'", "largest to the smallest")


@pytest.mark.parametrize("choice", [("--preset", "seed"), ("--model", "seed")])
def test_deep_supervision_needs_the_unet(tmp_path, kits_tiny, choice):
    out = tmp_path / "r"
    result = invoke("train", "--data", kits_tiny, "--out", out, "--deep-supervision", *choice)
    assert_user_error(result, "--deep-supervision needs the U-Net")
    assert not out.exists()  # refused before anything was written
