"""A program that imports the package keeps its own process: training, refining and drawing leave the global
random generators, matplotlib's backend and glibc's malloc settings as they were (the console scripts alone
tune malloc, cpu_memory.py)."""
import os
import subprocess
import sys

PROGRAM = r"""
import ctypes, random, sys
mallopt_calls = []
looked_up = ctypes.CDLL.__getattr__
def spy(self, name):  # every C function the process looks up by name, mallopt among them
    if name == "mallopt":
        mallopt_calls.append(name)
    return looked_up(self, name)
ctypes.CDLL.__getattr__ = spy

import matplotlib
matplotlib.use("svg")
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from conftest import train_on_corrupted  # importing nnunetv2 draws from Python's generator: not ours to judge
from test_refiner import random_case, random_refiner
from rnca_nnunet.pictures import plot_progress

refiner = random_refiner(2)  # the test's own helper seeds torch
random.seed(7), np.random.seed(7), torch.manual_seed(7)
before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
image, probabilities = random_case((1, 40, 40))
refiner.refine(image, probabilities)
trained, _ = train_on_corrupted("vessels2d", "vessels_2d", 4, 3, 2, 0)
plot_progress(sys.argv[2], [], [1.0, 0.5])

after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
print("python=", before[0] == after[0])
print("numpy=", bool((before[1] == after[1]).all()))
print("torch=", bool(torch.equal(before[2], after[2])))
print("backend=", matplotlib.get_backend())
print("mallopt=", len(mallopt_calls))
from rnca_nnunet.cpu_memory import reuse_freed_memory
reuse_freed_memory()
print("mallopt_when_asked=", len(mallopt_calls))
"""


def test_library_use_leaves_the_global_state_of_the_process_alone(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run([sys.executable, "-c", PROGRAM, tests, str(tmp_path / "progress.png")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = dict(line.split("= ", 1) for line in result.stdout.splitlines() if "= " in line)
    assert (report["python"], report["numpy"], report["torch"]) == ("True", "True", "True"), report
    assert report["backend"] == "svg"
    assert report["mallopt"] == "0", "only the console scripts tune malloc"
    assert int(report["mallopt_when_asked"]) > 0, "the spy sees mallopt when it is called"
    assert (tmp_path / "progress.png").stat().st_size > 0
