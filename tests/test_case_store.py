"""Cases on disk train exactly as cases in memory, and a stored case holds no array in memory."""
import numpy as np
import torch

from rnca_nnunet.case_store import store_case
from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.config import load_preset
from rnca_nnunet.model import RNCA, RuleShape
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.sampling import PatchSampler
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.experiments.synthetic import GENERATORS, corrupted_cases
from rnca_nnunet.validation import refine_cases, validate


def test_stored_cases_sample_and_validate_like_cases_in_memory(tmp_path):
    cases = corrupted_cases("cardiac2d", 3, seed=5)
    stored = [store_case(case, str(tmp_path / "cases"), 2) for case in cases]
    assert not any(isinstance(v, np.ndarray) for case in stored for v in vars(case).values())
    config = load_preset("cardiac_2d")
    batches = []
    for source in (cases, stored):
        np.random.seed(0)  # batchgenerators' mirroring draws from numpy's global generator
        batches.append(PatchSampler(source, 2, config, np.random.default_rng(1)).sample(6))
    for key in batches[0]:
        np.testing.assert_array_equal(batches[0][key], batches[1][key])
    semantics = LabelSemantics(GENERATORS["cardiac2d"][1])
    torch.manual_seed(0)
    model = RNCA(RuleShape(2, 1 + semantics.mask_channels, semantics.mask_channels, 4, 16))
    torch.nn.init.normal_(model.update_out.weight, std=0.1)
    refiner = RNCARefiner(model, semantics, Normalisation(["ZScoreNormalization"], {}), 8, {}, torch.device("cpu"),
                          clean_up=CleanUp(4, 4))
    in_memory = validate(refiner, cases, 0)
    on_disk = validate(refiner, stored, 0, refine_cases(refiner, stored, str(tmp_path / "maps")))
    assert in_memory.per_case == on_disk.per_case
    assert in_memory.before != in_memory.after, "the rule must change something for the test to mean anything"
