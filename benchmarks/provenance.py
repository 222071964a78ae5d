"""The block every benchmark file starts with: the command, date, commit, machine and package versions, so a
figure can be traced to the code and the machine that measured it."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys

import torch


def _commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    """The CPU (model name, cores this process may use) and the GPU when there is one."""
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {cores} CPU cores{gpu}"


def provenance() -> str:
    """Markdown lines: command, date, commit, machine, versions."""
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("rnca-nnunet", "nnunetv2", "torch"))
    command = " ".join(["python", os.path.relpath(sys.argv[0]) if sys.argv else "?", *sys.argv[1:]])
    return "\n".join([f"- command: `{command}`", f"- date: {datetime.date.today().isoformat()}",
                      f"- commit: {_commit()}", f"- machine: {machine()}",
                      f"- versions: Python {platform.python_version()}, {versions}"])
