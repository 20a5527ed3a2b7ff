"""Benchmark: a 21x21 filter-normalised plane on the digits data, lossvista against two baselines.

Measured in the same run, for an MLP 64-128-128-10 and a CNN
Conv(1,16,3)-BN-ReLU-Conv(16,32,3)-BN-ReLU-MaxPool-Linear on all 1797 digits:

- ``lossvista``: ``lv.plane(obj, (d1, d2), steps=(21, 21))`` end to end (centre check, engine
  tuning and all), loss only;
- ``classic``: the per-point loop of the 2018 scripts: copy ``w + a*d1 + b*d2`` into the model,
  iterate a ``DataLoader`` with batch size 128 under ``torch.no_grad``;
- ``floor``: the fastest plain evaluation per point: parameters updated in place, pre-sliced
  batches of whichever size among 128, 512 and the whole set is fastest, inference mode,
  nothing else.

Every method runs ``--repeats`` times, interleaved, and the median is reported.

    python benchmarks/bench_surface.py [--repeats 5] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _digits import digits, mlp, train
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossvista as lv

STEPS = 21
F = nn.functional


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def grid() -> np.ndarray:
    axis = np.linspace(-1, 1, STEPS)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


def run_lossvista(model, X, y, d1, d2, strategy="auto") -> tuple[float, np.ndarray, dict]:
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    tick = time.perf_counter()
    surface = lv.plane(obj, (d1, d2), steps=(STEPS, STEPS), progress=False, strategy=strategy)
    return time.perf_counter() - tick, surface.values["loss"].reshape(-1), surface.settings


def run_classic(model, X, y, d1, d2) -> tuple[float, np.ndarray]:
    loader = DataLoader(TensorDataset(X, y), batch_size=128, shuffle=False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    tick = time.perf_counter()
    with torch.no_grad():
        for a, b in grid():
            for n, p in model.named_parameters():
                p.data = base[n] + float(a) * d1[n] + float(b) * d2[n]
            total, count = 0.0, 0
            for inputs, targets in loader:
                total += F.cross_entropy(model(inputs), targets).item() * len(targets)
                count += len(targets)
            losses.append(total / count)
    elapsed = time.perf_counter() - tick
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.data = base[n]
    return elapsed, np.array(losses)


def floor_once(model, X, y, d1, d2, batch: int) -> tuple[float, np.ndarray]:
    params = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    batches = [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]
    out = np.empty(STEPS * STEPS)
    tick = time.perf_counter()
    with torch.inference_mode():
        for k, (a, b) in enumerate(grid()):
            for n, p in params.items():
                p.copy_(base[n])
                p.add_(d1[n], alpha=float(a))
                p.add_(d2[n], alpha=float(b))
            total = torch.zeros((), dtype=torch.float64)
            for inputs, targets in batches:
                total += F.cross_entropy(model(inputs), targets).double() * len(targets)
            out[k] = float(total) / len(y)
        for n, p in params.items():
            p.copy_(base[n])
    return time.perf_counter() - tick, out


def bench(name: str, factory, image: bool, repeats: int) -> dict:
    X, y = digits(image)
    model = train(factory(), X, y)
    d1, d2 = lv.random_directions(model, 2, norm="filter", ignore=("bias", "bn"), seed=0)
    sizes = sorted({128, 512, len(y)})
    times: dict[str, list[float]] = {"lossvista": [], "classic": [], "vmap": []}
    times.update({f"floor@{b}": [] for b in sizes})
    settings = {}
    reference = None
    for _ in range(repeats):  # interleaved so that drift hits every method alike
        elapsed, values, settings = run_lossvista(model, X, y, d1, d2)
        times["lossvista"].append(elapsed)
        times["vmap"].append(run_lossvista(model, X, y, d1, d2, strategy="vmap")[0])
        elapsed, classic_values = run_classic(model, X, y, d1, d2)
        times["classic"].append(elapsed)
        for b in sizes:
            elapsed, reference = floor_once(model, X, y, d1, d2, b)
            times[f"floor@{b}"].append(elapsed)
    agree = float(np.max(np.abs(values - reference) / np.abs(reference)))
    agree_classic = float(np.max(np.abs(classic_values - reference) / np.abs(reference)))
    medians = {k: statistics.median(v) for k, v in times.items()}
    best_floor = min((k for k in medians if k.startswith("floor")), key=medians.get)
    return {
        "name": name,
        "medians": medians,
        "floor": best_floor,
        "ratio_floor": medians["lossvista"] / medians[best_floor],
        "speedup_classic": medians["classic"] / medians["lossvista"],
        "floor_vs_classic": medians["classic"] / medians[best_floor],
        "engine": settings.get("engine"),
        "max_rel_diff": agree,
        "max_rel_diff_classic": agree_classic,
    }


def report(results: list[dict], repeats: int) -> str:
    lines = [
        f"## bench_surface ({dt.date.today().isoformat()})",
        "",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.platform()}; torch {torch.__version__}, "
        f"lossvista {lv.__version__}",
        f"- command: `python benchmarks/bench_surface.py --repeats {repeats}`",
        f"- 21x21 filter-normalised plane on all 1797 digits; median of {repeats} interleaved runs",
        "",
        "| model | lossvista (s) | floor (s) | floor batch | classic (s) | lossvista / floor "
        "| classic / lossvista | classic / floor | engine choice | vmap forced (s) "
        "| max rel. diff vs floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["medians"]
        engine = r["engine"] or {}
        choice = f"{engine.get('strategy')} b={engine.get('batch_size')}"
        if engine.get("strategy") == "vmap":
            choice += f" x{engine.get('points_per_call')}"
        lines.append(
            f"| {r['name']} | {m['lossvista']:.3f} | {m[r['floor']]:.3f} | "
            f"{r['floor'].split('@')[1]} | {m['classic']:.3f} | {r['ratio_floor']:.2f}x | "
            f"{r['speedup_classic']:.1f}x | {r['floor_vs_classic']:.1f}x | {choice} | "
            f"{m['vmap']:.3f} | {r['max_rel_diff']:.1e} |"
        )
    lines += ["", "All floor batch sizes (median seconds):", ""]
    for r in results:
        floors = ", ".join(
            f"{k.split('@')[1]}: {v:.3f}" for k, v in r["medians"].items() if k.startswith("floor")
        )
        lines.append(f"- {r['name']}: {floors}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    args = parser.parse_args()
    results = [bench("MLP 64-128-128-10", mlp, False, args.repeats)]
    results.append(bench("CNN conv-BN x2, maxpool, linear", cnn, True, args.repeats))
    text = report(results, args.repeats)
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
