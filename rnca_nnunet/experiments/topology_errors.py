"""What each topology error of a 2D mask is: breaks, bridges, filled or spurious holes, specks.

Betti errors say how many loops or pieces are wrong, not why; a training recipe must follow from the why.
Holes (loops) are background components touching no border, 4-connected; pieces are 8-connected
foreground components, as in metrics.py. Holes of the prediction and of the label are matched by overlap:
- a label hole that no predicted hole overlaps was *filled*;
- a predicted hole overlapping k > 1 label holes *merged* them (a break in the wall between: k - 1 loops lost);
- a label hole overlapped by k > 1 predicted holes was *split* by a bridge (k - 1 loops added);
- a predicted hole overlapping no label hole is *spurious* (a pinhole in the wall).
Pieces: *specks* touch no label cell; a label piece overlapped by k > 1 predicted pieces is *fragmented*.
When the overlap graph has no cycle, beta1 error = |spurious + split - filled - merged|.
"""
from __future__ import annotations

from typing import Dict

import cc3d
import numpy as np

from rnca_nnunet.topology import enclosed_background, overlapping_pairs

PINHOLE = 16  # cells: holes smaller than this are counted apart (the read-out's clean-up can fill them)


def loop_and_piece_errors(prediction: np.ndarray, label: np.ndarray) -> Dict[str, float]:
    """Counts (and sizes in cells) of every kind of topology error of a 2D binary prediction against its label."""
    prediction, label = np.asarray(prediction, bool), np.asarray(label, bool)
    if prediction.ndim != 2:
        raise ValueError(f"loop_and_piece_errors is defined for 2D masks, got {prediction.ndim}D")
    label_holes, n_label = enclosed_background(label, 4)
    predicted_holes, n_predicted = enclosed_background(prediction, 4)
    pairs = overlapping_pairs(label_holes, predicted_holes)
    per_label = np.bincount(pairs[0], minlength=n_label + 1)[1:]
    per_predicted = np.bincount(pairs[1], minlength=n_predicted + 1)[1:]
    label_sizes = np.bincount(label_holes.ravel(), minlength=n_label + 1)[1:]
    predicted_sizes = np.bincount(predicted_holes.ravel(), minlength=n_predicted + 1)[1:]
    filled, spurious = per_label == 0, per_predicted == 0
    merged = per_predicted > 1
    merged_mortar = [int((label & (predicted_holes == i + 1)).sum()) for i in np.flatnonzero(merged)]
    pieces = cc3d.connected_components(prediction.astype(np.uint8), connectivity=8)
    label_pieces = cc3d.connected_components(label.astype(np.uint8), connectivity=8)
    piece_pairs = overlapping_pairs(label_pieces, pieces)
    touching = np.zeros(int(pieces.max()) + 1, bool)
    touching[piece_pairs[1]] = True
    per_label_piece = np.bincount(piece_pairs[0], minlength=int(label_pieces.max()) + 1)[1:]
    return {
        "label_holes": n_label, "predicted_holes": n_predicted,
        "filled_holes": int(filled.sum()), "filled_small_holes": int((filled & (label_sizes < PINHOLE)).sum()),
        "merged_loops_lost": int((per_predicted[merged] - 1).sum()),
        "break_mortar_cells_median": float(np.median(merged_mortar)) if merged_mortar else 0.0,
        "split_loops_added": int((per_label[per_label > 1] - 1).sum()),
        "spurious_holes": int(spurious.sum()), "spurious_pinholes": int((spurious & (predicted_sizes < PINHOLE)).sum()),
        "specks": int((~touching[1:]).sum()), "fragments_added": int((per_label_piece[per_label_piece > 1] - 1).sum()),
    }
