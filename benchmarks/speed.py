"""Speed and memory of the rNCA rule: inference steps per second and one training iteration,
2D and 3D, on the available device. Prints a table; no targets are asserted here."""
from __future__ import annotations

import time

import torch

from rnca_nnunet.model import RNCA, RuleShape

CASES = [("2D 512x512", 2, (1, 512, 512), 64), ("2D 8x512x512 (batch of slices)", 2, (8, 512, 512), 64),
         ("3D 64^3", 3, (1, 64, 64, 64), 40), ("3D 128^3", 3, (1, 128, 128, 128), 40)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print("| case | steps | inference s | ms/step | peak GiB | train iter s (batch 8 patches) |")
    print("|---|---|---|---|---|---|")
    for name, ndim, shape, steps in CASES:
        model = RNCA(RuleShape(ndim, 2, 1, 12, 96 if ndim == 2 else 64)).to(device).eval()
        torch.nn.init.normal_(model.update_out.weight, std=0.05)
        batch, spatial = shape[0], shape[1:]
        context = torch.rand(batch, 2, *spatial, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            model(model.initial_state(context[:, 1:]), context, 2)
            _sync(device)
            start = time.perf_counter()
            model(model.initial_state(context[:, 1:]), context, steps)
            _sync(device)
            seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        patch = (64, 64) if ndim == 2 else (24, 32, 32)
        model.train()
        x = torch.rand(8, 2, *patch, device=device)
        optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
        start = time.perf_counter()
        for _ in range(3):
            loss = model(model.initial_state(x[:, 1:]), x, 36, 0.5)[:, :1].square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        _sync(device)
        train = (time.perf_counter() - start) / 3
        print(f"| {name} | {steps} | {seconds:.3f} | {1000 * seconds / steps:.2f} | {peak:.2f} | {train:.3f} |")


if __name__ == "__main__":
    main()
