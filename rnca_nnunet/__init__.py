"""rnca-nnunet: refinement Neural Cellular Automata that repair topology in nnU-Net v2 predictions."""
__version__ = "0.1.0"
