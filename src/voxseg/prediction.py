"""`voxseg predict`: a trained run folder + scans -> masks on each scan's exact grid.

The model's own preprocessing is replayed from its config.json; the mask is restored through
the recorded crop/resample/reorientation and written with the source geometry, so it has
the input's shape, spacing, origin, direction and array axis order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from voxseg.atomic import appeared_meanwhile, remove_stale_parts
from voxseg.config import InferConfig, Precision, RunConfig
from voxseg.data.discovery import Case, discover
from voxseg.data.guards import check_memory
from voxseg.data.io import (
    IMAGE_SUFFIXES,
    check_output,
    image_stem,
    read_image,
    read_info,
    refuse_replacing_inputs,
    write_image,
)
from voxseg.errors import ConfigError, InputError
from voxseg.geometry import Geometry
from voxseg.postprocess import keep_largest
from voxseg.preprocess import PreprocessRecord, preprocess_image, restore, restore_probabilities
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.regions import as_written, file_note, label_map
from voxseg.run_folder import RunFolder, writer_of

Engine = Literal["auto", "torch", "onnx"]
OutputFormat = Literal["nifti", "dicom-seg"]


@dataclass(frozen=True)
class Predictor:
    model: Any
    """A torch module (engine 'torch') or a `voxseg.onnx_engine.OnnxModel` (engine 'onnx')."""
    config: RunConfig
    device: Any = "cpu"
    """torch.device of the torch engine; ONNX Runtime runs on the CPU."""
    amp: Any = None
    """Autocast dtype of the torch engine (None: fp32)."""
    engine: Literal["torch", "onnx"] = "torch"
    notes: tuple[str, ...] = ()
    """What the user should know about the model (a run still training)."""

    def probabilities(self, net_input: np.ndarray, infer: InferConfig) -> np.ndarray:
        """(C, D, H, W) probabilities on the network grid, from whichever engine holds the
        model (the ONNX path never imports torch)."""
        pad = self.config.preprocess.pad_value
        if self.engine == "onnx":
            from voxseg.onnx_engine import predict_probabilities_onnx

            return predict_probabilities_onnx(
                self.model,
                net_input,
                window=infer.window,
                overlap=infer.overlap,
                tta=infer.tta,
                pad_value=pad,
            )
        from voxseg.inference import predict_probabilities

        return predict_probabilities(  # a volume smaller than the window is padded by it
            self.model,
            net_input,
            window=infer.window,
            overlap=infer.overlap,
            tta=infer.tta,
            device=self.device,
            amp=self.amp,
            pad_value=pad,
        )


@dataclass(frozen=True)
class Prediction:
    case_id: str
    mask: np.ndarray | None
    """uint8 in the source file's array layout: {0, 1} from a one-region (binary) model, a
    label map from a model of several regions (KiTS: 1 kidney, 2 tumour); None when the case
    was skipped."""
    geometry: Geometry
    """The source file's geometry (write the mask with it)."""
    probabilities: np.ndarray | None = None
    """float32 (R, D, H, W), one channel per region the model segments (R = 1: binary)."""
    path: Path | None = None
    skipped: bool = False
    """The output already existed on the input's grid and was kept (a rerun)."""


def shard_from_env() -> tuple[int, int]:
    """Prediction shard of this process under torchrun (rank, world size): every
    world-size-th case from its rank; (0, 1) otherwise. Read here, not from
    `voxseg.distributed`, so that ONNX prediction never imports torch."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def choose_engine(
    run: RunFolder, engine: Engine, device: str, precision: str = "auto"
) -> Literal["torch", "onnx"]:
    """'auto' picks the faster engine as measured (benchmarks/RESULTS.md, "Engines"): torch
    with bf16 autocast, then ONNX Runtime fp32, then torch fp32. So: ONNX Runtime when the
    folder has only model.onnx, when torch is absent, or on a CPU where torch would run fp32;
    torch on GPUs and bf16 CPUs."""
    has_onnx, has_torch = run.onnx_model.is_file(), run.best_weights.is_file()
    if engine == "auto":
        engine = (
            "onnx"
            if has_onnx and (not has_torch or _onnx_is_faster(device, precision))
            else "torch"
        )
    if engine == "onnx":
        if not has_onnx:
            raise ConfigError(
                f"{run.root}: no {run.onnx_model.name}; run `voxseg export {run.root}` first"
            )
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--engine onnx runs on the CPU; drop --device {device}")
    return engine


def _onnx_is_faster(device: str, precision: str) -> bool:
    if device not in ("auto", "cpu"):
        return False
    try:
        import torch
    except ImportError:
        return True
    if device == "auto" and torch.cuda.is_available():
        return False
    from voxseg.runtime import autocast_dtype

    return autocast_dtype(precision, torch.device("cpu")) is None


def load_predictor(
    run_dir: str | Path,
    device: str = "auto",
    precision: str | None = None,
    engine: Engine = "auto",
) -> Predictor:
    """The run's model, ready to predict: rebuilt from config.json with its best weights (no
    pickle), or its exported model.onnx under ONNX Runtime (no torch)."""
    if engine not in get_args(Engine):  # the API takes any string; the CLI checks its choices
        raise ConfigError(f"engine {engine!r}: choose one of {', '.join(get_args(Engine))}")
    if precision is not None and precision not in get_args(Precision):
        raise ConfigError(
            f"precision {precision!r}: choose one of {', '.join(get_args(Precision))}"
        )
    run = RunFolder(Path(run_dir))
    notes = _in_progress(run)
    config = run.load_config()
    if choose_engine(run, engine, device, precision or config.train.precision) == "onnx":
        from voxseg.onnx_engine import load_onnx, model_key

        model = load_onnx(run.onnx_model)
        entry = {"name": config.model.name, "options": config.model.options}
        if model.model is not None and model.model != model_key(entry):
            raise ConfigError(
                f"{run.onnx_model}: exported from another network ({model.model}) than "
                f"{run.config_path.name} describes; export this run again with --overwrite"
            )
        current = run.best_weights_hash() if run.best_weights.is_file() else None
        if current and model.weights_sha256 and current != model.weights_sha256:
            raise ConfigError(
                f"{run.onnx_model}: exported from older weights than {run.best_weights.name} "
                f"(training went on); run `voxseg export {run.root} --overwrite`"
            )
        return Predictor(model, config, engine="onnx", notes=notes)
    from voxseg.models import build_model
    from voxseg.runtime import autocast_dtype, resolve_device

    model = build_model(config.model.name, **config.model.options)
    run.load_best_weights(model)
    dev = resolve_device(device)
    model.to(dev).eval()
    amp = autocast_dtype(precision or config.train.precision, dev)
    return Predictor(model, config, dev, amp, notes=notes)


def _in_progress(run: RunFolder) -> tuple[str, ...]:
    """A run another command is still writing: refuse before its first model, else say that
    these are the best weights so far."""
    writer = writer_of(run)
    if writer is None:
        return ()
    if not run.best_weights.is_file():
        raise InputError(
            f"{run.root}: {writer} is still writing this run and there is no model yet; "
            "wait for its first epoch to end"
        )
    return (f"{run.root}: {writer} is still writing this run; predicting with its best "
            "weights so far",)  # fmt: skip


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


def finish(
    config: RunConfig,
    prob: np.ndarray,
    record: PreprocessRecord,
    infer: InferConfig,
    with_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Network-grid probabilities (C, ...) -> mask or label map (and probabilities) on the
    source grid: keep-largest per output, restore, nest the regions."""
    regions = config.data.targets()
    keep = infer.keep_largest * len(regions) if len(infer.keep_largest) == 1 else infer.keep_largest
    if len(keep) != len(prob):
        raise InputError(
            f"keep_largest {infer.keep_largest} does not match the model's {len(prob)} outputs; "
            "give one value or one per region"
        )
    kept = [  # new arrays: the caller's probabilities stay as they were
        np.where(keep_largest(channel >= infer.threshold, n), channel, 0.0) if n else channel
        for channel, n in zip(prob, keep, strict=True)
    ]
    masks = [restore(channel, record, infer.threshold) for channel in kept]
    mask = label_map(np.stack(masks), regions)
    probs = None
    if with_probabilities:
        probs = np.stack([restore_probabilities(channel, record) for channel in kept])
    return mask, probs


def predict_image(
    predictor: Predictor,
    image: np.ndarray,
    geometry: Geometry,
    infer: InferConfig | None = None,
    *,
    with_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask or label map (and optionally probabilities) on `geometry` for one scan in HU."""
    infer = infer or predictor.config.infer
    net_input, record = preprocess_image(image, geometry, predictor.config.preprocess)
    prob = predictor.probabilities(net_input, infer)
    del net_input
    return finish(predictor.config, prob, record, infer, with_probabilities)


def output_paths(
    input_path: Path, output: Path, cases: list[Case], single: bool, fmt: OutputFormat = "nifti"
) -> list[Path]:
    if fmt == "dicom-seg":
        scans = [c.image for c in cases if not c.image.is_dir()]
        if scans:
            raise InputError(
                f"{scans[0]}: --output-format dicom-seg needs DICOM series as input (a SEG "
                "references its source slices); predict NIfTI for this scan"
            )
        if output.name.lower().endswith(".dcm") and len(cases) == 1:
            return [output]
        return [output / f"{c.case_id}.dcm" for c in cases]
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
    """One probability file per model output (`m_prob.nii.gz` for a one-region model)."""
    targets = config.data.targets()
    if len(targets) == 1:
        return [probability_path(mask_path)]
    return [probability_path(mask_path, r.name) for r in targets]


def _is_complete(path: Path, geometry: Geometry) -> bool:
    """An existing output that reads back on the right grid counts as done."""
    try:
        info = read_info(path)
    except InputError:
        return False
    return info.geometry.same_grid(geometry)


@dataclass(frozen=True)
class _Job:
    case: Case
    path: Path | None
    index: int
    outputs: tuple[Path, ...] = ()
    """The files it writes: the mask, then its probabilities when asked (none in memory)."""
    replace: bool = False
    """Its outputs may be replaced: --overwrite, or an unfinished one was there when the run
    began. Otherwise a file another process wrote meanwhile is kept, and this run stops."""


@dataclass(frozen=True)
class _Loaded:
    job: _Job
    net_input: np.ndarray
    record: PreprocessRecord
    geometry: Geometry


def _load(predictor: Predictor, job: _Job) -> _Loaded:
    check_memory(read_info(job.case.image))
    image, geometry = read_image(job.case.image)
    net_input, record = preprocess_image(image, geometry, predictor.config.preprocess)
    return _Loaded(job, net_input, record, geometry)


def _finish_and_write(
    predictor: Predictor, loaded: _Loaded, prob: np.ndarray, infer: InferConfig, probabilities
) -> Prediction:
    config, path, geometry = predictor.config, loaded.job.path, loaded.geometry
    replace = loaded.job.replace
    taken = [] if replace else [p for p in loaded.job.outputs if p.exists()]
    if taken:  # free when the run began: another process wrote it since
        raise appeared_meanwhile(taken[0])
    mask, probs = finish(config, prob, loaded.record, infer, probabilities)
    if path is not None and path.suffix.lower() == ".dcm":
        from voxseg.data.dicom_seg import segment, series_files, write_dicom_seg

        segments = [segment(r.name, r.labels or (1,)) for r in as_written(config.data.targets())]
        files = series_files(loaded.job.case.image)
        write_dicom_seg(mask, files, path, segments, geometry=geometry, overwrite=replace)
    elif path is not None:
        remove_stale_parts(path.parent, path.name)  # this case's leftovers from a crash
        note = file_note(config.data.targets())
        write_image(path, mask, geometry, overwrite=replace, note=note)
        if probs is not None:
            for q, channel in zip(probability_paths(path, config), probs, strict=True):
                write_image(q, channel, geometry, overwrite=replace)
    return Prediction(loaded.job.case.case_id, mask, geometry, probs, path)


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
    background: bool = True,
    output_format: OutputFormat = "nifti",
) -> Iterator[Prediction]:
    """Predict every scan under `input_path` (this shard's share); write to `output` if given.

    In a folder, outputs that already exist and read back on the input's grid are skipped
    (a rerun after a crash finishes the rest) and yielded with `skipped`; `overwrite` redoes
    them. `output_format` 'dicom-seg' writes `<case_id>.dcm` DICOM Segmentations that
    reference each input series (DICOM input only).

    Reading and preprocessing the next case, and restoring and writing the previous one, run
    in two background threads while the network runs; each holds at most one case, so
    memory stays that of three. An error or Ctrl-C ends the run after the write in flight
    (every write is atomic). `background=False` does it all in turn (the benchmark's
    baseline).
    """
    config = predictor.config
    infer = infer or config.infer
    dataset = discover(input_path)
    cases = list(dataset.cases)
    # One scan (a file, a DICOM series, a KiTS case folder) into a file name: one file.
    single = dataset.layout == "file" or (
        len(cases) == 1
        and output is not None
        and not output.is_dir()
        and output.name.lower().endswith((*IMAGE_SUFFIXES, ".dcm"))
    )
    if output_format == "dicom-seg" and probabilities:
        raise ConfigError("--probabilities writes NIfTI; leave out --output-format dicom-seg")
    paths = (
        output_paths(input_path, output, cases, single, output_format)
        if output is not None
        else [None] * len(cases)
    )

    def extra_of(path: Path) -> list[Path]:
        return probability_paths(path, config) if probabilities else []

    if output is not None:
        extra = [q for p in paths for q in extra_of(p)]
        refuse_replacing_inputs([*paths, *extra], [p for c in cases for p in (c.image, c.label)])
        if single:
            for path in [paths[0], *extra]:
                check_output(path, overwrite)
    rank, world = shard
    mine = list(zip(cases, paths, strict=True))[rank::world]
    jobs = []
    for i, (case, path) in enumerate(mine, start=1):
        done = path is not None and path.exists() and not overwrite and not single
        done = done and all(q.exists() for q in extra_of(path))
        geometry = read_info(case.image).geometry if done else None
        if done and _is_complete(path, geometry):
            on_progress(Step("predicting", i, len(mine), f"{case.case_id} exists, kept"))
            yield Prediction(case.case_id, None, geometry, path=path, skipped=True)
        else:
            outputs = () if path is None else (path, *extra_of(path))
            replace = overwrite or any(p.exists() for p in outputs)
            jobs.append(_Job(case, path, i, outputs, replace))
    if not background:
        for job in jobs:
            loaded = _load(predictor, job)
            prob = predictor.probabilities(loaded.net_input, infer)
            yield _finish_and_write(predictor, loaded, prob, infer, probabilities)
            on_progress(Step("predicting", job.index, len(mine), job.case.case_id))
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="voxseg-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="voxseg-write") as writer,
    ):
        try:
            yield from _pipeline(
                predictor, jobs, infer, probabilities, reader, writer, on_progress, len(mine)
            )
        finally:  # an error or Ctrl-C: drop queued reads; the write in flight completes
            reader.shutdown(wait=False, cancel_futures=True)


def _pipeline(
    predictor: Predictor,
    jobs: list[_Job],
    infer: InferConfig,
    probabilities: bool,
    reader: ThreadPoolExecutor,
    writer: ThreadPoolExecutor,
    on_progress: ProgressFn,
    total: int,
) -> Iterator[Prediction]:
    """Read case k+1 and write case k-1 while the network predicts case k."""

    def written(pending: tuple[_Job, Future]) -> Prediction:
        job, future = pending
        prediction = future.result()
        on_progress(Step("predicting", job.index, total, job.case.case_id))
        return prediction

    loading = reader.submit(_load, predictor, jobs[0]) if jobs else None
    pending = None
    for k, job in enumerate(jobs):
        loaded = loading.result()
        loading = reader.submit(_load, predictor, jobs[k + 1]) if k + 1 < len(jobs) else None
        prob = predictor.probabilities(loaded.net_input, infer)
        if pending is not None:  # at most one case waits to be written
            yield written(pending)
        future = writer.submit(_finish_and_write, predictor, loaded, prob, infer, probabilities)
        pending = (job, future)
        del loaded, prob
    if pending is not None:
        yield written(pending)


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
    engine: Engine = "auto",
    precision: str | None = None,
) -> list[Prediction]:
    """Python API: predict masks for every scan under `input` with the run in `model`.

    Returns each predicted case's mask and its source geometry (cases whose output already
    existed are left out); writes files when `output` is given. `precision` (auto, fp32,
    bf16, fp16) overrides the run's own for the torch engine.
    """
    predictor = load_predictor(model, device, precision, engine=engine)
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
