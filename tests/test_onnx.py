"""ONNX export and the torch-free ONNX Runtime engine: the same logits, probabilities and
resampling as the PyTorch path, and no torch import on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import blocking
from voxseg.config import InferConfig, ModelConfig, PreprocessConfig, RunConfig
from voxseg.data.io import read_image
from voxseg.errors import InputError, OutputExistsError
from voxseg.export import export_onnx
from voxseg.inference import predict_probabilities
from voxseg.models import build_model
from voxseg.models.shape import per_axis
from voxseg.onnx_engine import load_onnx, predict_probabilities_onnx
from voxseg.prediction import load_predictor
from voxseg.resample import resize
from voxseg.run_folder import RunFolder
from voxseg.weights import save_model

UNET = {"base_channels": 4, "depth": 2}
ANISOTROPIC = {
    "base_channels": 4,
    "depth": 3,
    "strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2]],
    "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
}
MODELS = {
    "seed": ("seed", {}),
    "unet": ("unet", UNET),
    "unet_anisotropic": ("unet", ANISOTROPIC),
    "unet_3_channels": ("unet", {**UNET, "out_channels": 3}),
}


def make_run(root: Path, name: str, options: dict) -> RunFolder:
    """An untrained, deterministic run folder (config + weights), as training leaves one."""
    run = RunFolder(root)
    run.root.mkdir(parents=True)
    run.save_config(
        RunConfig(
            preprocess=PreprocessConfig(spacing=(2.0, 2.0, 2.0)),
            model=ModelConfig(name, options),
            infer=InferConfig(window=(16, 16, 16)),
        )
    )
    torch.manual_seed(0)
    save_model(run.best_weights, build_model(name, **options))
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Model key -> (run folder, its model.onnx), each exported once."""
    done: dict[str, tuple[RunFolder, Path]] = {}

    def get(key: str) -> tuple[RunFolder, Path]:
        if key not in done:
            name, options = MODELS[key]
            root = tmp_path_factory.mktemp(key)
            run = make_run(root / "run", name, options)
            done[key] = run, export_onnx(run.root, root / "onnx")
        return done[key]

    return get


def _multiples(divisor: tuple[int, ...]) -> list[tuple[int, ...]]:
    steps = [(2, 1, 1), (2, 2, 2), (1, 2, 3), (3, 1, 2)]  # one voxel at the bottom: no norm
    return [tuple(k * d for k, d in zip(s, divisor, strict=True)) for s in steps]


# ---- (a) the graph computes the model's logits -----------------------------------------------
@pytest.mark.parametrize("key", list(MODELS))
def test_onnx_logits_equal_pytorch(exported, key):
    run, path = exported(key)
    onnx_model = load_onnx(path)
    model = load_predictor(run.root, device="cpu", precision="fp32").model
    assert onnx_model.divisor == per_axis(model.divisor)
    rng = np.random.default_rng(0)
    for batch, shape in zip([1, 2, 1, 2], _multiples(onnx_model.divisor), strict=True):
        x = rng.standard_normal((batch, 1, *shape)).astype(np.float32)
        (got,) = onnx_model.session.run(None, {onnx_model.input_name: x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, (key, shape)


@pytest.mark.parametrize("key", ["unet", "unet_anisotropic"])
def test_onnx_logits_equal_pytorch_beside_constant_regions(exported, key):
    """An air-padded border: ONNX Runtime's InstanceNormalization sums a channel in one float32
    accumulator and missed by 2e-4 here; the exported per-axis means do not."""
    run, path = exported(key)
    onnx_model = load_onnx(path)
    model = load_predictor(run.root, device="cpu", precision="fp32").model
    x = np.random.default_rng(5).standard_normal((1, 1, 32, 32, 32)).astype(np.float32)
    x[..., :16] = x[..., :10, :, :] = -2.3
    (got,) = onnx_model.session.run(None, {onnx_model.input_name: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_graph_has_free_batch_and_spatial_axes(exported):
    _, path = exported("unet")
    model = load_onnx(path)
    (image,), (logits,) = model.session.get_inputs(), model.session.get_outputs()
    assert (image.name, logits.name) == ("image", "logits")
    assert image.shape == ["batch", 1, "depth", "height", "width"]
    assert [logits.shape[i] for i in (0, 2, 3, 4)] == ["batch", "depth", "height", "width"]


# ---- (b) the engine predicts what inference.predict_probabilities predicts -------------------
CASES = {
    "whole volume, padded to the divisor": ((13, 18, 22), None, 0.25, False),
    "window, overlap 0.25": ((20, 24, 30), (16, 16, 16), 0.25, False),
    "window, overlap 0.5": ((20, 24, 30), (16, 16, 16), 0.5, False),
    "volume smaller than the window": ((10, 12, 14), (16, 16, 16), 0.25, False),
    "smaller along one axis only": ((10, 20, 33), (16, 16, 16), 0.25, False),
    "tta, window": ((20, 24, 18), (16, 16, 16), 0.25, True),
    "tta, whole volume": ((13, 18, 22), None, 0.25, True),
}


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_probabilities_equal_inference(exported, key, case):
    shape, window, overlap, tta = CASES[case]
    run, path = exported(key)
    model = load_predictor(run.root, device="cpu", precision="fp32").model
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    kwargs = {"window": window, "overlap": overlap, "tta": tta, "pad_value": -1.3}
    got = predict_probabilities_onnx(load_onnx(path), x, **kwargs)
    expected = predict_probabilities(model, x, device="cpu", **kwargs)
    assert got.dtype == np.float32 and got.ndim == 4 and got.shape[1:] == shape
    expected = np.reshape(expected, (-1, *shape))  # (D, H, W) before multi-channel models
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_window_must_be_a_multiple_of_the_divisor(exported):
    _, path = exported("unet_anisotropic")
    with pytest.raises(InputError, match="divisor"):
        predict_probabilities_onnx(load_onnx(path), np.zeros((8, 8, 8)), window=(8, 8, 12))


# ---- export: files, metadata, refusals -------------------------------------------------------
def test_export_writes_model_and_config_only(exported):
    run, path = exported("seed")
    assert path == RunFolder(path.parent).onnx_model
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "model.onnx"]
    assert RunConfig.load(path.parent / "config.json") == run.load_config()


def test_export_refuses_to_overwrite(exported):
    run, path = exported("seed")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="model.onnx"):
        export_onnx(run.root, path.parent)
    assert path.read_bytes() == before
    export_onnx(run.root, path.parent, overwrite=True)
    assert load_onnx(path).divisor == (8, 8, 8)


def test_load_onnx_refuses_other_files(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="ONNX"):
        load_onnx(bad)
    with pytest.raises(InputError, match="voxseg export"):
        load_onnx(tmp_path / "missing.onnx")


# ---- (c) no torch on the ONNX path -----------------------------------------------------------
BLOCK_TORCH = blocking("torch")
NO_TORCH = (
    BLOCK_TORCH
    + """import numpy as np
from voxseg.onnx_engine import load_onnx, predict_probabilities_onnx
from voxseg.resample import resize

model = load_onnx(sys.argv[1])
x = resize(np.random.default_rng(0).standard_normal((30, 40, 40)), (20, 24, 24), antialias=True)
prob = predict_probabilities_onnx(model, x, window=(16, 16, 16), overlap=0.5, tta=True)
assert prob.shape == (1, 20, 24, 24) and 0 < prob.min() <= prob.max() < 1, prob.shape
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
)


def test_engine_and_resample_run_without_torch(exported):
    _, path = exported("unet")
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# ---- (d) resample equals PyTorch's interpolation ---------------------------------------------


def torch_resize(a: np.ndarray, shape, antialias: bool = False, threshold: float | None = None):
    """The reference: PyTorch's bilinear over axes 1-2 (antialiased when either shrinks, as
    preprocessing asks) and linear along axis 0, align_corners=False."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(a, dtype=np.float32))
    shrink = shape[1] < a.shape[1] or shape[2] < a.shape[2]
    y = F.interpolate(
        x[:, None], size=shape[1:], mode="bilinear", align_corners=False,
        antialias=antialias and shrink,
    )[:, 0]  # fmt: skip
    d0, d1, d2 = y.shape
    columns = y.reshape(d0, d1 * d2).T[:, None]
    z = F.interpolate(columns, size=shape[0], mode="linear", align_corners=False)[:, 0]
    out = z.T.reshape(shape[0], d1, d2).numpy()
    return out if threshold is None else out >= threshold


SOURCE = (12, 17, 20)
TARGETS = [
    (5, 17, 20),  # down along axis 0 only
    (30, 17, 20),  # up along axis 0 only
    (12, 7, 20),
    (12, 40, 20),
    (12, 17, 9),
    (12, 17, 41),
    (7, 33, 11),  # mixed: the bilinear pass shrinks one axis and grows the other
    (25, 8, 45),
    (9, 3, 50),
]


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("shape", TARGETS)
def test_resample_equals_torch_resize(shape, antialias):
    a = np.random.default_rng(2).standard_normal(SOURCE).astype(np.float32)
    got = resize(a, shape, antialias=antialias)
    expected = torch_resize(a, shape, antialias=antialias)
    assert got.dtype == np.float32 and got.shape == shape
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("shape", [(5, 30, 9), (30, 8, 41)])
def test_resample_threshold_and_integer_input(shape):
    label = (np.random.default_rng(3).random(SOURCE) > 0.5).astype(np.uint8)
    values = torch_resize(label, shape)
    mask = resize(label, shape, threshold=0.5, chunk=5)
    assert mask.dtype == bool
    decided = np.abs(values - 0.5) > 1e-5  # a rounding apart from the threshold could go either way
    np.testing.assert_array_equal(mask[decided], torch_resize(label, shape, threshold=0.5)[decided])
    hu = np.random.default_rng(4).integers(-1000, 1000, SOURCE).astype(np.int16)
    np.testing.assert_allclose(
        resize(hu, shape, antialias=True), torch_resize(hu, shape, antialias=True), atol=1e-3
    )


NO_TORCH_CLI = (
    BLOCK_TORCH
    + """from voxseg.cli import main

sys.argv = ["voxseg", *sys.argv[1:]]
try:
    main()
finally:
    assert "torch" not in sys.modules, "torch was imported"
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["seed", "unet"])
def test_cli_predicts_a_folder_without_torch_and_equals_the_torch_engine(
    model, run, tmp_path: Path
):
    """`voxseg export`, then `voxseg predict --engine onnx` in a process that cannot import
    torch, from a folder holding only model.onnx and config.json: the masks equal torch's."""
    from tests.test_cli import invoke
    from tests.test_prediction import _run_dir

    source = run if model == "seed" else _run_dir(tmp_path, "spacing")
    data = run.parent / "kits"
    deploy = tmp_path / "deploy"
    result = invoke("export", source, "--out", deploy)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in deploy.iterdir()) == ["config.json", "model.onnx"]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_CLI, "predict", "--model", str(deploy), "-i", str(data),
         "-o", str(tmp_path / "onnx"), "--engine", "onnx"],
        capture_output=True, text=True, encoding="utf-8", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = invoke("predict", "--model", source, "-i", data, "-o", tmp_path / "torch",
                    "--engine", "torch", "--precision", "fp32")  # fmt: skip
    assert result.exit_code == 0, result.output
    masks = sorted((tmp_path / "torch").iterdir())
    assert len(masks) == 3
    for path in masks:
        torch_mask, g = read_image(path)
        onnx_mask, g2 = read_image(tmp_path / "onnx" / path.name)
        assert g2 == g
        np.testing.assert_array_equal(onnx_mask, torch_mask, err_msg=path.name)


def test_an_export_older_than_the_weights_is_refused(run, tmp_path: Path):
    """Training went on after the export: the ONNX engine refuses the stale graph."""
    import shutil

    from tests.test_cli import assert_user_error, invoke
    from voxseg.run_folder import RunFolder
    from voxseg.weights import save_model

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert invoke("export", copy).exit_code == 0
    folder = RunFolder(copy)
    state = folder.load_state()
    model = load_predictor(copy, device="cpu").model
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # the next best epoch's weights
    state.files["model.safetensors"] = save_model(folder.best_weights, model)
    (copy / "state.json").write_text(json.dumps(state.to_dict()))
    data = run.parent / "kits"
    result = invoke(
        "predict", "--model", copy, "-i", data, "-o", tmp_path / "o", "--engine", "onnx"
    )
    assert_user_error(result, "older weights", "voxseg export")


def test_auto_engine_takes_the_measured_faster_one(tmp_path: Path, monkeypatch):
    """Both engines at hand: torch where bf16 autocast runs (fastest measured), ONNX Runtime
    where torch would run fp32 on the CPU (ORT measured 1.35x faster); only one: that one."""
    import voxseg.runtime
    from voxseg.prediction import choose_engine
    from voxseg.run_folder import RunFolder

    run = RunFolder(tmp_path)
    run.onnx_model.write_bytes(b"x")
    assert choose_engine(run, "auto", "cpu") == "onnx"  # no weights
    run.best_weights.write_bytes(b"x")
    for fast_bf16, expected in ((True, "torch"), (False, "onnx")):
        monkeypatch.setattr(voxseg.runtime, "cpu_has_fast_bf16", lambda v=fast_bf16: v)
        assert choose_engine(run, "auto", "cpu") == expected
    assert choose_engine(run, "auto", "cpu", precision="bf16") == "torch"
    assert choose_engine(run, "torch", "cpu") == "torch"
    run.onnx_model.unlink()
    assert choose_engine(run, "auto", "cpu") == "torch"


def test_an_unknown_engine_through_the_api_is_refused_not_run_on_torch(tmp_path: Path):
    import voxseg
    from voxseg.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"x")
    (run / "config.json").write_text(RunConfig().to_json(), encoding="utf-8")
    with pytest.raises(ConfigError, match="engine 'onnxx': choose one of auto, torch, onnx"):
        voxseg.predict(run, tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", engine="onnxx")
