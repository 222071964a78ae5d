"""TopoMortar -> nnU-Net raw dataset, like nnU-Net's own dataset_conversion scripts.

TopoMortar (Valverde et al. 2025, MIT licence) holds 512x512 RGB photographs of brick walls with the
mortar network labelled. The train split (50) becomes imagesTr/labelsTr, the val split (20)
imagesTs/labelsTs, from the accurate labels. The imperfect `noisy` and `pseudo` labels go to
labelsTr_<kind>/labelsTs_<kind> (nnU-Net ignores them): ready-made (imperfect mask, label) pairs.
`--downsample 2` halves the resolution for CPU runs. The data is read from the user's copy, never shipped.

    python -m rnca_nnunet.experiments.topomortar --source ../shared/data/TopoMortar --out $nnUNet_raw --id 950
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p, subfiles
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from skimage import io
from skimage.transform import downscale_local_mean

from rnca_nnunet.data import TrainingCase
from rnca_nnunet.errors import InputError
from rnca_nnunet.files import atomic_path
from rnca_nnunet.state import Normalisation

SPLITS = {"train": "Tr", "val": "Ts"}
IMPERFECT = ("noisy", "pseudo")


def _save(array: np.ndarray, path: str) -> None:
    with atomic_path(path) as tmp:
        io.imsave(tmp, array, check_contrast=False)


def read_label(path: str, factor: int) -> np.ndarray:
    """A TopoMortar label PNG as 0/1, downsampled by `factor` (a cell is mortar where most of it was)."""
    mask = io.imread(path) > 127
    if factor > 1:
        mask = downscale_local_mean(mask.astype(np.float32), (factor, factor)) >= 0.5
    return mask.astype(np.uint8)


def convert(source: str, raw_folder: str, dataset_id: int = 950, downsample: int = 1) -> str:
    """Write DatasetXXX_TopoMortar (accurate labels, plus the imperfect ones beside them); returns its folder."""
    dataset_root = os.path.join(source, "dataset")
    if not os.path.isdir(os.path.join(dataset_root, "train", "images")):
        raise InputError(f"{dataset_root}/train/images not found: --source must be the TopoMortar folder "
                         f"holding dataset/train and dataset/val")
    name = f"Dataset{dataset_id:03d}_TopoMortar" + (f"x{downsample}" if downsample > 1 else "")
    folder = os.path.join(raw_folder, name)
    training_cases = 0
    for split, suffix in SPLITS.items():
        images = subfiles(os.path.join(dataset_root, split, "images"), suffix=".png", join=False, sort=True)
        for sub in ("images" + suffix, "labels" + suffix, *(f"labels{suffix}_{kind}" for kind in IMPERFECT)):
            maybe_mkdir_p(os.path.join(folder, sub))
        for file in images:
            case = f"topomortar_{file[:-4]}"
            image = io.imread(os.path.join(dataset_root, split, "images", file))[..., :3]
            if downsample > 1:
                image = downscale_local_mean(image.astype(np.float32), (downsample, downsample, 1)).round()
            _save(image.astype(np.uint8), os.path.join(folder, "images" + suffix, f"{case}_0000.png"))
            _save(read_label(os.path.join(dataset_root, split, "accurate", file), downsample),
                  os.path.join(folder, "labels" + suffix, f"{case}.png"))
            for kind in IMPERFECT:
                _save(read_label(os.path.join(dataset_root, split, kind, file), downsample),
                      os.path.join(folder, f"labels{suffix}_{kind}", f"{case}.png"))
        training_cases += len(images) if suffix == "Tr" else 0
    generate_dataset_json(folder, {0: "R", 1: "G", 2: "B"}, {"background": 0, "mortar": 1}, training_cases,
                          ".png", dataset_name=name, licence="MIT (TopoMortar, Valverde et al. 2025)")
    return folder


def imperfect_label_cases(folder: str, suffix: str, kind: str, normalisation: Normalisation) -> List[TrainingCase]:
    """(image, imperfect label as the base mask, accurate label) of a converted split ("Tr" or "Ts")."""
    reader, cases = NaturalImage2DIO(), []
    for label_file in subfiles(os.path.join(folder, "labels" + suffix), suffix=".png", sort=True):
        case = os.path.basename(label_file)[:-4]
        image, properties = reader.read_images([os.path.join(folder, "images" + suffix, f"{case}_0000.png")])
        label, _ = reader.read_seg(label_file)
        imperfect, _ = reader.read_seg(os.path.join(folder, f"labels{suffix}_{kind}", f"{case}.png"))
        cases.append(TrainingCase(case, normalisation(image), (imperfect > 0).astype(np.float32),
                                  (label > 0).astype(np.float32), np.ones(label.shape[1:], np.float32),
                                  tuple(float(x) for x in properties["spacing"])))
    return cases


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert TopoMortar into an nnU-Net raw dataset.")
    parser.add_argument("--source", required=True, help="the TopoMortar folder (holding dataset/train, dataset/val)")
    parser.add_argument("--out", required=True, help="nnUNet_raw folder to write DatasetXXX_TopoMortar into")
    parser.add_argument("--id", type=int, default=950)
    parser.add_argument("--downsample", type=int, default=1, help="integer factor; 2 gives 256x256 for CPU runs")
    args = parser.parse_args(argv)
    print(convert(args.source, args.out, args.id, args.downsample))


if __name__ == "__main__":
    main()
