"""Overlap, topology and surface metrics for binary masks, per class.

Conventions (stated because published numbers differ with them):
- Connectivity: 2D foreground 8 / background 4; 3D foreground 26 / background 6.
- beta0 = foreground components (connected-components-3d). 2D beta1 = background components not
  touching the image border. 3D: beta2 = such background cavities, beta1 = beta0 + beta2 - Euler
  characteristic (scikit-image, foreground 26-connectivity).
- ASSD = mean of all surface-to-surface distances of both directions pooled; HD95 = the larger of the
  two directed 95th percentiles. Both in physical units from the spacing.
- Signed errors (beta0_signed, beta1_signed): prediction minus label, so components or holes added count
  up and lost ones down; their mean shows which way a method errs, which the absolute errors hide.
- Broken: a case whose topology is not the label's. Its Betti numbers differ, or its components and its
  background regions (holes, cavities, and the outside as one) do not pair one to one with the label's, each
  with the one it overlaps most. Equal counts are not enough: a brick opened to the image border and a bridge
  across another leave beta1 as it was, and such a case is not one nnU-Net got right. Handles (3D beta1) are
  compared by count only.
- Empty masks: Dice/clDice are 1 when both are empty, 0 when one is; surface distances are 0 when both
  are empty and the image diagonal when only one is. No metric returns NaN.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import cc3d
import numpy as np
from scipy import ndimage
from skimage.measure import euler_number
from skimage.morphology import skeletonize

from rnca_nnunet.topology import enclosed_background, matched_one_to_one


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def cl_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Centreline Dice (Shit et al. 2021) with scikit-image skeletons."""
    if not pred.any() and not ref.any():
        return 1.0
    if not pred.any() or not ref.any():
        return 0.0
    skel_pred, skel_ref = skeletonize(pred), skeletonize(ref)
    precision = np.logical_and(skel_pred, ref).sum() / max(int(skel_pred.sum()), 1)
    sensitivity = np.logical_and(skel_ref, pred).sum() / max(int(skel_ref.sum()), 1)
    return 0.0 if precision + sensitivity == 0 else float(2 * precision * sensitivity / (precision + sensitivity))


def _count_components(mask: np.ndarray, connectivity: int) -> int:
    return int(cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity).max())


def betti_numbers(mask: np.ndarray) -> Sequence[int]:
    """(beta0, beta1) for a 2D mask, (beta0, beta1, beta2) for a 3D mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        return _count_components(mask, 8), enclosed_background(mask, 4)[1]
    if mask.ndim != 3:
        raise ValueError(f"betti_numbers needs a 2D or 3D mask, got {mask.ndim}D")
    beta0 = _count_components(mask, 26)
    beta2 = enclosed_background(mask, 6)[1]
    euler = int(euler_number(mask, connectivity=3)) if mask.any() else 0
    return beta0, beta0 + beta2 - euler, beta2


def same_structure(pred: np.ndarray, ref: np.ndarray) -> bool:
    """Whether two binary masks' components and background regions (the outside as one) pair one to one
    (`topology.matched_one_to_one`): the right topology in the right places, not only the right counts."""
    fg, bg = (8, 4) if pred.ndim == 2 else (26, 6)
    pieces = [cc3d.connected_components(m.view(np.uint8), connectivity=fg) for m in (pred, ref)]
    regions = [cc3d.connected_components(np.pad(~m, 1, constant_values=True).view(np.uint8), connectivity=bg)
               for m in (pred, ref)]
    return matched_one_to_one(*pieces) and matched_one_to_one(*regions)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """ASSD and HD95 in the units of `spacing`."""
    if not pred.any() and not ref.any():
        return {"assd": 0.0, "hd95": 0.0}
    if not pred.any() or not ref.any():
        diagonal = float(np.linalg.norm(np.array(pred.shape) * np.array(spacing)))
        return {"assd": diagonal, "hd95": diagonal}
    surf_pred, surf_ref = _surface(pred), _surface(ref)
    to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=spacing)[surf_pred]
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)[surf_ref]
    return {"assd": float(np.concatenate([to_ref, to_pred]).mean()),
            "hd95": float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))}


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """All metrics of one class in one case; `spacing` matches the mask's axes."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    betti_pred, betti_ref = betti_numbers(pred), betti_numbers(ref)
    result = {"dice": dice(pred, ref), "cldice": cl_dice(pred, ref),
              "beta0_error": abs(betti_pred[0] - betti_ref[0]), "beta1_error": abs(betti_pred[1] - betti_ref[1]),
              "beta0_signed": betti_pred[0] - betti_ref[0], "beta1_signed": betti_pred[1] - betti_ref[1],
              "broken": float(tuple(betti_pred) != tuple(betti_ref) or not same_structure(pred, ref))}
    result.update(surface_distances(pred, ref, spacing))
    return result


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 classes: Dict[str, Sequence[int]]) -> Dict[str, Dict[str, float]]:
    """Per class metrics of label maps; `classes` maps a class name to the labels it is made of.

    Label maps of shape (1, Y, X) (nnU-Net's 2D layout) are evaluated as 2D.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim == 3 and pred.shape[0] == 1:
        pred, ref, spacing = pred[0], ref[0], spacing[-2:]
    return {name: binary_metrics(np.isin(pred, labels), np.isin(ref, labels), spacing)
            for name, labels in classes.items()}


def mean_metrics(per_case: Sequence[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Mean of each metric of each class over cases."""
    if not per_case:
        return {}
    return {name: {key: float(np.mean([case[name][key] for case in per_case])) for key in per_case[0][name]}
            for name in per_case[0]}


def topology_errors(metrics: Dict[str, float]) -> float:
    """beta0 + beta1 errors of one class in one case: what "made worse" compares."""
    return metrics["beta0_error"] + metrics["beta1_error"]


def harm_and_repair(pairs: Sequence[Tuple[Dict[str, float], Dict[str, float]]]) -> Dict[str, float]:
    """Over (before, after) metrics of one class in several cases: broken cases repaired, intact cases newly
    broken, and cases made worse (more beta0 + beta1 errors) or better, as counts and shares; `made_much_worse`
    counts cases with more than one error more, which the checkpoint and guard scores charge: one error either
    way is what one speck or pinhole makes, and on a few held-out cases it would decide alone."""
    broken = [not after["broken"] for before, after in pairs if before["broken"]]
    intact = [bool(after["broken"]) for before, after in pairs if not before["broken"]]
    change = [topology_errors(after) - topology_errors(before) for before, after in pairs]
    share = lambda flags: float(np.mean(flags)) if flags else 0.0  # noqa: E731
    return {"broken_before": len(broken), "repaired": int(sum(broken)), "repaired_share": share(broken),
            "intact_before": len(intact), "newly_broken": int(sum(intact)), "newly_broken_share": share(intact),
            "made_worse": int(sum(c > 0 for c in change)), "made_worse_share": share([c > 0 for c in change]),
            "made_much_worse": int(sum(c > 1 for c in change)), "made_much_worse_share": share([c > 1 for c in change]),
            "made_better": int(sum(c < 0 for c in change))}


def harm_line(rate: Dict[str, float]) -> str:
    """Repairs and harm of one class in words (`metrics.harm_and_repair`'s counts)."""
    return (f"{rate['repaired']} of {rate['broken_before']} broken cases repaired; "
            f"{rate['newly_broken']} of {rate['intact_before']} intact cases newly broken "
            f"({100 * rate['newly_broken_share']:.0f}%); {rate['made_worse']} cases made worse, "
            f"{rate['made_better']} better (beta0 + beta1 errors)")
