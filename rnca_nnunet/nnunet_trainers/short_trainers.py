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
