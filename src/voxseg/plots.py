"""Pictures: training curves and mask overlays, drawn with matplotlib's object API (no pyplot:
no global state, safe off the main thread).

Overlays are drawn from the canonical layout (array axes superior, posterior, left;
`voxseg.geometry`) in the radiological convention, so every case looks the same whatever
orientation its file has.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxseg.atomic import atomic_path
from voxseg.run_folder import EpochRecord

HU_WINDOW = (-160.0, 240.0)
"""Soft-tissue window for the CT under the overlays."""
TRUTH_COLOURS = (("#22c55e", "green"), ("#38bdf8", "blue"), ("#a3e635", "lime"))
"""Ground truth, one colour per region: cool colours, drawn wide and underneath."""
PRED_COLOURS = (("#e800e8", "magenta"), ("#f97316", "orange"), ("#facc15", "yellow"))
"""Prediction, one colour per region: warm colours, drawn thin on top, so truth and
prediction never share a colour."""


def _colour(palette, r: int) -> tuple[str, str]:
    return palette[r % len(palette)]


def legend_words(regions: Sequence[str]) -> str:
    """How the overlays draw each region, in words for the report."""
    if len(regions) == 1:
        return "Ground truth in green, prediction in magenta"
    truth = ", ".join(f"{n} {_colour(TRUTH_COLOURS, r)[1]}" for r, n in enumerate(regions))
    pred = ", ".join(f"{n} {_colour(PRED_COLOURS, r)[1]}" for r, n in enumerate(regions))
    return f"Ground truth wide ({truth}), prediction thin ({pred})"


def _figure(width: float, height: float, dpi: int):
    # Figure without pyplot: no global state, nothing to close, safe off the main thread.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_figure(history: Sequence[EpochRecord], dpi: int):
    from matplotlib.ticker import MaxNLocator

    epochs = [h.epoch for h in history]
    fig = _figure(9, 3.4, dpi)
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_dice.plot(epochs, [h.val_dice for h in history], "o-", color="tab:green", label="epoch")
    if any(h.val_score != h.val_dice for h in history if math.isfinite(h.val_dice)):
        ax_dice.plot(
            epochs, [h.val_score for h in history], "--", color="tab:olive", label="smoothed"
        )
        ax_dice.legend()
    scored = [h for h in history if math.isfinite(h.val_dice)]
    title = "Validation Dice"
    if scored:
        best = max(scored, key=lambda h: h.val_score)
        ax_dice.axvline(best.epoch, color="grey", ls="--", lw=1)
        title += f" (best {best.val_dice:.3f}, epoch {best.epoch})"
    ax_dice.set(xlabel="epoch", ylabel="Dice", title=title, ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_curves(history: Sequence[EpochRecord], path: Path) -> Path | None:
    """Loss and validation Dice per epoch as a PNG (nothing when there is no epoch yet)."""
    if not history:
        return None
    fig = curves_figure(history, dpi=110)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


# Display of each view from a canonical (S, P, L) volume, radiological convention:
# (name, sliced axis, flip rows so superior is up, row axis, column axis, edge letters
# top/bottom/left/right). Axial: anterior up, patient left on the right; coronal likewise
# with superior up; sagittal: superior up, anterior on the left.
_VIEWS = (
    ("axial", 0, False, 1, 2, "APRL"),
    ("coronal", 1, True, 0, 2, "SIRL"),
    ("sagittal", 2, True, 0, 1, "SIAP"),
)


def best_slices(mask: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the slice holding the most foreground; the middle one when there is none."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    return tuple(
        int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3)
    )


def view_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """The 2D picture of `view` ('axial', 'coronal', 'sagittal') at `index`, top row first."""
    for name, axis, flip, *_ in _VIEWS:
        if name == view:
            plane = np.take(volume, index, axis=axis)
            return np.flipud(plane) if flip else plane
    raise ValueError(f"unknown view {view!r}; use axial, coronal or sagittal")


def overlay_png(
    image: np.ndarray | None,
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    title: str,
    regions: Sequence[str] = (),
) -> bytes:
    """Axial, coronal and sagittal slices with ground truth and prediction outlined, as PNG.

    All arrays are canonical (superior, posterior, left) and `spacing` is in that order;
    `image` is CT in HU, or None to draw the masks on grey. `gt` and `pred` are (R, ...)
    masks, one per region named in `regions` (a binary target is one region): ground truth
    wide in cool colours, prediction thin in warm ones. Slices go through the most
    foreground of ground truth or prediction.
    """
    from matplotlib.lines import Line2D

    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.ndim == 3:  # one region given as a plain mask
        gt, pred = gt[None], pred[None]
    regions = tuple(regions) or ("",) * len(gt)
    if gt.shape != pred.shape or (image is not None and image.shape != gt.shape[1:]):
        raise ValueError(
            f"shapes differ: image {None if image is None else image.shape}, "
            f"gt {gt.shape}, pred {pred.shape}"
        )
    truth = [(gt[r], _colour(TRUTH_COLOURS, r)[0], 2.6, "solid") for r in range(len(gt))]
    guess = [(pred[r], _colour(PRED_COLOURS, r)[0], 1.1, "solid") for r in range(len(gt))]
    layers = truth + guess
    labels = [f"{n} {kind}".strip() for kind in ("ground truth", "prediction") for n in regions]
    shape = gt.shape[1:]
    index = best_slices(gt[0] | pred[0])
    fig = _figure(13.5, 4.9 + 0.3 * (len(labels) > 2), 100)  # ~450 px per view
    for ax, (name, axis, _, row_axis, col_axis, letters) in zip(
        fig.subplots(1, 3), _VIEWS, strict=True
    ):
        if image is None:
            background = np.full(shape[:axis] + shape[axis + 1 :], 0.5)
            ax.imshow(background, cmap="gray", vmin=0, vmax=1)
        else:
            plane = view_slice(image, name, index[axis]).astype(np.float32)
            ax.imshow(plane, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        for mask, colour, width, style in layers:
            plane = view_slice(mask, name, index[axis])
            if plane.any() and not plane.all():  # contour() warns on a constant plane
                ax.contour(
                    plane.astype(np.float32),
                    levels=[0.5],
                    colors=colour,
                    linewidths=width,
                    linestyles=style,
                )
        # Physical proportions: one row is spacing[row] mm tall, one column spacing[col] wide.
        ax.set_aspect(spacing[row_axis] / spacing[col_axis])
        ax.set_title(f"{name} {index[axis] + 1}/{shape[axis]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for letter, (x, y) in zip(
            letters, ((0.5, 0.98), (0.5, 0.02), (0.02, 0.5), (0.98, 0.5)), strict=True
        ):
            ax.text(
                x,
                y,
                letter,
                transform=ax.transAxes,
                color="#fde047",
                fontsize=8,
                ha="center",
                va="center",
            )
    handles = [Line2D([], [], color=c, lw=w, linestyle=s) for _, c, w, s in layers]
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(len(labels), 4 if len(labels) > 2 else 2),
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07 + 0.05 * (len(labels) > 4), 1, 0.95))
    return png_bytes(fig)
