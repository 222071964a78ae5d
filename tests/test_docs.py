"""The docs keep up with the code: every flag of our console scripts is in docs/cli.md under its command, and
every relative link of the README and docs/ leads to a file that exists."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"nnUNetv2_train_rnca": ["nnUNetv2_train_rnca"], "nnUNetv2_predict_rnca": ["nnUNetv2_predict_rnca"],
            "nnUNetv2_refine_rnca": ["nnUNetv2_refine_rnca"], "nnUNetv2_evaluate_rnca": ["nnUNetv2_evaluate_rnca"],
            "nnUNetv2_export_model_to_zip_rnca": ["nnUNetv2_export_model_to_zip_rnca"],
            "python -m rnca_nnunet.experiments.demo": [sys.executable, "-m", "rnca_nnunet.experiments.demo"],
            "python -m rnca_nnunet.experiments.synthetic": [sys.executable, "-m", "rnca_nnunet.experiments.synthetic"]}
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def flags(command) -> set:
    """The option strings a parser's -h lists."""
    text = subprocess.run([*command, "-h"], capture_output=True, text=True, check=True,
                          env=dict(os.environ, COLUMNS="110")).stdout
    return set(FLAG.findall(text.split("options:", 1)[-1]))


def cli_sections() -> dict:
    text = open(os.path.join(ROOT, "docs", "cli.md")).read()
    return {m.group(1): m.group(2) for m in re.finditer(r"(?ms)^## `([^`]+)`\n(.*?)(?=^## |\Z)", text)}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_of_our_commands_is_in_the_cli_reference(name):
    sections = cli_sections()
    assert name in sections, f"docs/cli.md has no section for {name}"
    ours = flags(COMMANDS[name])
    if name == "nnUNetv2_predict_rnca":  # nnU-Net's own flags follow the installed nnunetv2
        ours -= flags(["nnUNetv2_predict"])
        assert "--refiner" in ours
    missing = sorted(ours - set(FLAG.findall(sections[name])))
    assert not missing, f"docs/cli.md lacks {missing} of {name}: regenerate it as its header says"


def test_every_relative_link_of_the_docs_leads_to_a_file():
    pages = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", f)
                                                 for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(page).read()):
            if not re.match(r"[a-z]+:", target) and not os.path.exists(os.path.join(os.path.dirname(page), target)):
                broken.append(f"{os.path.relpath(page, ROOT)} -> {target}")
    assert not broken, broken
