"""Diagnosis of the loop (beta1) and piece (beta0) errors on TopoMortar: what kind each error is.

For the imperfect labels shipped with TopoMortar (`noisy`, `pseudo`) against the accurate ones, and
optionally for any folder of predicted segmentations (nnU-Net CV output, a refined folder) against a
label folder, every error is classified by `rnca_nnunet.experiments.topology_errors` (breaks merging loops, bridges
splitting them, filled and spurious holes, specks) and the mean per image is printed as a table.

    python benchmarks/topomortar_errors.py --source ../shared/data/TopoMortar --markdown benchmarks/TOPOMORTAR_ERRORS.md
    python benchmarks/topomortar_errors.py --predictions OUT_FOLDER --labels LABELS_FOLDER   # nnU-Net outputs
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import subfiles
from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

from provenance import provenance
from rnca_nnunet.files import atomic_path
from rnca_nnunet.experiments.topology_errors import loop_and_piece_errors
from rnca_nnunet.experiments.topomortar import IMPERFECT, read_label

COLUMNS = ["label_holes", "predicted_holes", "filled_holes", "filled_small_holes", "merged_loops_lost",
           "break_mortar_cells_median", "split_loops_added", "spurious_holes", "spurious_pinholes", "specks",
           "fragments_added"]


def mean_row(name: str, pairs: List[Tuple[np.ndarray, np.ndarray]]) -> str:
    counts = [loop_and_piece_errors(prediction, label) for prediction, label in pairs]
    return f"| {name} | {len(pairs)} | " + " | ".join(f"{np.mean([c[k] for c in counts]):.2f}" for k in COLUMNS) + " |"


def imperfect_label_rows(source: str, split: str, factor: int) -> List[str]:
    folder = os.path.join(source, "dataset", split)
    files = subfiles(os.path.join(folder, "accurate"), suffix=".png", join=False, sort=True)
    accurate = {f: read_label(os.path.join(folder, "accurate", f), factor) > 0 for f in files}
    return [mean_row(f"{split} {kind}, {512 // factor}x{512 // factor}",
                     [(read_label(os.path.join(folder, kind, f), factor) > 0, accurate[f]) for f in files])
            for kind in IMPERFECT]


def folder_row(predictions: str, labels: str) -> str:
    """Every segmentation in `predictions` that has a label of the same name, read with nnU-Net's reader; any
    label counts as foreground (the diagnosis is for binary networks such as mortar or vessels)."""
    names = [n for n in sorted(os.listdir(labels)) if os.path.isfile(os.path.join(predictions, n))]
    if not names:
        raise SystemExit(f"error: no file of {labels} has a namesake in {predictions}")
    ending = "." + names[0].split(".", 1)[1]
    reader = determine_reader_writer_from_file_ending(ending, os.path.join(labels, names[0]), verbose=False)()
    pairs = []
    for name in names:
        prediction, label = (reader.read_seg(os.path.join(f, name))[0] for f in (predictions, labels))
        for z in range(label.shape[1]):  # 2D cases are (1, 1, Y, X); volumes are diagnosed slice by slice
            pairs.append((prediction[0, z] > 0, label[0, z] > 0))
    return mean_row(os.path.basename(os.path.normpath(predictions)), pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="the TopoMortar folder: diagnose its noisy and pseudo labels")
    parser.add_argument("--downsample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--predictions", nargs="*", default=[], help="folders of predicted segmentations")
    parser.add_argument("--labels", default=None, help="the label folder for --predictions")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    if args.predictions and not (args.labels and os.path.isdir(args.labels)):
        parser.error(f"--predictions needs --labels, a folder of label files (got {args.labels!r})")
    if args.source and not os.path.isdir(os.path.join(args.source, "dataset", "val", "accurate")):
        parser.error(f"--source {args.source}: not the TopoMortar folder (no dataset/val/accurate in it)")
    if any(f < 1 for f in args.downsample):
        parser.error(f"--downsample {args.downsample}: factors must be whole numbers >= 1")
    rows: List[str] = []
    if args.source:
        for factor in args.downsample:
            for split in ("train", "val"):
                rows += imperfect_label_rows(args.source, split, factor)
                print(rows[-2] + "\n" + rows[-1], flush=True)
    for folder in args.predictions:
        rows.append(folder_row(folder, args.labels))
        print(rows[-1], flush=True)
    table = ("| masks | images | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 2) + "\n"
             + "\n".join(rows))
    write(args.markdown, table)


def write(path: Optional[str], table: str) -> None:
    if path:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as handle:
                handle.write(f"# TopoMortar: what the topology errors are\n\n{provenance()}\n\nGenerated by "
                             "`python benchmarks/topomortar_errors.py`; mean per image; classes defined in "
                             "`rnca_nnunet/experiments/topology_errors.py` (loops: 4-connected background holes; pieces: "
                             "8-connected foreground).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
