"""Pictures and the HTML report: training curves, overlays, metrics table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voxseg.atomic import atomic_path


def plot_curves(history: Sequence, path: Path) -> Path | None:
    """Loss and validation Dice per epoch as a PNG (nothing when there is no epoch yet)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    ax_loss.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_dice.plot(epochs, [h.val_dice for h in history], "o-", color="tab:green")
    best = max(history, key=lambda h: h.val_dice)
    ax_dice.axvline(best.epoch, color="grey", ls="--", lw=1)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title=f"Validation Dice (best {best.val_dice:.3f}, epoch {best.epoch})",
                ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
