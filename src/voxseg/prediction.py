"""`voxseg predict`: a trained run folder + scans -> masks on each scan's exact grid.

The model's own preprocessing is replayed from its config.json; the mask is restored through
the recorded crop/resample/reorientation and written with the source geometry, so it has
the input's shape, spacing, origin, direction and array axis order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
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
    read_image,
    read_info,
    write_image,
    write_mask,
)
from voxseg.errors import ConfigError, InputError
from voxseg.geometry import Geometry
from voxseg.inference import autocast_dtype, predict_probabilities
from voxseg.preprocess import preprocess_image, restore, restore_probabilities
from voxseg.train import checkpoint as ckpt
from voxseg.train.loop import BEST, CONFIG, pad_value_for


@dataclass(frozen=True)
class Predictor:
    model: nn.Module
    config: RunConfig
    device: torch.device
    amp: torch.dtype | None


@dataclass(frozen=True)
class Prediction:
    case_id: str
    mask: np.ndarray
    """uint8 {0, 1}, the source file's array layout."""
    geometry: Geometry
    """The source file's geometry (write the mask with it)."""
    probabilities: np.ndarray | None = None
    path: Path | None = None


def load_predictor(
    run_dir: str | Path, device: str = "auto", precision: str | None = None
) -> Predictor:
    """Rebuild the model from `run_dir/config.json` and load `model.safetensors` (no pickle)."""
    from voxseg.models import build_model
    from voxseg.train.run import resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(
            f"{run_dir}: no {CONFIG}; --model must be a run folder made by `voxseg train`"
        )
    config = RunConfig.load(run_dir / CONFIG)
    model = build_model(config.model.name, **config.model.options)
    state = _best_hash(run_dir)
    ckpt.load_model_weights(run_dir / BEST, model, state)
    dev = resolve_device(device)
    model.to(dev).eval()
    return Predictor(model, config, dev, autocast_dtype(precision or config.train.precision, dev))


def _best_hash(run_dir: Path) -> str | None:
    import json

    try:
        return (
            json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
            .get("files", {})
            .get(BEST)
        )
    except (OSError, ValueError):
        return None


def keep_largest(mask: np.ndarray, n: int) -> np.ndarray:
    """Keep the `n` largest 26-connected components."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= n:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:n] + 1
    return np.isin(labels, keep)


def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    geometry: Geometry,
    infer: InferConfig | None = None,
    *,
    with_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask (and optionally probabilities) on `geometry` for one scan in HU."""
    cfg = predictor.config
    infer = infer or cfg.infer
    net_input, record = preprocess_image(image, geometry, cfg.preprocess)
    patch = cfg.train.patch_size
    if patch is not None:  # a volume smaller than the patch is padded by the sliding window
        patch = tuple(int(p) for p in patch)
    prob = predict_probabilities(
        predictor.model,
        net_input,
        patch_size=patch,
        overlap=infer.overlap,
        tta=infer.tta,
        device=predictor.device,
        amp=predictor.amp,
        pad_value=pad_value_for(cfg),
    )
    del net_input
    if infer.keep_largest:
        prob = np.where(
            keep_largest(prob >= infer.threshold, infer.keep_largest), prob, 0.0
        ).astype(np.float32)
    mask = restore(prob, record, infer.threshold).astype(np.uint8)
    probs = restore_probabilities(prob, record) if with_probabilities else None
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
    on_case: Callable[[str, str], None] | None = None,
) -> Iterator[Prediction]:
    """Predict every scan under `input_path`; write to `output` when given.

    In a folder, outputs that already exist and read back on the input's grid are skipped
    (a rerun after a crash finishes the rest); `overwrite` redoes them.
    """
    dataset = discover(input_path)
    cases = list(dataset.cases)
    single = dataset.layout == "file"
    paths = (
        output_paths(input_path, output, cases, single)
        if output is not None
        else [None] * len(cases)
    )
    if single and paths[0] is not None:
        check_output(paths[0], overwrite)
    rank, world = shard
    for case, path in list(zip(cases, paths, strict=True))[rank::world]:
        done = path is not None and path.exists() and not overwrite and not single
        if done and _is_complete(path, read_info(case.image).geometry):
            if on_case:
                on_case(case.case_id, "exists, skipped")
            continue
        check_memory(read_info(case.image))
        image, geometry = read_image(case.image)
        mask, probs = predict_image(
            predictor, image, geometry, infer, with_probabilities=probabilities
        )
        del image
        if path is not None:
            remove_stale_parts(path.parent, path.name)  # this case's leftovers from a crash
            write_mask(path, mask, geometry, overwrite=True)
            if probs is not None:
                write_image(
                    path.with_name(path.name.replace(".nii.gz", "_prob.nii.gz")),
                    probs,
                    geometry,
                    overwrite=True,
                )
        if on_case:
            on_case(case.case_id, "done")
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

    Returns each case's mask and its source geometry; writes files when `output` is given.
    """
    predictor = load_predictor(model, device)
    infer = replace(
        predictor.config.infer,
        tta=tta,
        keep_largest=predictor.config.infer.keep_largest if keep_largest is None else keep_largest,
        **({"overlap": overlap} if overlap is not None else {}),
    )
    return list(
        iter_predictions(
            predictor,
            Path(input),
            Path(output) if output else None,
            infer=infer,
            probabilities=probabilities,
            overwrite=overwrite,
        )
    )
