"""DICOM SEG output: every frame lands on the source instance it was predicted on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from voxseg._version import __version__
from voxseg.data import discover
from voxseg.data.dicom_seg import kits_segments, segment, series_files, write_dicom_seg
from voxseg.data.io import read_image, write_image
from voxseg.errors import InputError, OutputExistsError

SLICES, ROWS, COLS = 12, 32, 32
KIDNEY_HU, TUMOUR_HU = 100, 300  # thresholds that turn a slice's HU into its label map

# (row direction, column direction, step between acquired slices in mm, file name of slice n)
SERIES = {
    # file names in neither slice nor acquisition order
    "axial_names_shuffled": ((1, 0, 0), (0, 1, 0), (0, 0, 2.5), lambda n: f"IM{(n * 5) % 12:04d}"),
    # acquired head to feet: voxseg stacks them feet first, against the files' numbering
    "axial_head_to_feet": ((1, 0, 0), (0, 1, 0), (0, 0, -2.5), lambda n: f"IM{n:04d}.dcm"),
    # flipped orientation: the slice normal points to the feet
    "axial_flipped": ((1, 0, 0), (0, -1, 0), (0, 0, 2.5), lambda n: f"IM{n:04d}.dcm"),
    "sagittal": ((0, 1, 0), (0, 0, -1), (-2.0, 0, 0), lambda n: f"{n:02d}.dcm"),
}


def _slice_hu(n: int) -> np.ndarray:
    """Acquired slice n: air, a corner pixel unique to the slice (to find it again) and, on
    slices 3..8, a 'kidney' whose size and 'tumour' whose place depend on n."""
    hu = np.full((ROWS, COLS), -1000, np.int16)
    hu[0, 0] = -900 + n
    if 3 <= n <= 8:
        hu[4 : 8 + 2 * n, 5:25] = 200
        hu[6:10, 6 + n : 10 + n] = 400
    return hu


def _labels(hu: np.ndarray) -> np.ndarray:
    return np.where(hu >= TUMOUR_HU, 2, np.where(hu >= KIDNEY_HU, 1, 0)).astype(np.uint8)


def _write_series(folder: Path, kind: str, *, frame_of_reference: bool = True) -> Path:
    """A CT Image Storage series as a scanner writes it: int16 stored with a rescale."""
    row, col, step, name = SERIES[kind]
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for n in range(SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        if frame_of_reference:
            ds.FrameOfReferenceUID = frame
        ds.Modality, ds.Manufacturer, ds.ImageType = "CT", "test", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^CT", "p1", "", "O"
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20240102", "101010", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 3, n + 1
        ds.ImagePositionPatient = [
            float(v) for v in np.array([-15.0, 20.0, 30.0]) + n * np.asarray(step)
        ]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], float(np.linalg.norm(step))
        ds.Rows, ds.Columns, ds.SamplesPerPixel = ROWS, COLS, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.PixelData = (_slice_hu(n) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / name(n), enforce_file_format=True)
    return folder


def _instance_hu(path: Path) -> tuple[Dataset, np.ndarray]:
    ds = pydicom.dcmread(path)
    return ds, (ds.pixel_array * ds.RescaleSlope + ds.RescaleIntercept).astype(np.int16)


def _frames(seg: hd.seg.Segmentation) -> dict[tuple[str, int], np.ndarray]:
    """(referenced SOP instance UID, segment number) -> frame, walked by hand, not by
    highdicom's own look-ups."""
    pixels = seg.pixel_array.reshape(-1, ROWS, COLS)
    frames = {}
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        # One segment: highdicom may share its identification across frames.
        shared = seg.SharedFunctionalGroupsSequence[0]
        ident = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(ident[0].ReferencedSegmentNumber)
        key = (source.ReferencedSOPInstanceUID, number)
        assert key not in frames, f"two frames of segment {number} on one instance"
        frames[key] = frame
    return frames


@pytest.mark.parametrize("kind", sorted(SERIES))
@pytest.mark.parametrize("given", ["series_files", "names_reversed"])
def test_frames_reference_the_instance_they_were_predicted_on(
    tmp_path: Path, kind: str, given: str
):
    case = discover(_write_series(tmp_path / "scans" / "ct", kind).parent).cases[0]
    image, geometry = read_image(case.image)
    mask = _labels(image)  # what a model predicting perfectly would write, voxseg's order
    # Frames are paired with instances by position: the order the files come in is irrelevant.
    if given == "series_files":
        files = series_files(case.image)
    else:
        files = sorted(case.image.iterdir(), reverse=True)
    out = write_dicom_seg(mask, files, tmp_path / "seg.dcm", kits_segments(), geometry=geometry)

    seg = hd.seg.segread(out)
    frames = _frames(seg)
    assert frames, "the SEG holds no frames"
    positions = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID: [
            float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient
        ]
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    empty = np.zeros((ROWS, COLS), np.uint8)
    for path in sorted(case.image.iterdir()):
        source, hu = _instance_hu(path)
        # The slice voxseg put at k holds this instance's pixels (its corner pixel is unique).
        (k,) = [k for k in range(SLICES) if np.array_equal(image[k], hu)]
        for number, values in ((1, (1, 2)), (2, (2,))):
            got = frames.get((source.SOPInstanceUID, number), empty)  # empty frames omitted
            np.testing.assert_array_equal(got, np.isin(mask[k], values), err_msg=path.name)
            # ... and equals the label map worked out from the instance's own pixels.
            np.testing.assert_array_equal(got, np.isin(_labels(hu), values), err_msg=path.name)
        if source.SOPInstanceUID in positions:
            np.testing.assert_allclose(
                positions[source.SOPInstanceUID], source.ImagePositionPatient
            )


def test_segments_equipment_and_references(tmp_path: Path):
    folder = _write_series(tmp_path / "ct", "axial_names_shuffled")
    image, geometry = read_image(folder)
    files = series_files(folder)
    segments = (*kits_segments(), segment("Left renal pelvis", (1,)))
    out = write_dicom_seg(
        _labels(image), files, tmp_path / "out" / "seg.dcm", segments, geometry=geometry
    )
    seg = hd.seg.segread(out)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)

    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    labels = [d.SegmentLabel for d in seg.SegmentSequence]
    assert labels == ["kidney+tumour", "tumour", "Left renal pelvis"]
    kidney, tumour, other = seg.SegmentSequence
    assert kidney.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Kidney.value
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value
    assert other.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Tissue.value
    assert {d.SegmentAlgorithmType for d in seg.SegmentSequence} == {"AUTOMATIC"}
    assert seg.SegmentsOverlap == "YES"

    assert seg.Manufacturer == "voxseg" and seg.SoftwareVersions == __version__
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence}
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert referenced == uids
    assert not list(out.parent.glob(".*part*")), "temporary file left behind"


def test_refuses_to_overwrite_unless_asked(tmp_path: Path):
    folder = _write_series(tmp_path / "ct", "axial_flipped")
    image, geometry = read_image(folder)
    out = tmp_path / "seg.dcm"
    out.write_bytes(b"keep")
    args = (_labels(image), series_files(folder), out, kits_segments())
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_dicom_seg(*args, geometry=geometry)
    assert out.read_bytes() == b"keep"
    write_dicom_seg(*args, geometry=geometry, overwrite=True)
    assert hd.seg.segread(out).SegmentationType == "BINARY"


def _message(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_mask_of_another_shape_is_refused(tmp_path: Path):
    folder = _write_series(tmp_path / "ct", "sagittal")
    image, geometry = read_image(folder)
    with pytest.raises(InputError) as exc:
        write_dicom_seg(
            _labels(image)[:-1],
            series_files(folder),
            tmp_path / "seg.dcm",
            kits_segments(),
            geometry=geometry,
        )
    assert str(folder) in _message(exc) and "shape" in _message(exc)
    assert not (tmp_path / "seg.dcm").exists()


def _write_kits(folder: Path, image: np.ndarray, out: Path, geometry) -> Path:
    """The series' KiTS label map as a SEG, on `geometry`."""
    return write_dicom_seg(
        _labels(image), series_files(folder), out, kits_segments(), geometry=geometry
    )


def test_a_grid_that_is_not_the_series_is_refused(tmp_path: Path):
    """A mask one slice off (or of another scan with the same shape) never gets written."""
    folder = _write_series(tmp_path / "ct", "axial_head_to_feet")
    image, geometry = read_image(folder)
    shifted = replace(geometry, origin=tuple(np.add(geometry.origin, (0.0, 0.0, 2.5))))
    flipped = replace(geometry, direction=(1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0))
    for wrong in (shifted, flipped):
        with pytest.raises(InputError) as exc:
            _write_kits(folder, image, tmp_path / "seg.dcm", wrong)
        assert "predicted on this series" in _message(exc)


def test_a_series_highdicom_refuses_is_an_input_error(tmp_path: Path):
    folder = _write_series(tmp_path / "ct", "axial_flipped", frame_of_reference=False)
    image, geometry = read_image(folder)
    with pytest.raises(InputError) as exc:
        _write_kits(folder, image, tmp_path / "seg.dcm", geometry)
    assert str(folder) in _message(exc) and "NIfTI" in _message(exc)


def test_never_written_into_the_source_series(tmp_path: Path):
    folder = _write_series(tmp_path / "ct", "sagittal")
    image, geometry = read_image(folder)
    with pytest.raises(InputError, match="another folder"):
        write_dicom_seg(
            _labels(image),
            series_files(folder),
            folder / "seg.dcm",
            kits_segments(),
            geometry=geometry,
        )


def test_predict_writes_a_seg_per_series_aligned_with_the_nifti_mask(tmp_path: Path):
    """`voxseg predict --output-format dicom-seg` on a folder of two series: each SEG frame
    equals the NIfTI mask predicted on the slice of the instance it references."""
    from tests.test_cli import invoke
    from tests.test_prediction import _run_dir

    run = _run_dir(tmp_path, "spacing")
    root = tmp_path / "series"
    for kind in ("axial_head_to_feet", "sagittal"):
        _write_series(root / kind, kind)
    seg_out, nii_out = tmp_path / "seg", tmp_path / "nii"
    result = invoke(
        "predict", "--model", run, "-i", root, "-o", seg_out, "--output-format", "dicom-seg"
    )
    assert result.exit_code == 0, result.output
    assert invoke("predict", "--model", run, "-i", root, "-o", nii_out).exit_code == 0
    for kind in ("axial_head_to_feet", "sagittal"):
        mask, _ = read_image(nii_out / f"{kind}.nii.gz")
        hu, _ = read_image(root / kind)
        assert mask.any(), "the test model should find the bright 'kidney'"
        seg = hd.seg.segread(seg_out / f"{kind}.dcm")
        frames = _frames(seg)
        for f in series_files(root / kind):
            ds, pixels = _instance_hu(f)
            k = int(np.flatnonzero(hu[:, 0, 0] == pixels[0, 0])[0])  # the slice it lies on
            got = frames.get((ds.SOPInstanceUID, 1), np.zeros((ROWS, COLS)))
            np.testing.assert_array_equal(got > 0, mask[k] > 0, err_msg=f"{kind} {f.name}")
    # A scan that is not a DICOM series cannot get a SEG.
    scan = tmp_path / "scan.nii.gz"
    write_image(scan, hu, read_image(root / "sagittal")[1])
    result = invoke(
        "predict", "--model", run, "-i", scan, "-o", tmp_path / "x", "--output-format", "dicom-seg"
    )
    assert result.exit_code == 2 and "needs DICOM series" in result.output
