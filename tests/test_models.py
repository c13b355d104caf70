"""Contract of every registered model, the seed network's fidelity to Keras, and its fast form."""

from __future__ import annotations

import math

import pytest
import torch

from voxseg.errors import ConfigError, InputError
from voxseg.models import MODEL_NAMES, SeedCNN, build_model, fuse_seed
from voxseg.models.summary import format_summary, model_summary

# Default options of every registered model, plus the variants with a different forward path.
ANISOTROPIC = {  # thick slices: axis 0 neither convolved nor pooled at the first level
    "depth": 2,
    "strides": [[1, 2, 2], [2, 2, 2]],
    "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
}
CASES = [(name, {}) for name in MODEL_NAMES] + [
    ("unet", {"deep_supervision": True}),
    ("unet", ANISOTROPIC),
]
SHAPE = (16, 16, 32)  # divisible by 16; the U-Net bottleneck (1, 1, 2) still has 2 voxels

KERAS_SEED_PARAMS = [896, 55_360, 221_312, 442_496, 221_248, 55_328, 33]


def _case_id(case: tuple[str, dict]) -> str:
    name, options = case
    return "-".join([name, *(f"{k}={v}" for k, v in options.items())])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_model_contract(case: tuple[str, dict]) -> None:
    name, options = case
    torch.manual_seed(0)
    model = build_model(name, **options).train()
    x = torch.randn(2, 1, *SHAPE)

    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    assert outputs[0].shape == x.shape
    loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"

    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape
    assert torch.isfinite(y).all()

    bad = (SHAPE[0] + 1, *SHAPE[1:])
    with pytest.raises(InputError, match="not divisible by"):
        model.check_shape(bad)
    with pytest.raises(InputError, match="let prediction pad"):
        model(torch.zeros(1, 1, *bad))
    with pytest.raises(InputError, match=r"\(N, 1, D, H, W\)"):
        model(torch.zeros(1, 2, *SHAPE))


def test_bad_shape_message_names_nearest_sizes() -> None:
    with pytest.raises(InputError) as info:
        build_model("seed").check_shape((100, 128, 128))
    assert str(info.value) == (
        "input size (100, 128, 128) is not divisible by 8; "
        "use (96, 128, 128) or (104, 128, 128), or let prediction pad"
    )
    with pytest.raises(InputError, match=r"use \(16, 16, 16\), or"):
        build_model("unet").check_shape((4, 16, 16))


def test_model_names_are_the_configs_choices() -> None:
    import typing

    from voxseg.config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    assert set(typing.get_args(hints["name"])) == set(MODEL_NAMES)


def test_anisotropic_unet_divisor_and_bad_topologies() -> None:
    from voxseg.models import size_divisor

    assert size_divisor("unet", **ANISOTROPIC) == (2, 4, 4)
    assert build_model("unet", **ANISOTROPIC).divisor == (2, 4, 4)
    with pytest.raises(ConfigError, match="strides"):
        build_model("unet", depth=2, strides=[[3, 2, 2], [2, 2, 2]])
    with pytest.raises(ConfigError, match="kernels"):
        build_model("unet", depth=2, kernels=[[3, 3, 3]])


def test_deep_supervision_outputs() -> None:
    model = build_model("unet", depth=3, deep_supervision=True).train()
    outs = model(torch.randn(1, 1, 32, 32, 16))
    assert [tuple(o.shape) for o in outs] == [
        (1, 1, 32, 32, 16),
        (1, 1, 16, 16, 8),
        (1, 1, 8, 8, 4),
    ]
    assert model.divisor == 8


def test_registry_errors_list_the_valid_choices() -> None:
    with pytest.raises(ConfigError, match="valid names: unet, seed"):
        build_model("vnet")
    with pytest.raises(ConfigError, match="no option width.*base_channels, depth"):
        build_model("unet", width=8)
    with pytest.raises(ConfigError, match="depth"):
        build_model("unet", depth=0)
    with pytest.raises(ConfigError, match="'keras' or 'torch'"):
        build_model("seed", init="he")


def test_seed_parameters_match_keras() -> None:
    model = build_model("seed")
    counts = [sum(p.numel() for p in m.parameters()) for m in model.children()]
    assert [c for c in counts if c] == KERAS_SEED_PARAMS
    assert sum(p.numel() for p in model.parameters()) == 996_673
    # Keras defaults: glorot_uniform kernels, zero biases.
    limit = math.sqrt(6 / (27 * 1 + 27 * 32))
    assert model.conv3d.weight.abs().max() <= limit
    assert all(m.bias.abs().max() == 0 for m in model.children() if hasattr(m, "bias"))


def _random_seed(dtype: torch.dtype) -> SeedCNN:
    """A literal seed network with non-trivial weights and biases, so no rewrite can hide behind
    zeros."""
    model = SeedCNN(fast=False).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    return model


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"]
)
@pytest.mark.parametrize("shape", [(8, 8, 8), (16, 24, 32), (24, 16, 40)])
def test_fast_seed_equals_literal(
    dtype: torch.dtype, rtol: float, shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(1)
    model = _random_seed(dtype)
    fast = fuse_seed(model)
    x = torch.randn(2, 1, *shape, dtype=dtype)
    with torch.inference_mode():
        want, got = model(x), fast(x)
    assert got.shape == want.shape
    err = (got - want).abs().max() / want.abs().max()
    assert err <= rtol, f"relative error {err:.2e}"


@pytest.mark.parametrize("batch", [1, 2])  # one sample takes the two-slab first convolution
@pytest.mark.parametrize("shape", [(8, 8, 8), (16, 24, 32), (24, 16, 8)])
def test_fast_seed_trains_like_literal(batch: int, shape: tuple[int, int, int]) -> None:
    """The default (fast) forward gives the literal network's logits and parameter gradients."""
    torch.manual_seed(3)
    model = _random_seed(torch.float64).train()
    x = torch.randn(batch, 1, *shape, dtype=torch.float64)
    target = torch.randn(batch, 1, *shape, dtype=torch.float64)
    results = {}
    for fast in (False, True):
        model.fast = fast
        model.zero_grad(set_to_none=True)
        out = model(x)
        (out * target).sum().backward()
        results[fast] = out.detach(), {n: p.grad for n, p in model.named_parameters()}
    (want, want_grads), (got, got_grads) = results[False], results[True]
    assert (got - want).abs().max() <= 1e-10 * want.abs().max()
    for name, g in want_grads.items():
        err = (got_grads[name] - g).abs().max() / g.abs().max()
        assert err <= 1e-10, f"{name}: relative gradient error {err:.2e}"


def test_seed_fast_option_keeps_checkpoints_interchangeable() -> None:
    fast, literal = build_model("seed"), build_model("seed", fast=False)
    assert fast.fast and not literal.fast
    assert list(fast.state_dict()) == list(literal.state_dict())
    literal.load_state_dict(fast.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(fast(x), literal(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="fast="):
        build_model("seed", fast="yes")


@pytest.mark.parametrize("shape", [(8, 8, 8), (16, 16, 16)])
def test_fast_seed_bf16_gradients_are_sane(shape: tuple[int, int, int]) -> None:
    """Low-resolution depths of 1 and 2, where oneDNN's bf16 weight gradient is garbage."""
    torch.manual_seed(5)
    model = SeedCNN().train()
    x = torch.randn(2, 1, *shape)
    target = torch.randn(2, 1, *shape)
    grads = {}
    for amp in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        (out.float() * target).sum().backward()
        grads[amp] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, want in grads[False].items():
        # bf16 moves some max-pooling choices, so only the size of the error is pinned.
        err = (grads[True][name] - want).norm() / want.norm()
        assert err <= 0.5, f"{name}: relative gradient error {err:.2e} under bf16"


def test_fast_seed_under_bf16_autocast_stays_close() -> None:
    torch.manual_seed(4)
    model = _random_seed(torch.float32)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        want = model(x)
        model.fast = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x).float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


def test_fast_seed_equals_literal_channels_last() -> None:
    torch.manual_seed(2)
    model = _random_seed(torch.float32)
    fast = fuse_seed(model).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 1, 16, 24, 32)
    with torch.inference_mode():
        want = model(x)
        got = fast(x.to(memory_format=torch.channels_last_3d))
    err = (got - want).abs().max() / want.abs().max()
    assert err <= 1e-5, f"relative error {err:.2e}"


def test_seed_summary_reads_like_keras() -> None:
    summary = model_summary(build_model("seed"), (128, 128, 128))
    assert summary.total_params == summary.trainable_params == 996_673
    assert [r.name for r in summary.rows][:3] == ["conv3d", "max_pooling3d", "conv3d_1"]
    assert [r.params for r in summary.rows if r.params] == KERAS_SEED_PARAMS
    assert summary.rows[-1].output_shape == (1, 128, 128, 128)
    text = format_summary(summary)
    assert "conv3d_transpose (ConvTranspose3d)" in text
    assert "(None, 1, 128, 128, 128)" in text
    assert "Total params: 996,673" in text


def test_summary_leaves_model_untouched() -> None:
    model = build_model("unet", depth=2).train()
    summary = model_summary(model, (32, 32, 32), batch=2)
    assert model.training
    assert next(model.parameters()).device.type == "cpu"
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.rows[-1].output_shape == (1, 32, 32, 32)
