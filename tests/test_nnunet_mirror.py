"""The copies of nnU-Net in nnunet_mirror.py against the installed nnunetv2 (CI runs these against the oldest
and the newest release setup.cfg admits): a release that changes what we copy fails here, by name."""
import argparse
import hashlib
import inspect

import pytest
from nnunetv2.inference import predict_from_raw_data
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from rnca_nnunet.cli import predict_parser
from rnca_nnunet.nnunet_mirror import NNUNET_RELEASES_MIRRORED, add_nnunet_predict_arguments

# sha256 of the source of each nnU-Net function copied or followed, as in the releases mirrored
MIRRORED_SOURCES = {
    "predict_from_raw_data.predict_entry_point":
        (predict_from_raw_data.predict_entry_point, "4290d5ed17ad3519"),
    "nnUNetPredictor.predict_from_files_sequential":
        (nnUNetPredictor.predict_from_files_sequential, "5a962370493dc0ec"),
    "nnUNetPredictor.predict_from_data_iterator":
        (nnUNetPredictor.predict_from_data_iterator, "aa3d39686c5c558f"),
    "predict_from_raw_data._getDefaultValue":
        (predict_from_raw_data._getDefaultValue, "fe242ced43fa4b10"),
}


def nnunet_predict_parser(monkeypatch) -> argparse.ArgumentParser:
    """nnUNetv2_predict's own parser: its entry point runs up to parse_args, which hands the parser over."""
    class HandedOver(Exception):
        pass

    def hand_over(parser, *args, **kwargs):
        raise HandedOver(parser)

    with monkeypatch.context() as patched, pytest.raises(HandedOver) as handed_over:
        patched.setattr(argparse.ArgumentParser, "parse_args", hand_over)
        predict_from_raw_data.predict_entry_point()
    return handed_over.value.args[0]


def described(parser: argparse.ArgumentParser) -> dict:
    """Everything of each argument that changes what a command line means (not its help)."""
    return {action.dest: (tuple(action.option_strings), type(action).__name__, action.type, action.nargs,
                          action.const, action.default, action.required, action.choices)
            for action in parser._actions}


@pytest.mark.parametrize("npp", [None, "", "5", "three"])
def test_the_predict_arguments_are_nnunets_own(monkeypatch, capsys, npp):
    """Every argument as nnU-Net's, its process-count defaults from the environment included (unset, empty,
    set, not a number)."""
    if npp is not None:
        monkeypatch.setenv("nnUNet_npp", npp)
    ours = argparse.ArgumentParser()
    add_nnunet_predict_arguments(ours)
    theirs = nnunet_predict_parser(monkeypatch)
    capsys.readouterr()  # nnU-Net's citation banner
    assert described(ours) == described(theirs)


def test_nnunet_predict_command_lines_mean_the_same_with_the_refiner_flags_added(monkeypatch, capsys):
    """Abbreviations, attached values and defaults behave as in nnUNetv2_predict, beside our own flags."""
    theirs = nnunet_predict_parser(monkeypatch)
    capsys.readouterr()
    line = ["-iIN", "-o", "OUT", "-d", "7", "-c", "2d", "-f", "0", "all", "--save_prob", "-step_size", "0.7",
            "--disable_tta", "-npp", "0", "-device", "cpu"]
    assert vars(theirs.parse_args(line)).items() <= vars(predict_parser().parse_args(line)).items()
    assert predict_parser().parse_args(line + ["--refiner", "rnca"]).refiner == "rnca"


@pytest.mark.parametrize("name", sorted(MIRRORED_SOURCES))
def test_what_we_copy_from_nnunet_is_unchanged_in_the_installed_release(name):
    """A new nnunetv2 that edits a function nnunet_mirror.py copies or follows fails here: compare the copy
    with the new source, update it, then its fingerprint here and NNUNET_RELEASES_MIRRORED."""
    from importlib.metadata import version

    function, fingerprint = MIRRORED_SOURCES[name]
    source = "\n".join(line.rstrip() for line in inspect.getsource(function).splitlines())
    found = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert found == fingerprint, (f"nnunetv2 {version('nnunetv2')} changed {name} (mirrored from "
                                  f"{NNUNET_RELEASES_MIRRORED}): see rnca_nnunet/nnunet_mirror.py")
