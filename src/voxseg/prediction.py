"""`voxseg predict`: a trained run folder + scans -> masks on each scan's exact grid.

The model's own preprocessing is replayed from its config.json; the mask is restored through
the recorded crop/resample/reorientation and written with the source geometry, so it has
the input's shape, spacing, origin, direction and array axis order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxseg.atomic import remove_stale_parts
from voxseg.config import InferConfig, RunConfig
from voxseg.data.discovery import Case, discover
from voxseg.data.guards import check_memory
from voxseg.data.io import (
    IMAGE_SUFFIXES,
    check_output,
    image_stem,
    read_image,
    read_info,
    write_image,
    write_mask,
)
from voxseg.errors import InputError
from voxseg.geometry import Geometry
from voxseg.inference import predict_probabilities
from voxseg.postprocess import keep_largest
from voxseg.preprocess import preprocess_image, restore, restore_probabilities
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.regions import BINARY_NOTE, file_note, label_map
from voxseg.run_folder import RunFolder
from voxseg.runtime import autocast_dtype, resolve_device


@dataclass(frozen=True)
class Predictor:
    model: nn.Module
    config: RunConfig
    device: torch.device
    amp: torch.dtype | None


@dataclass(frozen=True)
class Prediction:
    case_id: str
    mask: np.ndarray | None
    """uint8 in the source file's array layout: {0, 1} from a binary model, a label map from
    a region model (KiTS: 1 kidney, 2 tumour); None when the case was skipped."""
    geometry: Geometry
    """The source file's geometry (write the mask with it)."""
    probabilities: np.ndarray | None = None
    """float32, (D, H, W) from a binary model, (R, D, H, W) from a region model."""
    path: Path | None = None
    skipped: bool = False
    """The output already existed on the input's grid and was kept (a rerun)."""


def load_predictor(
    run_dir: str | Path, device: str = "auto", precision: str | None = None
) -> Predictor:
    """Rebuild the model from the run's config.json and load its best weights (no pickle)."""
    from voxseg.models import build_model

    run = RunFolder(Path(run_dir))
    config = run.load_config()
    model = build_model(config.model.name, **config.model.options)
    run.load_best_weights(model)
    dev = resolve_device(device)
    model.to(dev).eval()
    return Predictor(model, config, dev, autocast_dtype(precision or config.train.precision, dev))


def infer_settings(
    config: RunConfig,
    *,
    tta: bool = False,
    overlap: float | None = None,
    keep_largest: int | tuple[int, ...] | None = None,
) -> InferConfig:
    """The run's inference settings with the user's choices, checked like any setting.
    One `keep_largest` applies to every output."""
    if isinstance(keep_largest, int):
        keep_largest = (keep_largest,)
    given = {"infer.tta": tta, "infer.overlap": overlap, "infer.keep_largest": keep_largest}
    return config.override({k: v for k, v in given.items() if v is not None}).infer


def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    geometry: Geometry,
    infer: InferConfig | None = None,
    *,
    with_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask or label map (and optionally probabilities) on `geometry` for one scan in HU."""
    cfg = predictor.config
    infer = infer or cfg.infer
    regions = cfg.data.targets()
    net_input, record = preprocess_image(image, geometry, cfg.preprocess)
    prob = predict_probabilities(  # a volume smaller than the window is padded by it
        predictor.model,
        net_input,
        window=infer.window,
        overlap=infer.overlap,
        tta=infer.tta,
        device=predictor.device,
        amp=predictor.amp,
        pad_value=cfg.preprocess.pad_value,
    )
    del net_input
    keep = infer.keep_largest * len(regions) if len(infer.keep_largest) == 1 else infer.keep_largest
    if len(keep) != len(prob):
        raise InputError(
            f"keep_largest {infer.keep_largest} does not match the model's {len(prob)} outputs; "
            "give one value or one per region"
        )
    masks = []
    for channel, n in zip(prob, keep, strict=True):
        if n:
            channel[...] = np.where(keep_largest(channel >= infer.threshold, n), channel, 0.0)
        masks.append(restore(channel, record, infer.threshold))
    mask = label_map(np.stack(masks), regions) if cfg.data.regions else masks[0]
    probs = None
    if with_probabilities:
        probs = np.stack([restore_probabilities(channel, record) for channel in prob])
        probs = probs if cfg.data.regions else probs[0]
    return mask, probs


def output_paths(input_path: Path, output: Path, cases: list[Case], single: bool) -> list[Path]:
    if single:
        if output.is_dir() or not output.name.lower().endswith(IMAGE_SUFFIXES):
            return [output / f"{cases[0].case_id}.nii.gz"]
        return [output]
    if output.exists() and not output.is_dir():
        raise InputError(
            f"{output}: is a file, but {input_path} holds several scans; give a folder"
        )
    return [output / f"{c.case_id}.nii.gz" for c in cases]


def probability_path(mask_path: Path, region: str | None = None) -> Path:
    """Where probabilities go beside a mask: `m.nii.gz` -> `m_prob.nii.gz`, `m.nrrd` ->
    `m_prob.nrrd` (never the mask's own name); a region's: `m_prob_kidney_tumour.nii.gz`."""
    stem = image_stem(mask_path)
    tag = "_prob" if region is None else "_prob_" + re.sub(r"[^A-Za-z0-9]+", "_", region).strip("_")
    return mask_path.with_name(f"{stem}{tag}{mask_path.name[len(stem) :] or '.nii.gz'}")


def probability_paths(mask_path: Path, config: RunConfig) -> list[Path]:
    """One probability file per model output."""
    if not config.data.regions:
        return [probability_path(mask_path)]
    return [probability_path(mask_path, r.name) for r in config.data.targets()]


def _refuse_writing_over_inputs(cases: list[Case], outputs: list[Path]) -> None:
    """Inputs are never replaced, --overwrite or not (an output folder may be the input one)."""
    inputs = {p.resolve() for c in cases for p in (c.image, c.label) if p is not None}
    for out in outputs:
        target = out.resolve()
        hit = target if target in inputs else next((d for d in target.parents if d in inputs), None)
        if hit is not None:
            raise InputError(
                f"{out}: would replace the input {hit}; give an --output outside the inputs"
            )


def _is_complete(path: Path, geometry: Geometry) -> bool:
    """An existing output that reads back on the right grid counts as done."""
    try:
        info = read_info(path)
    except InputError:
        return False
    return info.geometry.same_grid(geometry)


def iter_predictions(
    predictor: Predictor,
    input_path: Path,
    output: Path | None = None,
    *,
    infer: InferConfig | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
    on_progress: ProgressFn = ignore,
) -> Iterator[Prediction]:
    """Predict every scan under `input_path` (this shard's share); write to `output` if given.

    In a folder, outputs that already exist and read back on the input's grid are skipped
    (a rerun after a crash finishes the rest) and yielded with `skipped`; `overwrite` redoes
    them.
    """
    config = predictor.config
    targets = config.data.targets()
    dataset = discover(input_path)
    cases = list(dataset.cases)
    single = dataset.layout == "file"
    paths = (
        output_paths(input_path, output, cases, single)
        if output is not None
        else [None] * len(cases)
    )
    if output is not None:
        extra = [q for p in paths for q in probability_paths(p, config)] if probabilities else []
        _refuse_writing_over_inputs(cases, [*paths, *extra])
        if single:
            for path in [paths[0], *extra]:
                check_output(path, overwrite)
    rank, world = shard
    mine = list(zip(cases, paths, strict=True))[rank::world]
    for i, (case, path) in enumerate(mine, start=1):
        info = read_info(case.image)
        done = path is not None and path.exists() and not overwrite and not single
        done = done and (
            not probabilities or all(q.exists() for q in probability_paths(path, config))
        )
        if done and _is_complete(path, info.geometry):
            on_progress(Step("predicting", i, len(mine), f"{case.case_id} exists, kept"))
            yield Prediction(case.case_id, None, info.geometry, path=path, skipped=True)
            continue
        check_memory(info)
        image, geometry = read_image(case.image)
        mask, probs = predict_image(
            predictor, image, geometry, infer, with_probabilities=probabilities
        )
        del image
        if path is not None:
            remove_stale_parts(path.parent, path.name)  # this case's leftovers from a crash
            if config.data.regions:
                write_image(path, mask, geometry, overwrite=True, note=file_note(targets))
            else:
                write_mask(path, mask, geometry, overwrite=True, note=BINARY_NOTE)
            if probs is not None:
                channels = probs if config.data.regions else probs[None]
                for q, channel in zip(probability_paths(path, config), channels, strict=True):
                    write_image(q, channel, geometry, overwrite=True)
        on_progress(Step("predicting", i, len(mine), case.case_id))
        yield Prediction(case.case_id, mask, geometry, probs, path)


def predict(
    model: str | Path,
    input: str | Path,
    output: str | Path | None = None,
    *,
    device: str = "auto",
    tta: bool = False,
    overlap: float | None = None,
    keep_largest: int | None = None,
    probabilities: bool = False,
    overwrite: bool = False,
) -> list[Prediction]:
    """Python API: predict masks for every scan under `input` with the run in `model`.

    Returns each predicted case's mask and its source geometry (cases whose output already
    existed are left out); writes files when `output` is given.
    """
    predictor = load_predictor(model, device)
    infer = infer_settings(predictor.config, tta=tta, overlap=overlap, keep_largest=keep_largest)
    results = iter_predictions(
        predictor,
        Path(input),
        Path(output) if output else None,
        infer=infer,
        probabilities=probabilities,
        overwrite=overwrite,
    )
    return [p for p in results if not p.skipped]
