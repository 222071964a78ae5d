"""A refiner folder is swapped whole while others read it, and one training at a time writes into a model folder."""
import dataclasses
import threading
import time

import pytest
import torch

from rnca_nnunet.errors import InputError
from rnca_nnunet.files import folder_lock
from rnca_nnunet.refiner_folder import read_refiner, save_refiner
from test_refiner import random_refiner


def test_a_reader_never_pairs_one_refiners_json_with_anothers_weights(tmp_path):
    """Two refiners saved in turn into one folder while it is loaded: every load is one of them, whole (its
    steps in rnca.json match its weights), and none fails. Before the folder was exchanged in one step and
    read again when replaced, such loads found no rnca.json or paired one refiner's with the other's weights."""
    folder = str(tmp_path / "rnca")
    refiners = []
    for steps, value in ((10, 0.1), (20, 0.2)):
        refiner = random_refiner(2).replace(steps=steps)
        for weight in refiner.model.parameters():
            torch.nn.init.constant_(weight, value)
        refiners.append(refiner)
    save_refiner(refiners[0], folder)
    read_refiner(folder)  # imports done before the race starts
    stop, saves = threading.Event(), [0]

    def keep_saving():
        while not stop.is_set():
            save_refiner(refiners[saves[0] % 2], folder)
            saves[0] += 1
            time.sleep(0.05)  # a save every 50 ms: one load in a few overlaps one

    writer = threading.Thread(target=keep_saving)
    writer.start()
    seen, loads = set(), 0
    try:
        while saves[0] < 20 and loads < 5000:
            loaded = read_refiner(folder, torch.device("cpu"))
            value = float(loaded.model.update_out.weight.detach().flatten()[0])
            assert value == pytest.approx(loaded.steps / 100), "rnca.json and weights of different refiners"
            seen.add(loaded.steps)
            loads += 1
    finally:
        stop.set()
        writer.join()
    assert saves[0] >= 20 and loads >= 40 and seen == {10, 20}, (saves, loads, seen)


def test_a_second_training_into_a_locked_model_folder_stops_at_once(tmp_path):
    with folder_lock(str(tmp_path), "nnUNetv2_train_rnca"):
        with pytest.raises(InputError, match="another nnUNetv2_train_rnca is running in this folder") as error:
            with folder_lock(str(tmp_path), "nnUNetv2_train_rnca"):
                pass
        assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    with folder_lock(str(tmp_path), "nnUNetv2_train_rnca"):
        pass  # released when the first one ends
    assert list(tmp_path.iterdir()) == [], "the lock adds no file"


def test_read_out_fold_rules_load_checked_and_bad_fold_lists_stop_with_one_line(tmp_path):
    """A read-out fold's rule comes back as saved; one whose weights do not fit the shipped rule's shape, a
    case list that does not name K - 1 folds, or a case without a CV prediction is one error line."""
    from rnca_nnunet.refiner_folder import read_fold_rule, save_fold_rules
    from rnca_nnunet.run_training import _held_out_by_every_fold

    refiner = random_refiner(2)
    paths = save_fold_rules([refiner.model, random_refiner(2).model], str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["read_out_fold_2.safetensors", "read_out_fold_3.safetensors"]
    loaded = read_fold_rule(str(tmp_path), 2, refiner.model.shape)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), refiner.model.state_dict().values()))
    wider = dataclasses.replace(refiner.model.shape, update_width=refiner.model.shape.update_width + 1)
    with pytest.raises(InputError, match="read_out_fold_3.safetensors: weights do not fit"):
        read_fold_rule(str(tmp_path), 3, wider)
    for cases, message in (([["a"], ["b"], ["c"]], "must list the case names each of at most 2 other"),
                           ([["a"], []], "must list"), ([["a"], ["a"]], "a case is held out twice"),
                           ([["a"], ["b"]], r"read-out fold cases \['a', 'b'\] .* have no CV prediction")):
        kept = refiner.replace(trained_on={"read_out_fold_cases": cases})
        with pytest.raises(InputError, match=message) as error:
            _held_out_by_every_fold(kept, str(tmp_path), [], [], 3, str(tmp_path / "work"), print)
        assert "\n" not in str(error.value)
