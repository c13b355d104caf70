"""`voxseg predict`: masks on each input's exact grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Device, Overwrite, choose, flag
from voxseg.console import ProgressUI, console, err_console, handle_errors

_ENGINES = "auto|torch|onnx"
_FORMATS = "nifti|dicom-seg"
"""prediction.Engine and OutputFormat, spelled out so `--help` needs no import (a test keeps
them equal)."""


@command()
@handle_errors
def predict(
    model: Annotated[Path, typer.Option("--model", help="Run folder made by `voxseg train`.")],
    input: Annotated[
        Path,
        typer.Option("--input", "-i", help="Image file, folder of images, or dataset root."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Mask file (single input) or folder.")
    ],
    device: Device = "auto",
    tta: Annotated[
        bool, flag("--tta", "Mirror test-time augmentation (4 passes; off by default).")
    ] = False,
    overlap: Annotated[
        float | None,
        typer.Option(
            "--overlap",
            help="Sliding-window overlap, a fraction of the window (default: the run's, 0.25).",
        ),
    ] = None,  # fmt: skip
    probabilities: Annotated[
        bool, flag("--probabilities", "Also write <case>_prob.nii.gz.")
    ] = False,
    keep_largest: Annotated[
        int | None,
        typer.Option(
            "--keep-largest",
            metavar="N",
            help="Keep N largest components (0: all). Default: what training chose on validation.",
        ),
    ] = None,
    overwrite: Overwrite = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            metavar=_ENGINES,
            help="torch, or onnx (ONNX Runtime on the CPU, no torch; needs `voxseg export` "
            "first). auto: the faster one as measured (torch with bf16; else ONNX Runtime "
            "when exported).",
        ),
    ] = "auto",
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            metavar="auto|fp32|bf16|fp16",
            help="Torch engine arithmetic (default: the run's; auto takes bf16 where it runs "
            "fast). fp32 gives the ONNX engine's masks.",
        ),
    ] = None,
    output_format: Annotated[
        str,
        typer.Option(
            "--output-format",
            metavar=_FORMATS,
            help="NIfTI, or a DICOM Segmentation per input series, referencing it.",
        ),
    ] = "nifti",
) -> None:
    """Predict masks on each input's exact grid (shape, spacing, origin, direction, axis order)."""
    from voxseg.prediction import (
        Engine,
        OutputFormat,
        infer_settings,
        iter_predictions,
        load_predictor,
        shard_from_env,
    )

    engine = choose(engine, Engine, "--engine")
    output_format = choose(output_format, OutputFormat, "--output-format")
    predictor = load_predictor(model, device, precision, engine=engine)
    for note in predictor.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)
    infer = infer_settings(predictor.config, tta=tta, overlap=overlap, keep_largest=keep_largest)
    with ProgressUI(transient=True) as ui:
        results = list(
            iter_predictions(
                predictor,
                input,
                output,
                infer=infer,
                probabilities=probabilities,
                overwrite=overwrite,
                shard=shard_from_env(),
                on_progress=ui.on_progress,
                output_format=output_format,
            )
        )
    kept = sum(r.skipped for r in results)
    if kept:
        err_console.print(f"{kept} outputs already existed and were kept (--overwrite redoes them)")
    written = len(results) - kept
    console.print(f"wrote {written} mask{'' if written == 1 else 's'} to {output}")
