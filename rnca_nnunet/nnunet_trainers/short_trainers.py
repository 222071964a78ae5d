"""Real nnU-Net training, only shorter, so a CPU can make imperfect cross-validation predictions.

Use them by name (`-tr nnUNetTrainer_rncaDemo`) with `nnUNet_extTrainer` pointing at this folder.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_rncaTest(nnUNetTrainer):
    """A few dozen iterations: fragmented masks, seconds per fold."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 12
        self.num_val_iterations_per_epoch = 2


class nnUNetTrainer_rncaDemo(nnUNetTrainer):
    """A couple of minutes per fold on CPU: good overlap, typical topological errors."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 6
        self.num_iterations_per_epoch = 25
        self.num_val_iterations_per_epoch = 4


class _LongerDemo(nnUNetTrainer_rncaDemo):
    """The demo's epochs times `multiple`, for benchmark bases stronger than the demo's (a refiner must do no
    harm on a model that gets most cases right). A checkpoint every 5 epochs, so nnU-Net's `--c` resumes a
    stopped fold."""

    multiple = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs *= self.multiple
        self.save_every = 5


class nnUNetTrainer_rncaDemo5x(_LongerDemo):
    """750 iterations: 30 epochs of the demo's 25 (about 12 minutes a fold at 256x256 on 2 CPU cores)."""

    multiple = 5


class nnUNetTrainer_rncaDemo10x(_LongerDemo):
    """1500 iterations: 60 epochs of the demo's 25 (25-40 minutes a fold at 256x256 on 2 CPU cores)."""

    multiple = 10


class nnUNetTrainer_rncaDemo20x(_LongerDemo):
    """3000 iterations: 120 epochs of the demo's 25 (50-75 minutes a fold at 256x256 on 2 CPU cores)."""

    multiple = 20
