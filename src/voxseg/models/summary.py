"""A Keras-like layer table: each leaf module's output shape and parameter count.

Shapes are PyTorch's channels-first (None, C, D, H, W), where Keras would print channels last.
The forward pass runs on a parameter-free copy of the model on the "meta" device, so a summary
at 128^3 costs no compute and leaves the model untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from voxseg.models.shape import check_divisible


@dataclass(frozen=True)
class SummaryRow:
    name: str
    """Attribute path of the module, e.g. ``encoder.0.conv1``."""
    layer_type: str
    output_shape: tuple[int, ...]
    """Output shape of one sample, channels first (the batch axis is left out)."""
    params: int


@dataclass(frozen=True)
class Summary:
    model_name: str
    input_shape: tuple[int, int, int]
    rows: tuple[SummaryRow, ...]
    """One row per call of a leaf module, in call order."""
    total_params: int
    trainable_params: int


def model_summary(model: nn.Module, shape: tuple[int, int, int], batch: int = 1) -> Summary:
    """Run `model` once on a (batch, 1, *shape) input and record each leaf module's output."""
    divisor = getattr(model, "divisor", 1)
    check_divisible(shape, divisor)
    meta_model = copy.deepcopy(model).to("meta").eval()
    names = {module: name for name, module in meta_model.named_modules()}
    rows: list[SummaryRow] = []
    counted: set[nn.Module] = set()

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        out = output[0] if isinstance(output, tuple | list) else output
        # A module called twice (shared weights) owns its parameters once.
        params = 0 if module in counted else sum(p.numel() for p in module.parameters())
        counted.add(module)
        rows.append(SummaryRow(names[module], type(module).__name__, tuple(out.shape[1:]), params))

    leaves = [m for m in meta_model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves if m is not meta_model]
    try:
        with torch.no_grad():
            meta_model(torch.zeros(batch, 1, *shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return Summary(
        model_name=type(model).__name__,
        input_shape=tuple(shape),
        rows=tuple(rows),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def format_summary(summary: Summary) -> str:
    """Render `summary` as a Keras-style table."""
    table = [("Layer (type)", "Output Shape", "Param #")]
    for row in summary.rows:
        shape = "(None, " + ", ".join(str(s) for s in row.output_shape) + ")"
        table.append((f"{row.name} ({row.layer_type})", shape, f"{row.params:,}"))
    widths = [max(len(cells[i]) for cells in table) + 2 for i in range(3)]
    rule = "_" * sum(widths)

    def line(cells: tuple[str, str, str]) -> str:
        return "".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    body = [line(cells) for cells in table[1:]]
    input_shape = ", ".join(str(s) for s in summary.input_shape)
    return "\n".join(
        [
            f'Model: "{summary.model_name}"  input (None, 1, {input_shape})',
            rule,
            line(table[0]),
            "=" * sum(widths),
            *body,
            "=" * sum(widths),
            f"Total params: {summary.total_params:,}",
            f"Trainable params: {summary.trainable_params:,}",
            f"Non-trainable params: {summary.total_params - summary.trainable_params:,}",
            rule,
        ]
    ).rstrip()
