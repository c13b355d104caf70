"""Pictures and the HTML report: training curves, overlays, metrics table.

The report is one HTML file with inline CSS and every picture embedded as a base64 PNG, so
it can be mailed or archived and opens offline, with no JavaScript. Overlays are drawn from
the canonical layout (array axes superior, posterior, left; `voxseg.geometry`) in the
radiological convention, so every case looks the same whatever orientation its file has.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from voxseg.atomic import atomic_path, write_text
from voxseg.config import RunConfig
from voxseg.errors import ConfigError, InputError
from voxseg.evaluation import CasePair, EvaluationResult
from voxseg.run_folder import EpochRecord, RunFolder, TrainState

HU_WINDOW = (-160.0, 240.0)
"""Soft-tissue window for the CT under the overlays."""
GT_COLOUR = "#22c55e"
PRED_COLOUR = "#e800e8"


def _figure(width: float, height: float, dpi: int):
    # Figure without pyplot: no global state, nothing to close, safe off the main thread.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _curves_figure(history: Sequence[EpochRecord], dpi: int):
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
    fig = _curves_figure(history, dpi=110)
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
) -> bytes:
    """Axial, coronal and sagittal slices with ground truth and prediction outlined, as PNG.

    All arrays are canonical (superior, posterior, left) and `spacing` is in that order;
    `image` is CT in HU, or None to draw the masks on grey. Slices go through the most
    foreground of ground truth or prediction in each view.
    """
    from matplotlib.lines import Line2D

    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape or (image is not None and image.shape != gt.shape):
        raise ValueError(
            f"shapes differ: image {None if image is None else image.shape}, "
            f"gt {gt.shape}, pred {pred.shape}"
        )
    index = best_slices(gt | pred)
    fig = _figure(9, 3.4, 80)
    for ax, (name, axis, _, row_axis, col_axis, letters) in zip(
        fig.subplots(1, 3), _VIEWS, strict=True
    ):
        if image is None:
            background = np.full(gt.shape[:axis] + gt.shape[axis + 1 :], 0.5)
            ax.imshow(background, cmap="gray", vmin=0, vmax=1)
        else:
            plane = view_slice(image, name, index[axis]).astype(np.float32)
            ax.imshow(plane, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        # Ground truth wider and underneath, so a perfect prediction still shows both colours.
        for mask, colour, width in ((gt, GT_COLOUR, 2.6), (pred, PRED_COLOUR, 1.1)):
            plane = view_slice(mask, name, index[axis])
            if plane.any() and not plane.all():  # contour() warns on a constant plane
                ax.contour(plane.astype(np.float32), levels=[0.5], colors=colour, linewidths=width)
        # Physical proportions: one row is spacing[row] mm tall, one column spacing[col] wide.
        ax.set_aspect(spacing[row_axis] / spacing[col_axis])
        ax.set_title(f"{name} {index[axis] + 1}/{gt.shape[axis]}", fontsize=9)
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
    handles = [Line2D([], [], color=GT_COLOUR, lw=2.6), Line2D([], [], color=PRED_COLOUR, lw=1.1)]
    fig.legend(
        handles,
        ["ground truth", "prediction"],
        loc="lower center",
        ncol=2,
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return _png(fig)


def _case_overlay(files: CasePair, foreground: tuple[int, ...] | None, title: str) -> bytes:
    from voxseg.data.checks import binary_target
    from voxseg.data.io import read_image
    from voxseg.geometry import Reorientation

    gt, geometry = read_image(files.gt)
    pred, _ = read_image(files.pred)
    image = None
    if files.image is not None:
        ct, _ = read_image(files.image)
        image = ct if ct.shape == gt.shape else None  # a mismatched CT is shown as grey
    to_canonical = Reorientation.to_canonical(geometry)
    spacing = tuple(geometry.spacing[a] for a in to_canonical.axes)
    return overlay_png(
        None if image is None else to_canonical.apply(image),
        to_canonical.apply(binary_target(gt, foreground).astype(bool)),
        to_canonical.apply(pred > 0),
        spacing,
        title,
    )


# ---- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;
margin:0;background:#f3f4f6}
main{max-width:1120px;margin:0 auto;padding:20px 28px;background:#fff;min-height:100vh}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #e5e7eb;padding-bottom:4px}h3{font-size:15px;margin:18px 0 4px}
.muted{color:#6b7280}.note{background:#fef9c3;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid #e5e7eb;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f9fafb}
tr.bad td{background:#fee2e2}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}
dt{color:#6b7280}dd{margin:0}
img{max-width:100%;height:auto;display:block}
.case{margin:10px 0;padding:6px;border:1px solid #e5e7eb;border-radius:6px;width:fit-content}
"""

_CASE_COLUMNS = (
    ("dice", "Dice", ".3f"),
    ("iou", "IoU", ".3f"),
    ("precision", "precision", ".3f"),
    ("recall", "recall", ".3f"),
    ("hd95_mm", "HD95 mm", ".1f"),
    ("surface_dice_1mm", "surface Dice 1 mm", ".3f"),
    ("surface_dice_2mm", "surface Dice 2 mm", ".3f"),
    ("volume_diff_ml", "volume diff mL", "+.1f"),
)
NO_ACCURACY = (
    "Accuracy is not reported: with about 1 % of voxels foreground, a model that predicts "
    "only background scores 99 %."
)


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float, fmt: str) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return format(value, fmt)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], classes=()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _run_facts(config: RunConfig, state: TrainState | None) -> list[tuple[str, str]]:
    p, t = config.preprocess, config.train
    grid = f"shape {p.shape}" if p.mode == "shape" else f"spacing {p.spacing} mm"
    target = (
        "every non-zero label"
        if config.data.foreground is None
        else ("labels " + ", ".join(map(str, config.data.foreground)))
    )
    facts = [
        ("model", f"{config.model.name} {config.model.options or ''}".strip()),
        ("target", target),
        ("preprocessing", f"{grid}, HU window {p.window}"),
        ("loss", t.loss),
        ("batch size", str(t.batch_size)),
        ("patch", str(t.patch_size) if t.patch_size else "whole volume"),
        ("optimizer", f"{t.optimizer}, lr {t.lr:g}, {t.schedule}"),
    ]
    if state is not None:
        if state.best_epoch:
            facts.append(
                ("best validation Dice", f"{state.best_dice:.4f} at epoch {state.best_epoch}")
            )
        facts.append(("epochs completed", str(state.epoch)))
        if state.stopped:
            facts.append(("stopped", state.stopped))
    return facts


def _run_section(run: RunFolder) -> list[str]:
    parts = []
    try:
        config = run.load_config()
    except ConfigError as exc:
        parts.append(f'<p class="note">{_e(exc)}</p>')
    else:
        facts = _run_facts(config, run.load_state())
        parts.append(
            "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>"
        )
    parts.append("<h2>Training curves</h2>")
    history = run.read_metrics()
    if history:
        parts.append(_img(_png(_curves_figure(history, dpi=80)), "training curves"))
    else:
        parts.append(
            f'<p class="note">No epochs recorded yet ({_e(run.metrics_path)} missing or empty).</p>'
        )
    return parts


def _evaluation_section(result: EvaluationResult, foreground, max_cases: int) -> list[str]:
    summary_rows = [
        (
            label,
            *(_num(getattr(result.summary[key], s), fmt) for s in ("mean", "median", "std")),
            str(result.summary[key].excluded),
        )
        for key, label, fmt in _CASE_COLUMNS
    ]
    worst_first = sorted(result.cases, key=lambda c: (c.dice, c.case_id))
    case_rows = [
        (c.case_id, *(_num(getattr(c, k), fmt) for k, _, fmt in _CASE_COLUMNS)) for c in worst_first
    ]
    parts = [
        f"<h2>Evaluation ({len(result.cases)} cases)</h2>",
        f'<p class="muted">{_e(NO_ACCURACY)} Global Dice (summed counts over all cases): '
        f"{result.global_dice:.4f}.</p>",
        *(f'<p class="note">{_e(n)}</p>' for n in result.notes),
        _table(("metric", "mean", "median", "std", "excluded (inf)"), summary_rows),
        "<h3>Per case, worst Dice first</h3>",
        _table(
            ("case", *(label for _, label, _ in _CASE_COLUMNS)),
            case_rows,
            classes=["bad" if c.dice < 0.5 else "" for c in worst_first],
        ),
        "<h2>Overlays, worst Dice first</h2>",
        f'<p class="muted">Ground truth in green, prediction in magenta; CT windowed to '
        f"[{HU_WINDOW[0]:g}, {HU_WINDOW[1]:g}] HU; radiological view (patient's left on the "
        "right); slices through the most foreground of either mask.</p>",
    ]
    files = {pair.case_id: pair for pair in result.pairs}
    for case in worst_first[:max_cases]:
        source = files[case.case_id]
        parts.append(f'<section class="case" id="case-{_e(case.case_id)}">')
        if source.image is None:
            parts.append(f'<p class="muted">{_e(case.case_id)}: no CT image, masks on grey.</p>')
        png = _case_overlay(source, foreground, f"{case.case_id}: Dice {case.dice:.3f}")
        parts.append(_img(png, f"overlay {case.case_id}") + "</section>")
    hidden = len(worst_first) - max_cases
    if hidden > 0:
        parts.append(
            f'<p class="muted">{hidden} better cases not shown (max_cases={max_cases}).</p>'
        )
    return parts


def write_report(
    run_dir: Path | None,
    out: Path,
    *,
    pred_dir: Path | None = None,
    gt: Path | None = None,
    foreground: tuple[int, ...] | None = None,
    max_cases: int = 24,
    overwrite: bool = False,
) -> Path:
    """One self-contained HTML page: run settings and curves, metrics tables, overlays.

    Give a run folder, predictions with their ground truth, or both. Written atomically.
    """
    from voxseg.data.io import check_output

    out = Path(out)
    if run_dir is None and (pred_dir is None or gt is None):
        raise ConfigError("give a run folder, or both predictions and ground truth")
    if (pred_dir is None) != (gt is None):
        raise ConfigError("predictions and ground truth go together; give both or neither")
    if max_cases < 0:
        raise ConfigError(f"max_cases {max_cases}: must be 0 or more")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise InputError(f"{run_dir}: no such run folder; give the folder `voxseg train` wrote")
    check_output(out, overwrite)

    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    parts = ["<h1>voxseg report</h1>"]
    facts = [("generated", stamp)]
    if run_dir is not None:
        facts.insert(0, ("run folder", str(Path(run_dir).resolve())))
    if pred_dir is not None:
        facts += [("predictions", str(pred_dir)), ("ground truth", str(gt))]
    parts.append('<p class="muted">' + " · ".join(f"{_e(k)}: {_e(v)}" for k, v in facts) + "</p>")
    run = RunFolder(Path(run_dir)) if run_dir is not None else None
    if run is not None:
        parts += _run_section(run)
    if pred_dir is not None and gt is not None:
        from voxseg.evaluation import evaluate

        if foreground is None and run is not None and run.config_path.is_file():
            foreground = run.load_config().data.foreground  # score what the run learned

        result = evaluate(pred_dir, gt, foreground=foreground)
        parts += _evaluation_section(result, foreground, max_cases)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>voxseg report</title><style>{_CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )
    # ASCII with character references: the file reads the same whatever the locale's encoding.
    write_text(out, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))
    return out
