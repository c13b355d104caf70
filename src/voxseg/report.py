"""The HTML report: run settings and curves, metrics tables, overlays of the worst cases.

The report is one HTML file with inline CSS and every picture embedded as a base64 PNG, so
it can be mailed or archived and opens offline, with no JavaScript.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from voxseg.atomic import write_text
from voxseg.config import RunConfig
from voxseg.errors import ConfigError, InputError
from voxseg.evaluation import CasePair, EvaluationResult, RegionsResult
from voxseg.plots import HU_WINDOW, curves_figure, legend_words, overlay_png, png_bytes
from voxseg.regions import Region, describe
from voxseg.run_folder import RunFolder, TrainState


def _case_overlay(
    files: CasePair, regions: tuple[Region, ...], read_as: tuple[Region, ...], title: str
) -> bytes:
    """The overlay of one case: region r of the ground truth is `regions[r]`, of the
    prediction `read_as[r]` (as evaluation read it)."""
    from voxseg.data.io import read_image
    from voxseg.geometry import Reorientation

    gt, geometry = read_image(files.gt)
    pred, _ = read_image(files.pred)
    image = None
    if files.image is not None:
        ct, _ = read_image(files.image)
        image = ct if ct.shape == gt.shape else None  # a mismatched CT is shown as grey
    to_canonical = Reorientation.to_canonical(geometry)
    _, spacing = geometry.canonical_grid()
    return overlay_png(
        None if image is None else to_canonical.apply(image),
        np.stack([to_canonical.apply(r.mask(gt)) for r in regions]),
        np.stack([to_canonical.apply(r.mask(pred)) for r in read_as]),
        spacing,
        title,
        regions=tuple(r.name for r in regions),
    )


# ---- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;
margin:0;background:#f3f4f6}
main{max-width:1440px;margin:0 auto;padding:20px 28px;background:#fff;min-height:100vh}
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
    target = describe(config.data.targets())
    dice_over = "batch" if t.batch_dice else "patch"
    facts = [
        ("model", f"{config.model.name} {config.model.options or ''}".strip()),
        ("target", target),
        ("preprocessing", f"{grid}, HU window {p.hu_window}"),
        ("loss", t.loss if t.loss == "bce" else f"{t.loss}, Dice per {dice_over}"),
        ("batch size", str(t.batch_size)),
        ("patch", str(t.patch_size) if t.patch_size else "whole volume"),
        ("optimizer", f"{t.optimizer}, lr {t.lr:g}, {t.schedule}"),
    ]
    card = config.card
    if card.data:
        facts += [
            (
                "trained on",
                f"{card.data}: {card.train_cases} training, {card.val_cases} "
                f"validation cases, median spacing {card.median_spacing} mm (z y x)",
            ),
            ("trained", f"{card.trained_minutes:g} min, {card.epochs} epochs, {card.created}"),
            ("versions", f"voxseg {card.voxseg_version}, torch {card.torch_version}"),
            ("command", card.command),
        ]
    if state is not None:
        if state.best_epoch:
            facts.append(
                ("best validation Dice", f"{state.best_dice:.4f} at epoch {state.best_epoch}")
            )
            if len(state.best_region_dice) > 1:
                names = [r.name for r in config.data.targets()]
                per_region = zip(names, state.best_region_dice, strict=True)
                facts.append(("per region", ", ".join(f"{n} {d:.4f}" for n, d in per_region)))
        facts.append(("epochs completed", str(state.epoch)))
        if state.stopped:
            facts.append(("stopped", state.stopped))
    return facts


def _run_section(run: RunFolder, config: RunConfig | ConfigError) -> list[str]:
    parts = []
    if isinstance(config, ConfigError):
        parts.append(f'<p class="note">{_e(config)}</p>')
    else:
        facts = _run_facts(config, run.load_state())
        parts.append(
            "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>"
        )
    parts.append("<h2>Training curves</h2>")
    history = run.read_metrics()
    if history:
        parts.append(_img(png_bytes(curves_figure(history, dpi=80)), "training curves"))
    else:
        parts.append(
            f'<p class="note">No epochs recorded yet ({_e(run.metrics_path)} missing or empty).</p>'
        )
    return parts


def _summary_rows(result: EvaluationResult) -> list[tuple[str, ...]]:
    return [
        (
            label,
            *(_num(getattr(result.summary[key], s), fmt) for s in ("mean", "median", "std")),
            str(result.summary[key].excluded),
        )
        for key, label, fmt in _CASE_COLUMNS
    ]


def _scores_section(
    result: RegionsResult, read_as: tuple[Region, ...], max_cases: int
) -> list[str]:
    """Tables and overlays for any number of regions (a binary target is one); cases worst
    first by their mean Dice over regions (the KiTS19 composite when there are several)."""
    names = [r.name for r in result.regions]
    composite = result.case_composite()
    by_region = [{c.case_id: c for c in r.cases} for r in result.results]
    worst_first = sorted(composite, key=lambda k: (composite[k], k))
    bad = ["bad" if composite[k] < 0.5 else "" for k in worst_first]
    parts = [f"<h2>Evaluation ({len(composite)} cases)</h2>"]
    if len(names) > 1:
        parts.append(
            f"<p><b>Composite Dice {result.composite_dice:.4f}</b>: the mean over regions of "
            "the mean Dice over cases (KiTS19's ranking score for kidney+tumour and tumour).</p>"
        )
    parts += [
        f'<p class="muted">{_e(NO_ACCURACY)} Global Dice: the Dice of the voxel counts summed '
        "over all cases.</p>",
        *(f'<p class="note">{_e(n)}</p>' for n in result.notes),
    ]
    for name, scored, cases in zip(names, result.results, by_region, strict=True):
        rows = [
            (k, *(_num(getattr(cases[k], key), fmt) for key, _, fmt in _CASE_COLUMNS))
            for k in worst_first
        ]
        parts += [
            f"<h3>{_e(name)}: global Dice {scored.global_dice:.4f}</h3>",
            _table(("metric", "mean", "median", "std", "excluded (inf)"), _summary_rows(scored)),
            f"<h4>Per case, worst first ({_e(name)})</h4>",
            _table(("case", *(label for _, label, _ in _CASE_COLUMNS)), rows, bad),
        ]
    parts += [
        "<h2>Overlays, worst first</h2>",
        f'<p class="muted">{_e(legend_words(names))}; CT windowed to [{HU_WINDOW[0]:g}, '
        f"{HU_WINDOW[1]:g}] HU; radiological view (patient's left on the right); slices "
        "through the most foreground of either mask.</p>",
    ]
    files = {pair.case_id: pair for pair in result.pairs}
    for k in worst_first[:max_cases]:
        title = f"{k}: " + ", ".join(
            f"{n} Dice {d[k].dice:.3f}" for n, d in zip(names, by_region, strict=True)
        )
        missing = "" if files[k].image is not None else f"{k}: no CT image, masks on grey."
        png = _case_overlay(files[k], result.regions, read_as, title)
        parts.append(
            f'<section class="case" id="case-{_e(k)}">'
            + (f'<p class="muted">{_e(missing)}</p>' if missing else "")
            + f"{_img(png, f'overlay {k}')}</section>"
        )
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
    regions: tuple[Region, ...] | None = None,
    max_cases: int = 24,
    overwrite: bool = False,
) -> Path:
    """One self-contained HTML page: run settings and curves, metrics tables, overlays.

    Give a run folder, predictions with their ground truth, or both. Without `foreground`
    and `regions`, predictions are scored on the run's own target. Written atomically.
    """
    from voxseg.data.io import check_output, refuse_replacing_inputs

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
    config: RunConfig | ConfigError | None = None
    if run is not None:
        try:
            config = run.load_config()
        except ConfigError as exc:  # shown in the report; fatal only if scoring needs it
            config = exc
        parts += _run_section(run, config)
    read = run.files() if run is not None else []
    if pred_dir is not None and gt is not None:
        from voxseg.evaluation import read_files, score_as_asked

        if foreground is None and regions is None and run is not None and run.config_path.is_file():
            if isinstance(config, ConfigError):
                raise config
            data = config.data  # score what the run learned
            foreground, regions = data.foreground, data.targets() if data.regions else None
        result, read_as = score_as_asked(pred_dir, gt, foreground=foreground, regions=regions)
        parts += _scores_section(result, read_as, max_cases)
        read += read_files(result.pairs)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>voxseg report</title><style>{_CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n"
    )
    refuse_replacing_inputs([out], read)
    # ASCII with character references: the file reads the same whatever the locale's encoding.
    write_text(out, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))
    return out
