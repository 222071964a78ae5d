"""Pictures to check a refinement by eye: before/after overlays and the rule's step-by-step evolution.

Numbers say how much topology changed; a picture says where. Overlays put the label, the base mask
and the refined mask side by side on the image, with the cells the refinement fixed in green and
the ones it got wrong in red (without a label: cells it added in green, removed in red). Volumes
show the slice where the refinement changed most.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from rnca_nnunet.files import atomic_path

CLASS_COLOURS = np.array([[255, 200, 0], [0, 150, 255], [230, 80, 230], [120, 230, 120], [255, 130, 60],
                          [90, 220, 220], [200, 120, 255], [255, 255, 120]], np.float32)
GOOD, BAD = np.array([0, 230, 0], np.float32), np.array([255, 30, 30], np.float32)
MIN_EDGE = 256


def representative_slice(base: np.ndarray, refined: Optional[np.ndarray] = None) -> int:
    """(Z, Y, X) label maps -> the slice where they differ most, else where the base has most foreground."""
    score = (base != refined).sum((1, 2)) if refined is not None else np.zeros(base.shape[0])
    if not score.any():
        score = (base > 0).sum((1, 2))
    return int(np.argmax(score))


def grey(image: np.ndarray) -> np.ndarray:
    """(Y, X) intensities -> (Y, X, 3) float RGB in 0..255, robust to outliers."""
    low, high = np.percentile(image, (1, 99)) if image.size else (0, 1)
    scaled = np.clip((image - low) / (high - low + 1e-8), 0, 1) * 255
    return np.repeat(scaled[..., None], 3, -1).astype(np.float32)


def paint(background: np.ndarray, segmentation: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend one colour per label over an RGB background."""
    out = background.copy()
    for value in np.unique(segmentation[segmentation > 0]):
        where = segmentation == value
        out[where] = (1 - alpha) * out[where] + alpha * CLASS_COLOURS[(int(value) - 1) % len(CLASS_COLOURS)]
    return out


def mark_changes(background: np.ndarray, base: np.ndarray, refined: np.ndarray,
                 label: Optional[np.ndarray]) -> np.ndarray:
    """Colour the cells the refinement changed: green where it fixed (or added), red where it broke (or removed)."""
    out = background.copy()
    changed = base != refined
    good = changed & (refined == label) if label is not None else changed & (refined > 0)
    bad = changed & (base == label) if label is not None else changed & (refined == 0)
    out[good], out[bad] = GOOD, BAD
    return out


def _panel(rgb: np.ndarray, title: str) -> Image.Image:
    scale = max(1, int(np.ceil(MIN_EDGE / max(rgb.shape[:2]))))
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).resize(
        (rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    framed = Image.new("RGB", (picture.width, picture.height + 16), "black")
    framed.paste(picture, (0, 16))
    ImageDraw.Draw(framed).text((3, 2), title, fill="white")
    return framed


def _row(panels: Sequence[Image.Image]) -> Image.Image:
    row = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panels[0].height), "gray")
    x = 0
    for p in panels:
        row.paste(p, (x, 0))
        x += p.width + 4
    return row


def write_overlay(path: str, image: Optional[np.ndarray], base: np.ndarray, refined: Optional[np.ndarray] = None,
                  label: Optional[np.ndarray] = None) -> str:
    """One PNG: [label], base and [refined, with changed cells marked] over the image; (Z, Y, X) arrays."""
    z = representative_slice(base, refined)
    background = grey(image[z]) if image is not None else np.zeros((*base.shape[1:], 3), np.float32)
    where = f" (slice {z})" if base.shape[0] > 1 else ""
    panels = [_panel(paint(background, label[z]), "label" + where)] if label is not None else []
    panels.append(_panel(paint(background, base[z]), "base" + where))
    if refined is not None:
        painted = mark_changes(paint(background, refined[z]), base[z], refined[z], None if label is None else label[z])
        caption = "refined: green fixed, red broken" if label is not None else "refined: green added, red removed"
        panels.append(_panel(painted, caption))
    with atomic_path(path, ".png") as tmp:
        _row(panels).save(tmp, format="PNG")
    return path


def write_uncertainty_picture(path: str, image: Optional[np.ndarray], uncertainty: np.ndarray,
                              segmentation: Optional[np.ndarray] = None) -> str:
    """One PNG of `<case>_uncertainty.npz`'s map (Z, Y, X) on the slice where it is highest: the image dimmed,
    the written `segmentation` faintly in its class colours, and the cells that stochastic rollouts disagree
    on in a heat colour (dark red a few runs, bright yellow all)."""
    from matplotlib import colormaps  # the colour map only: no pyplot, no backend switch

    uncertainty = np.asarray(uncertainty, np.float32)
    z = int(np.argmax(uncertainty.sum((1, 2))))
    background = grey(image[z]) * 0.4 if image is not None else np.zeros((*uncertainty.shape[1:], 3), np.float32)
    if segmentation is not None:
        background = paint(background, segmentation[z], alpha=0.35)
    share = np.clip(uncertainty[z], 0, 1)
    heat = colormaps["inferno"](0.3 + 0.7 * share)[..., :3].astype(np.float32) * 255
    shown = np.where((share > 0)[..., None], heat, background)
    where = f" (slice {z})" if uncertainty.shape[0] > 1 else ""
    panel = _panel(shown, f"unstable cells, max {share.max():.2f}" + where)
    with atomic_path(path, ".png") as tmp:
        panel.save(tmp, format="PNG")
    return path


def write_evolution(path: str, image: Optional[np.ndarray], frames: Sequence[np.ndarray],
                    final: Optional[np.ndarray] = None, milliseconds_per_step: int = 120) -> str:
    """An animated GIF over the image slice (Y, X): one (Y, X) label map per step, then the written `final`."""
    background = grey(image) if image is not None else np.zeros((*frames[0].shape, 3), np.float32)
    pictures: List[Image.Image] = [_panel(paint(background, f), f"step {i}") for i, f in enumerate(frames)]
    if final is not None:
        pictures.append(_panel(paint(background, final), "written (specks removed)"))
    with atomic_path(path, ".gif") as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], loop=0,
                         duration=[milliseconds_per_step] * (len(pictures) - 1) + [1500])
    return path


def plot_progress(path: str, validations: Sequence, losses: Sequence[float]) -> str:
    """Training loss and held-out beta0 error / Dice per validation (`ValidationResult`s)."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switched for the process

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    axes[0].plot(losses, alpha=0.3, label="loss")
    if len(losses) >= 20:
        axes[0].plot(np.convolve(losses, np.ones(20) / 20, mode="valid"), label="loss (mean of 20)")
    axes[0].set_xlabel("iteration"), axes[0].set_yscale("log"), axes[0].legend()
    if validations:
        its = [v.iteration for v in validations]
        for name in validations[0].after:
            axes[1].plot(its, [v.after[name]["beta0_error"] for v in validations], "o-", label=f"{name} beta0 err")
            axes[1].axhline(validations[0].before[name]["beta0_error"], ls="--", color="gray")
        twin = axes[1].twinx()
        for name in validations[0].after:
            twin.plot(its, [v.after[name]["dice"] for v in validations], "s:", label=f"{name} Dice")
        twin.set_ylabel("Dice"), twin.legend(loc="upper right")
        axes[1].set_xlabel("iteration"), axes[1].set_ylabel("held-out beta0 error (dashed: before)")
        axes[1].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
