"""MONAI's standard inference recipe (the spleen tutorial's) with the seed network, for
`bench_predict.py`: the same weights, target spacing, intensity window, patch and overlap as
a voxseg run folder, run literally (`build_model("seed", fast=False)`).

LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd -> ScaleIntensityRanged
-> CropForegroundd, sliding_window_inference, then sigmoid -> Invertd (back to the input's
grid) -> AsDiscreted(0.5) -> SaveImaged. Prints one JSON object with the stage timings.

    .venv/bin/python benchmarks/monai_recipe.py --run RUN_DIR --image CT.nii.gz --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="voxseg run folder (config + weights)")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--sw-batch-size", type=int, default=1)
    args = p.parse_args()

    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )
    from safetensors.torch import load_file

    from voxseg.config import RunConfig
    from voxseg.models import build_model

    t0 = time.perf_counter()
    config = RunConfig.load(args.run / "config.json")
    pre = config.preprocess
    lo, hi = pre.window
    b_min, b_max = (lo - pre.mean) / pre.std, (hi - pre.mean) / pre.std
    s, pa, lr = pre.spacing  # canonical (S, P, L) -> RAS pixdim (x, y, z)
    model = build_model(config.model.name, fast=False)
    model.load_state_dict(load_file(str(args.run / "model.safetensors")))
    model.eval()

    transforms = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(lr, pa, s), mode="bilinear"),
            ScaleIntensityRanged(
                keys="image", a_min=lo, a_max=hi, b_min=b_min, b_max=b_max, clip=True
            ),
            CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > b_min),
        ]
    )
    post = Compose(
        [
            Activationsd(keys="pred", sigmoid=True),
            Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", threshold=0.5),
            SaveImaged(
                keys="pred",
                output_dir=str(args.out),
                output_postfix="seg",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
    t_setup = time.perf_counter()
    data = transforms({"image": str(args.image)})
    t_pre = time.perf_counter()
    image = data["image"]
    amp = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), amp:
        roi = tuple(reversed(config.train.patch_size))  # canonical (S, P, L) -> (x, y, z)
        logits = sliding_window_inference(
            image[None], roi, args.sw_batch_size, model, overlap=config.infer.overlap
        )
    pred = logits[0].float()
    data["pred"] = MetaTensor(pred, meta=image.meta) if not isinstance(pred, MetaTensor) else pred
    t_inf = time.perf_counter()
    post(data)
    t_post = time.perf_counter()
    print(
        json.dumps(
            {
                "network_grid": list(image.shape[1:]),
                "setup_s": t_setup - t0,
                "preprocess_s": t_pre - t_setup,
                "inference_s": t_inf - t_pre,
                "invert_and_save_s": t_post - t_inf,
            }
        )
    )


if __name__ == "__main__":
    main()
