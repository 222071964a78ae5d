"""Generated nnU-Net raw datasets with realistic topological difficulty.

Vessel trees have thin, faint branches (a briefly trained nnU-Net breaks them) and
vessel-like distractor blobs (it adds specks); cardiac rings have a myocardium segment
with weak contrast (it opens the ring); brick walls (mesh2d) have dozens of loops, faint mortar
joints and cracked bricks (it merges and splits loops); cell membranes (membrane2d) are the same kind of
loop network with irregular cells, faint membranes and dark organelles. Everything is seeded, so tests are repeatable.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List, Optional, Tuple

import cc3d
import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from scipy import ndimage
from skimage.draw import disk, ellipse
from skimage.segmentation import find_boundaries

from rnca_nnunet.corrupt import corrupt_mask
from rnca_nnunet.data import TrainingCase
from rnca_nnunet.state import LabelSemantics, Normalisation, target_from_label

Case = Tuple[np.ndarray, np.ndarray]  # image (float32), label (uint8), same shape


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


def _draw_branch(label: np.ndarray, contrast: np.ndarray, rng: np.random.Generator,
                 start: np.ndarray, angle: float, radius: float, depth: int) -> None:
    """Random-walk one vessel from `start`, stamping disks; spawns thinner side branches."""
    size = np.array(label.shape)
    position = start.astype(float)
    strength = rng.uniform(0.45, 1.0) * min(1.0, 0.35 + radius / 2.0)
    length = int(rng.integers(size.min() // 3, size.min()))
    for step in range(length):
        angle += rng.normal(0, 0.12)
        position += np.array([np.sin(angle), np.cos(angle)])
        if np.any(position < 0) or np.any(position >= size):
            return
        rr, cc = disk(tuple(position), max(radius, 0.6), shape=label.shape)
        label[rr, cc] = 1
        contrast[rr, cc] = np.maximum(contrast[rr, cc], strength)
        if depth < 2 and step > 8 and rng.random() < 0.025:
            side = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
            _draw_branch(label, contrast, rng, position.copy(), side, radius * 0.7, depth + 1)


def vessel_case_2d(rng: np.random.Generator, size: int = 128) -> Case:
    """A branching vessel tree, darker than a textured, unevenly lit background."""
    label = np.zeros((size, size), np.uint8)
    contrast = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(2, 4))):
        if label.mean() > 0.1:
            break
        side = int(rng.integers(4))
        t = rng.uniform(0.2, 0.8) * size
        start, angle = [(np.array([0.0, t]), np.pi / 2), (np.array([size - 1.0, t]), -np.pi / 2),
                        (np.array([t, 0.0]), 0.0), (np.array([t, size - 1.0]), np.pi)][side]
        _draw_branch(label, contrast, rng, start, angle + rng.normal(0, 0.3), rng.uniform(1.4, 2.4), 0)
    distractors = np.zeros_like(contrast)
    for _ in range(int(rng.integers(4, 9))):
        centre = rng.uniform(0, size, 2)
        rr, cc = ellipse(centre[0], centre[1], rng.uniform(0.8, 2.0), rng.uniform(2.0, 4.5),
                         shape=label.shape, rotation=rng.uniform(0, np.pi))
        distractors[rr, cc] = rng.uniform(0.4, 0.8)
    yy, xx = np.mgrid[:size, :size] / size
    background = 0.25 * _smooth_noise(rng, label.shape, 6) + 0.3 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
    darkening = ndimage.gaussian_filter(contrast + distractors, 0.7)
    image = 1.0 + background - 1.1 * darkening + rng.normal(0, 0.18, label.shape)
    return image.astype(np.float32), label


def _cardiac_slice(rng: np.random.Generator, size: int, centre: np.ndarray, lv_radius: float,
                   thickness: float, rotation: float, weak_arc: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """One short-axis slice: LV blood pool (1), myocardium ring (2), RV crescent (3)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(rotation), np.sin(rotation)
    u, v = c * dy + s * dx, -s * dy + c * dx
    radial = np.sqrt((u / 1.0) ** 2 + (v / 0.85) ** 2)
    label = np.zeros((size, size), np.uint8)
    rv_centre_u, rv_centre_v = -0.2 * lv_radius, 1.35 * (lv_radius + thickness)
    rv = ((u - rv_centre_u) / (1.25 * lv_radius)) ** 2 + ((v - rv_centre_v) / (1.0 * lv_radius)) ** 2 < 1
    label[rv] = 3
    label[radial < lv_radius + thickness] = 2
    label[radial < lv_radius] = 1
    angle = np.arctan2(v, u)
    image = np.where(label == 0, 0.45, 0.0) + np.where((label == 1) | (label == 3), 0.95, 0.0)
    start, width = weak_arc
    in_arc = np.abs(np.angle(np.exp(1j * (angle - start)))) < width / 2
    myocardium = np.where(in_arc, 0.78, 0.2)
    image = np.where(label == 2, myocardium, image)
    return image.astype(np.float32), label


def cardiac_case(rng: np.random.Generator, size: int = 96, slices: int = 0) -> Case:
    """A 2D slice (slices=0) or a 3D stack tapering toward the apex, with a faint myocardium arc."""
    centre = size / 2 + rng.uniform(-size / 10, size / 10, 2)
    lv_radius = rng.uniform(0.11, 0.17) * size
    thickness = rng.uniform(0.05, 0.075) * size
    rotation = rng.uniform(0, 2 * np.pi)
    weak_arc = (rng.uniform(-np.pi, np.pi), rng.uniform(0.25, 0.7))
    if slices == 0:
        image, label = _cardiac_slice(rng, size, centre, lv_radius, thickness, rotation, weak_arc)
    else:
        stack = [_cardiac_slice(rng, size, centre, lv_radius * (1 - 0.5 * (z / slices) ** 2), thickness,
                                rotation, weak_arc) for z in range(slices)]
        image, label = np.stack([s[0] for s in stack]), np.stack([s[1] for s in stack])
    image = image + 0.08 * _smooth_noise(rng, image.shape, 4)
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 0.07, image.shape)
    return (image * rng.uniform(300, 700)).astype(np.float32), label


def mesh_case_2d(rng: np.random.Generator, size: int = 128) -> Case:
    """A brick wall: thin mortar lines (the label) enclosing many bricks (its holes, dozens of loops), as in
    TopoMortar. Some mortar joints are faint (a model breaks the loop there and merges two bricks) and some
    bricks carry a dark crack (a model bridges the brick and splits it)."""
    label = np.zeros((size, size), np.uint8)
    faint = np.zeros((size, size), np.float32)
    height, width = int(rng.integers(11, 16)), int(rng.integers(20, 30))
    mortar = int(rng.integers(2, 4))
    top = -int(rng.integers(0, height))
    for row, y in enumerate(range(top, size, height)):
        label[max(y, 0):max(y + mortar, 0)] = 1
        shift = (width // 2) * (row % 2) + int(rng.integers(-3, 4)) - width
        for x in range(shift, size, width):
            joint = (slice(max(y, 0), max(y + height, 0)), slice(max(x, 0), max(x + mortar, 0)))
            label[joint] = 1
            if rng.random() < 0.12:
                faint[joint] = 1
        if rng.random() < 0.15:
            faint[max(y, 0):max(y + mortar, 0), int(rng.integers(0, size)):][:, :width] = 1
    cracks = np.zeros((size, size), np.float32)
    bricks = cc3d.connected_components((label == 0).astype(np.uint8), connectivity=4)
    for brick in rng.choice(np.arange(1, bricks.max() + 1), size=int(bricks.max() // 8), replace=False):
        cells = np.argwhere(bricks == brick)
        (y0, x0), (y1, x1) = cells.min(0), cells.max(0)
        x = int(rng.integers(x0 + 3, max(x1 - 2, x0 + 4)))
        rows = np.arange(y0, y1 + 1)
        columns = np.clip(x + np.cumsum(rng.integers(-1, 2, len(rows))), x0, x1)
        cracks[rows, columns] = rng.uniform(0.5, 0.8)
    strength = label * np.where(faint > 0, rng.uniform(0.15, 0.3), 1.0)
    texture = 0.2 * _smooth_noise(rng, label.shape, 3) + 0.15 * _smooth_noise(rng, label.shape, 12)
    darkening = ndimage.gaussian_filter(strength + cracks, 0.6)
    image = 1.0 + texture - 0.9 * darkening + rng.normal(0, 0.12, label.shape)
    return image.astype(np.float32), label


def membrane_case_2d(rng: np.random.Generator, size: int = 128) -> Case:
    """Cell membranes as in electron microscopy: thin dark lines between irregular cells (a dense network of
    loops whose geometry is nothing like a brick wall), some membranes faint (a model breaks the loop and
    merges two cells), dark organelles inside cells (a model draws false membrane across a cell and splits
    it) and grainy cytoplasm, blurred and noisy. The second domain the mesh_2d preset must travel to."""
    cells_across = rng.uniform(4.5, 6.5)
    seeds = rng.uniform(0, size, (int(cells_across ** 2), 2))
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    warp = size / cells_across * 0.1
    coordinates = np.stack([yy + warp * _smooth_noise(rng, (size, size), 10),
                            xx + warp * _smooth_noise(rng, (size, size), 10)], -1)
    distances = np.linalg.norm(coordinates[:, :, None, :] - seeds[None, None], axis=-1)
    cells = cc3d.connected_components(np.argmin(distances, axis=-1) + 1, connectivity=4)
    boundary = find_boundaries(cells, connectivity=1, mode="thick")
    interior = np.bincount(cells[~boundary], minlength=cells.max() + 1)
    slivers = np.isin(cells, np.flatnonzero(interior < 20))  # all membrane: would leave a dangling line
    cells = cells[tuple(ndimage.distance_transform_edt(slivers, return_distances=False, return_indices=True))]
    boundary = find_boundaries(cells, connectivity=1, mode="thick")
    label = (ndimage.binary_dilation(boundary) if rng.random() < 0.3 else boundary).astype(np.uint8)
    faint = np.zeros((size, size), bool)
    membrane = np.argwhere(label)
    for centre in membrane[rng.choice(len(membrane), int(rng.integers(4, 9)), replace=False)]:
        faint[disk(tuple(centre), rng.uniform(4, 9), shape=label.shape)] = True
    strength = label * np.where(faint, rng.uniform(0.12, 0.3), rng.uniform(0.7, 1.0, (size, size)))
    organelles = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(6, 14))):
        centre = rng.uniform(0, size, 2)
        rr, cc = ellipse(centre[0], centre[1], rng.uniform(1.5, 3.0), rng.uniform(3.0, 8.0), shape=label.shape,
                         rotation=rng.uniform(0, np.pi))
        inside = label[rr, cc] == 0
        organelles[rr[inside], cc[inside]] = rng.uniform(0.6, 0.9)
    grain = 0.12 * _smooth_noise(rng, label.shape, 1) + 0.1 * _smooth_noise(rng, label.shape, 8)
    darkening = ndimage.gaussian_filter(strength + organelles, 0.8)
    image = 1.0 + grain - darkening + rng.normal(0, 0.1, label.shape)
    return (ndimage.gaussian_filter(image, 0.5) * 180).astype(np.float32), label


GENERATORS: Dict[str, Tuple[Callable[[np.random.Generator], Case], dict, Tuple[float, ...]]] = {
    "vessels2d": (vessel_case_2d, {"background": 0, "vessel": 1}, (0.05, 0.05)),
    "mesh2d": (mesh_case_2d, {"background": 0, "mortar": 1}, (0.1, 0.1)),
    "membrane2d": (membrane_case_2d, {"background": 0, "membrane": 1}, (0.01, 0.01)),
    "cardiac2d": (cardiac_case, {"background": 0, "LV": 1, "MYO": 2, "RV": 3}, (1.0, 1.0)),
    "cardiac3d": (lambda rng: cardiac_case(rng, size=48, slices=12),
                  {"background": 0, "LV": 1, "MYO": 2, "RV": 3}, (5.0, 1.25, 1.25)),
}


def corrupted_cases(kind: str, count: int, seed: int) -> List[TrainingCase]:
    """Generated cases whose base prediction is a synthetic corruption of the label (breaks, specks).

    They check a training recipe in minutes, without training nnU-Net first.
    """
    generate, labels, spacing = GENERATORS[kind]
    semantics, normalise = LabelSemantics(labels), Normalisation(["ZScoreNormalization"], {})
    rng, cases = np.random.default_rng(seed), []
    for index in range(count):
        image, label = generate(rng)
        if image.ndim == 2:
            image, label, spacing = image[None], label[None], (999.0, *spacing[-2:])
        target, valid = target_from_label(label, semantics)
        cases.append(TrainingCase(f"{kind}_corrupted_{seed}_{index:03d}", normalise(image[None]),
                                  corrupt_mask(target, rng), target, valid, tuple(spacing)))
    return cases


def _write(array: np.ndarray, spacing: Tuple[float, ...], path: str) -> None:
    """Write with SimpleITK; spacing is given in numpy axis order (z, y, x)."""
    itk = sitk.GetImageFromArray(array)
    itk.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(itk, path, useCompression=True)


def dataset_name(kind: str, dataset_id: int) -> str:
    """The raw dataset folder's name that `write_dataset` writes."""
    return f"Dataset{dataset_id:03d}_Synthetic{kind[0].upper()}{kind[1:]}"


def write_dataset(kind: str, raw_folder: str, dataset_id: int, cases: int, test_cases: int = 0,
                  seed: int = 0) -> str:
    """Write DatasetXXX_<Kind> (imagesTr/labelsTr, optional imagesTs/labelsTs) and return its folder."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic dataset '{kind}'; choose one of {sorted(GENERATORS)}")
    generate, labels, spacing = GENERATORS[kind]
    name = dataset_name(kind, dataset_id)
    folder = os.path.join(raw_folder, name)
    rng = np.random.default_rng(seed)
    for split, count in (("Tr", cases), ("Ts", test_cases)):
        if count == 0:
            continue
        maybe_mkdir_p(os.path.join(folder, f"images{split}"))
        maybe_mkdir_p(os.path.join(folder, f"labels{split}"))
        for index in range(count):
            image, label = generate(rng)
            case = f"{kind}_{split.lower()}_{index:03d}"
            _write(image, spacing, os.path.join(folder, f"images{split}", f"{case}_0000.nii.gz"))
            _write(label, spacing, os.path.join(folder, f"labels{split}", f"{case}.nii.gz"))
    channel = {"vessels2d": "fundus", "mesh2d": "photo", "membrane2d": "EM"}.get(kind, "MRI")
    generate_dataset_json(folder, {0: channel}, labels, cases,
                          ".nii.gz", dataset_name=name)
    return folder


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Write a generated nnU-Net raw dataset.")
    parser.add_argument("kind", choices=sorted(GENERATORS))
    parser.add_argument("--out", required=True, help="nnUNet_raw folder to write DatasetXXX_Name into")
    parser.add_argument("--id", type=int, default=990, help="dataset id (default 990)")
    parser.add_argument("--cases", type=int, default=40, help="training cases (imagesTr/labelsTr)")
    parser.add_argument("--test_cases", type=int, default=0, help="held-out cases (imagesTs/labelsTs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_dataset(args.kind, args.out, args.id, args.cases, args.test_cases, args.seed))


if __name__ == "__main__":
    main()
