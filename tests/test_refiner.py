"""The refiner on its own: exact tiling, 2D/3D, weight files that are data, clear errors."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from rnca_nnunet.cleanup import CleanUp
from rnca_nnunet.cpu_memory import reuse_freed_memory
from rnca_nnunet.errors import InputError
from rnca_nnunet.model import RNCA, RuleShape, memory_format
from rnca_nnunet.device_policy import default_precision
from rnca_nnunet.refiner import RNCARefiner
from rnca_nnunet.state import LabelSemantics, Normalisation
from rnca_nnunet.tiling import TilePlan, plan_tiles
from rnca_nnunet.refiner_folder import read_refiner, save_refiner

LABELS = {"background": 0, "LV": 1, "MYO": 2}


def random_refiner(ndim: int) -> RNCARefiner:
    torch.manual_seed(0)
    model = RNCA(RuleShape(ndim=ndim, context_channels=1 + 2, mask_channels=2, hidden_channels=4, update_width=16))
    torch.nn.init.normal_(model.update_out.weight, std=0.2)
    return RNCARefiner(model, LabelSemantics(LABELS), Normalisation(["ZScoreNormalization"], {}), steps=6,
                       trained_on={"dataset": "Dataset001_X", "configuration": "2d"}, device=torch.device("cpu"))


def random_case(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(1, *shape)).astype(np.float32)
    logits = rng.normal(size=(3, *shape)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    return image, probabilities.astype(np.float32)


@pytest.mark.parametrize("ndim, shape, plan", [(2, (3, 40, 52), TilePlan(2, (17, 23))),
                                               (3, (20, 24, 28), TilePlan(1, (9, 11, 13)))])
def test_tiled_refinement_equals_untiled(ndim, shape, plan):
    refiner = random_refiner(ndim)
    image, probabilities = random_case(shape)
    context = np.concatenate([refiner.normalisation(image), probabilities[1:]])
    whole, _ = refiner.refine_context(context, 6, stop_when_stable=False)
    tiled, _ = refiner.refine_context(context, 6, stop_when_stable=False, plan=plan)
    initial = probabilities[1:]
    assert np.abs(whole - initial).max() > 1e-2, "the rule must change something for the test to mean anything"
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert np.array_equal(tiled > 0.5, whole > 0.5)


def test_save_and_load_round_trip(tmp_path):
    refiner = random_refiner(2).replace(clean_up=CleanUp(4, 8, 1.5, guard=0.8, unrefined_labels=(2,),
                                                         fall_back_above=0.75, fill_joined_pinholes=True))
    save_refiner(refiner, str(tmp_path / "rnca"))
    loaded = read_refiner(str(tmp_path / "rnca"), torch.device("cpu"))
    assert loaded.clean_up == CleanUp(4, 8, 1.5, guard=0.8, unrefined_labels=(2,), fall_back_above=0.75,
                                      fill_joined_pinholes=True)
    image, probabilities = random_case((1, 32, 32))
    a, seg_a, _ = refiner.refine(image, probabilities)
    b, seg_b, _ = loaded.refine(image, probabilities)
    np.testing.assert_array_equal(seg_a, seg_b)
    np.testing.assert_allclose(a, b)
    assert seg_a.shape == (1, 32, 32) and set(np.unique(seg_a)) <= {0, 1, 2}
    assert b.shape == probabilities.shape and np.allclose(b.sum(0), 1, atol=1e-5)


def test_saving_again_replaces_the_folder_whole(tmp_path):
    refiner = random_refiner(2)
    save_refiner(refiner, str(tmp_path / "rnca"))
    (tmp_path / "rnca" / "stale.txt").write_text("old")
    save_refiner(refiner, str(tmp_path / "rnca"))
    assert sorted(os.listdir(tmp_path / "rnca")) == ["refiner.safetensors", "rnca.json"]
    assert sorted(os.listdir(tmp_path)) == ["rnca"]


def test_weights_are_never_unpickled(tmp_path):
    refiner = random_refiner(2)
    save_refiner(refiner, str(tmp_path / "rnca"))
    torch.save(refiner.model.state_dict(), tmp_path / "rnca" / "refiner.safetensors")
    with pytest.raises(InputError, match="refiner.safetensors: weights do not fit"):
        read_refiner(str(tmp_path / "rnca"))


def test_config_and_weights_must_match(tmp_path):
    save_refiner(random_refiner(2), str(tmp_path / "rnca"))
    config = json.load(open(tmp_path / "rnca" / "rnca.json"))
    config["rule"]["hidden_channels"] = 7
    json.dump(config, open(tmp_path / "rnca" / "rnca.json", "w"))
    with pytest.raises(InputError) as error:
        read_refiner(str(tmp_path / "rnca"))
    assert "\n" not in str(error.value) and "copy the whole rnca/ folder" in str(error.value)


def test_missing_folder_and_wrong_channels_are_clear(tmp_path):
    with pytest.raises(InputError, match="nnUNetv2_train_rnca"):
        read_refiner(str(tmp_path / "nothing"))
    image, probabilities = random_case((1, 16, 16))
    with pytest.raises(InputError, match="channel"):
        random_refiner(2).refine(image, probabilities[:2])


def test_stable_masks_stop_early():
    refiner = random_refiner(2)
    torch.nn.init.zeros_(refiner.model.update_out.weight)
    refiner = refiner.replace(steps=64)
    image, probabilities = random_case((1, 24, 24))
    _, _, used = refiner.refine(image, probabilities)
    assert used == 16


def test_read_out_clean_up_changes_segmentation_and_probabilities_alike():
    refiner = random_refiner(2).replace(clean_up=CleanUp(3, 2))
    mask = np.zeros((2, 1, 12, 12), np.float32)
    mask[0, 0, 1:5, 1:5] = 0.9  # LV block of 16 cells with a one-cell pinhole: kept, hole filled
    mask[0, 0, 2, 2] = 0.1
    mask[1, 0, 8, 8] = mask[1, 0, 9, 9] = 0.8  # MYO pair of 2 cells touching diagonally: removed
    mask[1, 0, 5, 5] = 0.9  # a lone MYO cell touching the LV block: its own label, removed
    segmentation = refiner.segment(mask, mask)
    assert (segmentation == 1).sum() == 16 and (segmentation == 2).sum() == 0
    torch.nn.init.zeros_(refiner.model.update_out.weight)  # the rule keeps the mask: only the read-out acts
    probabilities, written, _ = refiner.refine(np.zeros((1, 1, 12, 12), np.float32),
                                               np.concatenate([1 - mask.sum(0, keepdims=True), mask]), steps=1)
    np.testing.assert_array_equal(written, segmentation)
    np.testing.assert_array_equal(probabilities.argmax(0), segmentation, "probabilities agree with the labels")
    refiner = refiner.replace(clean_up=CleanUp(2, 0))
    assert (refiner.segment(mask, mask) == 2).sum() == 2 and refiner.segment(mask, mask)[0, 2, 2] == 0


@pytest.mark.parametrize("ndim, shape, z", [(2, (5, 20, 24), 3), (3, (30, 16, 20), 21)])
def test_evolution_ends_where_refinement_ends(ndim, shape, z):
    refiner = random_refiner(ndim)
    image, probabilities = random_case(shape)
    _, segmentation, used = refiner.refine(image, probabilities, steps=5, stop_when_stable=False)
    frames = refiner.evolution(image, probabilities, z, used)
    assert len(frames) == used + 1
    np.testing.assert_array_equal(frames[0], probabilities[:, z].argmax(0))
    np.testing.assert_array_equal(frames[-1], segmentation[z])
    assert not np.array_equal(frames[0], frames[-1]), "the rule must change the slice for the test to mean anything"


@pytest.mark.parametrize("ndim, shape, budget", [(3, (60, 64, 68), 30 ** 3), (2, (10, 40, 40), 5000)])
def test_automatic_tiles_fit_the_budget_and_change_nothing(ndim, shape, budget):
    """Several tiles per axis (3D) or chunks of slices (2D rule on a volume), each tile with its halo within
    the cell budget, the same plan for a case 8x as large, and the untiled result exactly."""
    refiner = random_refiner(ndim)
    image, probabilities = random_case(shape)
    context = np.concatenate([refiner.normalisation(image), probabilities[1:]])
    whole, _ = refiner.refine_context(context, 3, stop_when_stable=False)
    halo = refiner.model.receptive_radius(3)
    batch, spatial = (shape[0], shape[1:]) if ndim == 2 else (1, shape)
    plan = plan_tiles(batch, spatial, halo, budget)
    outer = np.prod([min(c + 2 * halo, s) for c, s in zip(plan.core, spatial)])
    assert plan.slices_per_chunk * outer <= budget
    if ndim == 3:
        assert all(s / c >= 3 for s, c in zip(spatial, plan.core)), plan
    else:
        assert plan == TilePlan(3, (40, 40))
    larger = plan_tiles(batch * 2, [2 * s for s in spatial], halo, budget)
    assert larger.slices_per_chunk * np.prod([min(c + 2 * halo, 2 * s) for c, s in zip(larger.core, spatial)]) <= budget
    tiled, used = refiner.replace(max_tile_cells=budget).refine_context(context, 3, stop_when_stable=True)
    assert used == 3, "tiles run the full step count"
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert np.array_equal(tiled > 0.5, whole > 0.5)


@pytest.mark.parametrize("ndim, shape", [(2, (6, 48, 40)), (3, (30, 36, 40))])
def test_only_the_reachable_region_runs_and_the_result_is_unchanged(ndim, shape, monkeypatch):
    """A small structure in a large case (a heart in a CT, slices without foreground): the rule runs on the box
    it can reach from its alive cells, and every cell comes out as when the whole case is run."""
    refiner = random_refiner(ndim)
    image, probabilities = random_case(shape)
    probabilities[1:] *= 0.05  # background everywhere ...
    probabilities[1:, 2:4, 20:26, 15:19] = [[[[0.7]]], [[[0.2]]]]  # ... but one small LV block on two slices
    probabilities[0] = 1 - probabilities[1:].sum(0)
    context = np.concatenate([refiner.normalisation(image), probabilities[1:]])
    batch = np.moveaxis(context, 1, 0) if ndim == 2 else context[None]
    ran = []
    run = RNCARefiner._run
    monkeypatch.setattr(RNCARefiner, "_run", lambda self, part, *args, **kwargs: ran.append(part.shape) or
                        run(self, part, *args, **kwargs))
    cropped, _ = refiner.refine_context(context, 6, stop_when_stable=False)
    whole, _ = run(refiner, np.ascontiguousarray(batch), 6, False)
    whole = np.moveaxis(whole, 0, 1) if ndim == 2 else whole[0]
    margin = refiner.model.growth_radius(6)
    expected = (2, 3, 6 + 2 * margin, 4 + 2 * margin) if ndim == 2 else (1, 3, 2 + 2 + margin, 6 + 2 * margin,
                                                                          4 + 2 * margin)
    assert ran == [expected]
    assert np.abs(whole - probabilities[1:]).max() > 1e-2, "the rule must change something for the test to mean anything"
    np.testing.assert_allclose(cropped, whole, atol=1e-6)
    assert np.array_equal(cropped > 0.5, whole > 0.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_accepts_the_rollouts_malloc_thresholds():
    """glibc accepts both thresholds (a wrong parameter number makes mallopt return 0)."""
    assert reuse_freed_memory()


def test_a_refiner_that_keeps_the_base_loops_matches_the_base_background_regions_one_to_one():
    from rnca_nnunet.cleanup import CleanUp, loop_mismatches

    refiner = random_refiner(2)
    torch.nn.init.normal_(refiner.model.update_out.weight, std=1.0)  # a rule that rewrites much of the mask
    image, probabilities = random_case((1, 48, 48), seed=3)
    base = probabilities.argmax(0)
    _, free, _ = refiner.refine(image, probabilities)
    assert loop_mismatches(free, base, True) > 0, "the rule must change loops for the test to mean anything"
    refined, kept, _ = refiner.replace(clean_up=CleanUp(guard=0.0)).refine(image, probabilities)
    assert loop_mismatches(kept, base, True) == 0
    assert (kept != base).any(), "outlines may still change"
    np.testing.assert_array_equal(refined.argmax(0), kept, "probabilities agree with the labels")


def test_instability_is_seeded_bounded_and_zero_for_a_rule_that_changes_nothing():
    refiner = random_refiner(2)
    image, probabilities = random_case((1, 32, 32))
    _, segmentation, used = refiner.refine(image, probabilities)
    first = refiner.instability(image, probabilities, segmentation, used, runs=4)
    again = refiner.instability(image, probabilities, segmentation, used, runs=4)
    np.testing.assert_array_equal(first.map, again.map)
    assert first.map.shape == segmentation.shape and 0 <= first.map.min() and first.map.max() <= 1
    assert first.cells > 0, "a random rule fired at random must disagree somewhere"
    assert 0 <= first.topology <= 1 and first.topology * 4 == round(first.topology * 4), first.topology
    torch.nn.init.zeros_(refiner.model.update_out.weight)
    _, segmentation, used = refiner.refine(image, probabilities)
    still = refiner.instability(image, probabilities, segmentation, used, runs=4)
    assert still.cells == 0 and still.topology == 0 and not still.map.any()


@pytest.mark.parametrize("instructions, expected", [({}, None), ({"_is_avx512_bf16_supported": False}, None),
                                                    ({"_is_avx512_bf16_supported": True}, torch.bfloat16),
                                                    ({"_is_amx_tile_supported": True}, torch.bfloat16)])
def test_the_cpu_runs_bfloat16_only_where_it_has_bfloat16_instructions(monkeypatch, instructions, expected):
    """Emulated bfloat16 ran a 256x256 step 7x slower than float32 on an AVX2 CPU; a PyTorch without the
    private checks (the empty case) gets float32, which is never wrong."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if name in instructions:
            monkeypatch.setattr(torch.cpu, name, lambda value=instructions[name]: value, raising=False)
        else:
            monkeypatch.delattr(torch.cpu, name, raising=False)
    assert default_precision(torch.device("cpu")) == expected
    assert default_precision(torch.device("cuda")) == torch.float16


def test_a_refiner_never_changes_and_replace_leaves_it_as_it_was():
    """Settings are changed by making another refiner: one shared by a predictor, a search and a test stays the
    same everywhere (the clean-up too), and a changed layout gets its own copy of the weights."""
    from dataclasses import FrozenInstanceError

    refiner = random_refiner(2)
    with pytest.raises(AttributeError, match=r"replace\(steps=...\)"):
        refiner.steps = 64
    with pytest.raises(FrozenInstanceError):
        refiner.clean_up.guard = 0.5
    with pytest.raises(TypeError, match="settings"):
        refiner.replace(stpes=3)
    other = refiner.replace(clean_up=CleanUp(guard=0.0), steps=3, channels_last=not refiner.channels_last,
                            precision="float32")
    assert (other.steps, other.clean_up.guard, other.precision) == (3, 0.0, "float32")
    assert (refiner.steps, refiner.clean_up) == (6, CleanUp())
    assert other.model is not refiner.model and other.channels_last != refiner.channels_last
    assert refiner.replace(steps=3).model is refiner.model, "same device and layout: the weights are shared"
    assert other.replace(steps=4).precision == "float32", "a precision asked for stays asked for"
    image, probabilities = random_case((1, 24, 24))
    np.testing.assert_array_equal(refiner.refine(image, probabilities)[1],
                                  random_refiner(2).refine(image, probabilities)[1])


def test_replace_leaves_the_device_defaults_to_the_device(monkeypatch):
    """A precision or layout nobody asked for is the device's default in the new refiner too (moved to CUDA it
    gets CUDA's, not the CPU's); one asked for is kept. Here the default changes under the refiner instead."""
    import rnca_nnunet.refiner as refiner_module

    defaulted, asked = random_refiner(2), random_refiner(2).replace(channels_last=True)
    assert defaulted.channels_last and asked.channels_last, "the CPU's default is channels-last"
    monkeypatch.setattr(refiner_module, "default_channels_last", lambda device: False)
    assert not defaulted.replace(steps=3).channels_last
    assert asked.replace(steps=3).channels_last


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_rule_gives_the_same_states_and_gradients_in_either_layout(ndim):
    """Channels-last runs the update as matrix products over the cells, the other layout as convolutions:
    the two must be one rule, in inference, in stochastic firing and in training's gradients."""
    torch.manual_seed(0)
    shape = RuleShape(ndim=ndim, context_channels=3, mask_channels=2, hidden_channels=4, update_width=16)
    model = RNCA(shape)
    torch.nn.init.normal_(model.update_out.weight, std=0.3)
    spatial = (12, 10) if ndim == 2 else (6, 8, 7)
    mask, context = torch.rand(2, 2, *spatial), torch.rand(2, 3, *spatial)
    results = []
    for channels_last in (True, False):
        layout = memory_format(ndim, channels_last)
        model.to(memory_format=layout)
        model.zero_grad()
        state = model.initial_state(mask, layout)
        assert state.is_contiguous(memory_format=layout)
        final, _ = model.rollout(state, context.contiguous(memory_format=layout), 6, 0.5,
                                 generator=torch.Generator().manual_seed(1))
        final.square().sum().backward()
        results.append((final.detach().contiguous(), model.update_in.weight.grad.clone()))
    (states, gradients), (states_other, gradients_other) = results
    assert states.abs().max() > 0.05, "the rule must change the state for the test to mean anything"
    torch.testing.assert_close(states, states_other, rtol=1e-5, atol=1e-5)
    # float32 sums over the cells in another order: on an AMD EPYC one weight of 768 differed by 2e-5 (2e-4
    # relative, the largest being 1.3e4); a different rule would differ by the gradients' own scale
    scale = gradients.abs().max().item()
    torch.testing.assert_close(gradients, gradients_other, rtol=1e-4, atol=1e-6 * scale)
