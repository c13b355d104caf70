import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import blob_case, geometry_for, write_case
from voxseg.data import discover
from voxseg.data.discovery import split_cases
from voxseg.errors import ConfigError, InputError


def test_kits19_layout(kits_tiny: Path):
    ds = discover(kits_tiny)
    assert ds.layout == "kits19"
    assert [c.case_id for c in ds.cases] == [f"case_{i:05d}" for i in range(4)]
    assert len(ds.labelled) == 3 and [c.case_id for c in ds.unlabelled] == ["case_00003"]


def test_kits19_under_data_and_symlinked_case_folders(tmp_path: Path):
    image, label = blob_case()
    real = write_case(tmp_path / "elsewhere" / "c", image, label, geometry_for(image.shape))
    (tmp_path / "root" / "data").mkdir(parents=True)
    os.symlink(real, tmp_path / "root" / "data" / "case_00007")
    os.symlink(tmp_path / "root", tmp_path / "root" / "data" / "case_00008")  # a loop, not a case
    ds = discover(tmp_path / "root")
    assert ds.layout == "kits19"
    assert [c.case_id for c in ds.cases] == ["case_00007"]
    assert ds.cases[0].labelled


def test_kits21_layout_with_majority_label(tmp_path: Path):
    image, label = blob_case()
    write_case(
        tmp_path / "dataset" / "case_00000",
        image,
        label,
        geometry_for(image.shape),
        label_name="aggregated_MAJ_seg.nii.gz",
    )
    ds = discover(tmp_path)
    assert ds.layout == "kits21"
    assert ds.cases[0].label.name == "aggregated_MAJ_seg.nii.gz"


@pytest.mark.parametrize("channel_suffix", ["_0000", ""])
def test_msd_nnunet_layout(tmp_path: Path, channel_suffix: str):
    image, label = blob_case()
    g = geometry_for(image.shape)
    write_case(
        tmp_path / "imagesTr", image, None, g, image_name=f"kidney_001{channel_suffix}.nii.gz"
    )
    write_case(tmp_path / "labelsTr", label, None, g, image_name="kidney_001.nii.gz")
    write_case(
        tmp_path / "imagesTs", image, None, g, image_name=f"kidney_101{channel_suffix}.nii.gz"
    )
    ds = discover(tmp_path)
    assert ds.layout == "msd"
    assert [(c.case_id, c.labelled) for c in ds.cases] == [
        ("kidney_001", True),
        ("kidney_101", False),
    ]


def test_plain_folder_and_single_file(tmp_path: Path):
    image, _ = blob_case()
    g = geometry_for(image.shape)
    write_case(tmp_path, image, None, g, image_name="scan_7.nii.gz")
    write_case(tmp_path, image, None, g, image_name="scan 8 é.nrrd")
    ds = discover(tmp_path)
    assert ds.layout == "folder"
    assert [c.case_id for c in ds.cases] == ["scan 8 é", "scan_7"]
    single = discover(tmp_path / "scan_7.nii.gz")
    assert single.layout == "file" and single.cases[0].case_id == "scan_7"


def test_missing_and_empty_folders(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no cases found"):
        discover(tmp_path / "empty")


def test_split_is_deterministic_and_respects_named_cases(kits_tiny: Path):
    cases = discover(kits_tiny).labelled
    a = split_cases(cases, val_fraction=0.34, seed=3)
    assert a == split_cases(cases, val_fraction=0.34, seed=3)
    assert len(a[1]) == 1 and not {c.case_id for c in a[0]} & {c.case_id for c in a[1]}
    train, val = split_cases(cases, val_cases=["case_00001"])
    assert [c.case_id for c in val] == ["case_00001"] and len(train) == 2
    with pytest.raises(ConfigError, match="unknown case"):
        split_cases(cases, val_cases=["case_99999"])
    assert np.isclose(len(cases), 3)


@pytest.mark.parametrize(
    "described",
    [
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "tumour": 2},
         "file_ending": ".nii.gz"},  # nnU-Net v2
        {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "kidney", "2": "tumour"}},
    ],
)  # fmt: skip
def test_dataset_json_names_labels_and_picks_the_file_ending(tmp_path: Path, described):
    import json

    from voxseg.data.io import write_image

    image, label = blob_case()
    g = geometry_for(image.shape)
    root = tmp_path / "ds"
    write_image(root / "imagesTr" / "k_001_0000.nii.gz", image, g)
    write_image(root / "labelsTr" / "k_001.nii.gz", label, g)
    write_image(root / "imagesTr" / "notes.nrrd", image, g)  # not the dataset's file ending
    (root / "dataset.json").write_text(json.dumps(described), encoding="utf-8")
    ds = discover(root)
    assert ds.label_names == {0: "background", 1: "kidney", 2: "tumour"}
    expected = ["k_001"] if "file_ending" in described else ["k_001", "notes"]
    assert [c.case_id for c in ds.cases] == expected


def test_a_multi_channel_dataset_json_is_refused(tmp_path: Path):
    import json

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0}}),
        encoding="utf-8",
    )
    with pytest.raises(InputError, match="2 channels"):
        discover(root)
