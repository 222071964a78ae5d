"""Short nnU-Net trainers for tests and the demo, found through nnU-Net's `nnUNet_extTrainer` variable."""
import os

TRAINER_FOLDER = os.path.dirname(os.path.abspath(__file__))
