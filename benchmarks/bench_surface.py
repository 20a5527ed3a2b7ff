"""Benchmark: filter-normalised planes, lossvista against the per-point loop and the eager floor.

Workloads (``--models``): an MLP 64-128-128-10 and a CNN
Conv(1,16,3)-BN-ReLU-Conv(16,32,3)-BN-ReLU-MaxPool-Linear on all 1797 digits, and a ResNet-style
model (stem and one residual block per width 16-32-64, BatchNorm, ``--resnet-samples`` synthetic
32x32x3 images, 10,000 by default) and, with ``--models vit``, a small ViT (Hugging Face
``transformers`` from a config: 4 layers of width 128 on ``--vit-samples`` such images, 256 by
default) and, with ``--models gpt2``, a small GPT-2 (the same way: 4 layers of width 128 on
``--gpt2-samples`` sequences of 64 random tokens, 128 by default, next-token cross-entropy);
planes of ``--steps`` x ``--steps`` points (21 and 51).
Measured in the same run, each ``--repeats`` times, interleaved, median reported:

- ``lossvista``: ``lv.plane(obj, (d1, d2), steps=(s, s))`` end to end (centre check, engine
  tuning, compiling where the engine chooses it), loss only. Every run starts with an empty
  tuning cache and a reset ``torch.compile`` cache, so tuning and compile time are included;
- ``classic``: the per-point loop of the 2018 scripts: copy ``w + a*d1 + b*d2`` into the model,
  iterate a ``DataLoader`` with batch size 128 under ``torch.no_grad``;
- ``floor``: the eager floor, a plain forward per point: parameters updated in place,
  pre-sliced batches of whichever size among 32, 64, 128, 512 and the whole set is fastest
  (picked on a few points), inference mode, nothing else.

Achieved FLOP/s count the forward FLOPs of one point (``torch.utils.flop_counter``) times the
points, over the seconds; the peak is the best float32 rate of a 2048x2048 matrix product and
of a large 3x3 channels-last convolution, measured before and after every workload in the same
run. With ``--options`` every engine option is also timed alone on a few points, in the floor's
batches (seconds per point: the loop, BatchNorm folded, channels-last, the input layers stored,
linear layers through oneDNN, ``torch.compile`` and its compile time, bfloat16 autocast, vmap),
which shows what each would
give on a larger grid.

A quick run: ``--models cnn --steps 21 --repeats 1``. On a GPU: ``--device cuda`` (model and
data on the GPU; the classic loop moves every batch from the host, as the 2018 scripts did).

    python benchmarks/bench_surface.py [--models mlp,cnn,resnet] [--steps 21,51] [--repeats 3]
        [--resnet-samples 10000] [--vit-samples 256] [--gpt2-samples 128] [--options]
        [--device cpu|cuda]
        [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _digits import digits, mlp, train
from _gpt2 import gpt2, tokens
from _resnet import images, resnet, with_statistics
from _vit import vit
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import lossvista as lv
from lossvista import _allocator, _tuning
from lossvista.engine import EngineConfig, PointEvaluator

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


def workload(
    name: str, resnet_samples: int, vit_samples: int = 256, gpt2_samples: int = 128
) -> tuple[str, nn.Module, torch.Tensor, torch.Tensor]:
    if name == "gpt2":
        X, y = tokens(gpt2_samples)
        return f"GPT-2 4x128 ({gpt2_samples} x 64 tokens)", gpt2(), X, y
    if name == "vit":
        X, y = images(vit_samples)
        return f"ViT 4x128, patches 4x4 ({vit_samples} x 32x32x3)", vit(), X, y
    if name == "mlp":
        X, y = digits(False)
        return "MLP 64-128-128-10 (digits)", train(mlp(), X, y), X, y
    if name == "cnn":
        X, y = digits(True)
        return "CNN conv-BN x2, maxpool, linear (digits)", train(cnn(), X, y), X, y
    X, y = images(resnet_samples)
    label = f"ResNet-style 16-32-64, BN ({resnet_samples} x 32x32x3)"
    return label, with_statistics(resnet(), X), X, y


def grid(steps: int) -> np.ndarray:
    axis = np.linspace(-1, 1, steps)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


def run_lossvista(model, X, y, d1, d2, steps: int) -> tuple[float, np.ndarray, dict]:
    """End to end, with an empty tuning cache and no compiled code left from earlier runs."""
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    torch._dynamo.reset()
    _tuning.clear_memory()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LOSSVISTA_CACHE_DIR"] = cache
        tick = time.perf_counter()
        surface = lv.plane(obj, (d1, d2), steps=(steps, steps), progress=False)
        elapsed = time.perf_counter() - tick
    return elapsed, surface.values["loss"].reshape(-1), surface.settings


def run_classic(model, X, y, d1, d2, steps: int) -> tuple[float, np.ndarray]:
    """The 2018 scripts' loop: the data on the host, every batch moved to the model's device."""
    device = next(model.parameters()).device
    loader = DataLoader(TensorDataset(X.cpu(), y.cpu()), batch_size=128, shuffle=False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    tick = time.perf_counter()
    with torch.no_grad():
        for a, b in grid(steps):
            for n, p in model.named_parameters():
                p.data = base[n] + float(a) * d1[n] + float(b) * d2[n]
            total, count = 0.0, 0
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                total += F.cross_entropy(model(inputs), targets).item() * len(targets)
                count += len(targets)
            losses.append(total / count)
    elapsed = time.perf_counter() - tick
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.data = base[n]
    return elapsed, np.array(losses)


def floor_run(model, X, y, d1, d2, points: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """The eager floor over ``points``: (seconds, losses)."""
    params = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    batches = [(X[i : i + batch], y[i : i + batch]) for i in range(0, len(y), batch)]
    out = np.empty(len(points))
    tick = time.perf_counter()
    with torch.inference_mode():
        for k, (a, b) in enumerate(points):
            for n, p in params.items():
                p.copy_(base[n])
                p.add_(d1[n], alpha=float(a))
                p.add_(d2[n], alpha=float(b))
            total = torch.zeros((), dtype=torch.float64, device=X.device)
            for inputs, targets in batches:
                total += F.cross_entropy(model(inputs), targets).double() * len(targets)
            out[k] = float(total) / len(y)
        for n, p in params.items():
            p.copy_(base[n])
    return time.perf_counter() - tick, out


def floor_batch(model, X, y, d1, d2) -> tuple[int, dict[int, float]]:
    """The fastest floor batch size among 32, 64, 128, 512 and the whole set (seconds per
    point): small batches keep a CNN's activations in the CPU caches."""
    few = grid(5)[:6]
    sizes = sorted({min(b, len(y)) for b in (32, 64, 128, 512, len(y))})
    per_point = {batch: float("inf") for batch in sizes}
    for batch in sizes:
        floor_run(model, X, y, d1, d2, few[:1], batch)  # warm-up
    for _ in range(3):  # interleaved rounds, the best of each size: drift hits every size alike
        for batch in sizes:
            seconds = floor_run(model, X, y, d1, d2, few, batch)[0] / len(few)
            per_point[batch] = min(per_point[batch], seconds)
    return min(per_point, key=per_point.get), per_point


def forward_flops(model, X, batch: int) -> int:
    """FLOPs of one point: the forward over all samples, in the floor's batches."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        for start in range(0, len(X), batch):
            model(X[start : start + batch])
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 FLOP/s on ``device``: the best of a ``size`` x ``size`` matrix product
    (BLAS) and a 3x3 convolution of 64 x 256 x 16 x 16 channels-last images with 256 filters
    (oneDNN on a CPU), each the best of ``repeats``. The BLAS product alone can understate the
    machine: MKL's code path on AMD CPUs is well below what oneDNN's convolutions reach. On a
    GPU, TF32 is off (these are float32 numbers)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = 2 * size**3 / min(_timed(lambda: a @ b) for _ in range(repeats))
    x = torch.randn(64, 256, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        seconds = min(_timed(lambda: F.conv2d(x, w, padding=1)) for _ in range(repeats))
    return max(best, 2 * 64 * 16 * 16 * 256 * 256 * 9 / seconds)


def _device_name() -> str:
    if torch.cuda.is_available() and torch.cuda.device_count():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return "cpu"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    tick = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - tick


def option_timings(model, X, y, d1, d2, batch: int) -> dict[str, float]:
    """Seconds per point of each engine option alone, in the floor's batches (a warm-up point,
    then the best of 3)."""
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), (d1, d2))
    layout = {"fold_batchnorm": True, "channels_last": True}
    configs = {
        "loop": EngineConfig("loop", batch, 1),
        "fold": EngineConfig("loop", batch, 1, fold_batchnorm=True),
        "channels-last": EngineConfig("loop", batch, 1, channels_last=True),
        "input layers": EngineConfig("loop", batch, 1, precompute_input=True),
        "oneDNN linear": EngineConfig("loop", batch, 1, onednn_linear=True),
        "fold + channels-last": EngineConfig("loop", batch, 1, **layout),
        "fold + channels-last + input": EngineConfig(
            "loop", batch, 1, **layout, precompute_input=True
        ),
        "compile": EngineConfig("loop", batch, 1, compile=True),
        "fold + channels-last + compile": EngineConfig("loop", batch, 1, **layout, compile=True),
        "fold + channels-last, bfloat16 autocast": EngineConfig(
            "loop", batch, 1, **layout, precision="bfloat16"
        ),
        "vmap x8": EngineConfig("vmap", min(128, len(y)), 8),
    }
    points = grid(5)[:4]
    out: dict[str, float] = {}
    for name, config in configs.items():
        torch._dynamo.reset()
        try:
            with evaluator._guarded():  # one set-up per option, as in a run of the engine
                model.eval()
                evaluator._write_origin()
                tick = time.perf_counter()
                evaluator._evaluate(config, points[:1])
                first = time.perf_counter() - tick
                best = min(
                    _timed(lambda c=c, k=config: evaluator._evaluate(k, c[None]))
                    for c in points[1:]
                )
        except Exception as exc:  # e.g. no compiler: report it
            print(f"{name}: {exc!r}"[:300], file=sys.stderr)
            continue
        out[name] = best
        if config.compile:
            out[f"{name}: compile (s)"] = first - best
    return out


#: The operations that do a forward's matrix work (convolutions, matrix products, fused
#: attention) on the CPU: names ending in one of these, or containing the last one.
MATRIX_OPS = ("convolution", "mm", "bmm", "linear", "linear_pointwise", "matmul")
ATTENTION_OP = "scaled_dot_product"


def matrix_seconds(model, X, y, d1, d2, engine: dict | None) -> tuple[float, float]:
    """(seconds per point in matrix operations, in all operations) of the engine's chosen
    configuration (eager: a compiled graph calls the same convolutions), by torch's profiler
    over 3 points after a warm-up. Their ratio to the floor bounds what a faster evaluation of
    the same operations can reach: only fewer FLOPs would go beyond."""
    config = EngineConfig.from_dict({**(engine or {}), "compile": False})
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    evaluator = PointEvaluator(obj, obj.parameters(), (d1, d2))
    points = grid(5)[:4]
    with evaluator._guarded():
        model.eval()
        evaluator._write_origin()
        evaluator._evaluate(config, points[:1])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            evaluator._evaluate(config, points[1:])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matrix = sum(
        e.self_cpu_time_total
        for e in events
        if any(e.key.endswith(op) for op in MATRIX_OPS) or ATTENTION_OP in e.key
    )
    return matrix / 1e6 / 3, total / 1e6 / 3


def bench(name: str, model, X, y, steps_list: list[int], repeats: int, options: bool) -> list[dict]:
    d1, d2 = lv.random_directions(model, 2, norm="filter", ignore=("bias", "bn"), seed=0)
    batch, floor_sizes = floor_batch(model, X, y, d1, d2)
    flops = forward_flops(model, X, batch)
    per_option = option_timings(model, X, y, d1, d2, batch) if options else {}
    results = []
    for steps in steps_list:
        times: dict[str, list[float]] = {"lossvista": [], "classic": [], "floor": []}
        settings: dict = {}
        for _ in range(repeats):  # interleaved so that drift hits every method alike
            elapsed, values, settings = run_lossvista(model, X, y, d1, d2, steps)
            times["lossvista"].append(elapsed)
            elapsed, _ = run_classic(model, X, y, d1, d2, steps)
            times["classic"].append(elapsed)
            elapsed, reference = floor_run(model, X, y, d1, d2, grid(steps), batch)
            times["floor"].append(elapsed)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name} {steps}x{steps}: {settings.get('engine')} {m}", flush=True)
        matrix, ops = matrix_seconds(model, X, y, d1, d2, settings.get("engine"))
        results.append(
            {
                "name": name,
                "steps": steps,
                "medians": m,
                "floor_batch": batch,
                "floor_sizes": floor_sizes,
                "ratio_floor": m["lossvista"] / m["floor"],
                "speedup_classic": m["classic"] / m["lossvista"],
                "flops_per_point": flops,
                "engine": settings.get("engine"),
                "max_rel_diff": float(np.max(np.abs(values - reference) / np.abs(reference))),
                "options": per_option,
                "floor_per_point": floor_sizes[batch],
                "matrix_per_point": matrix,
                "ops_per_point": ops,
            }
        )
    return results


def describe(engine: dict | None) -> str:
    engine = engine or {}
    text = f"{engine.get('strategy')} b={engine.get('batch_size')}"
    if engine.get("strategy") == "vmap":
        text += f" x{engine.get('points_per_call')}"
    for key, label in (
        ("fold_batchnorm", "fold"),
        ("channels_last", "NHWC"),
        ("precompute_input", "input"),
        ("onednn_linear", "oneDNN"),
        ("compile", "compile"),
    ):
        if engine.get(key):
            text += f" +{label}"
    return text


def report(results: list[dict], peak: float, argv: list[str]) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"## bench_surface ({dt.date.today().isoformat()})",
        "",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.platform()}; torch {torch.__version__}, "
        f"lossvista {lv.__version__}; load average (1 min) at the end {load:.1f}",
        f"- device: {_device_name()}",
        f"- command: `python benchmarks/bench_surface.py {' '.join(argv)}`",
        f"- measured float32 peak (best of a 2048x2048 matmul and a 256-channel 3x3 NHWC "
        f"convolution): {peak / 1e9:.1f} GFLOP/s",
        "",
        "| model | plane | lossvista (s) | floor (s) | classic (s) | lossvista / floor "
        "| floor / lossvista | classic / lossvista | engine choice | lossvista GFLOP/s "
        "| % of peak | floor % of peak | max rel. diff vs floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, points = r["medians"], r["steps"] ** 2
        achieved = r["flops_per_point"] * points / m["lossvista"]
        floor_rate = r["flops_per_point"] * points / m["floor"]
        lines.append(
            f"| {r['name']} | {r['steps']}x{r['steps']} | {m['lossvista']:.2f} | "
            f"{m['floor']:.2f} (b={r['floor_batch']}) | {m['classic']:.2f} | "
            f"{r['ratio_floor']:.2f}x | {1 / r['ratio_floor']:.2f}x | "
            f"{r['speedup_classic']:.1f}x | {describe(r['engine'])} | {achieved / 1e9:.1f} | "
            f"{100 * achieved / peak:.0f}% | {100 * floor_rate / peak:.0f}% | "
            f"{r['max_rel_diff']:.1e} |"
        )
    seen = set()
    option_lines = []
    for r in results:
        if r["name"] in seen or not r["options"]:
            continue
        seen.add(r["name"])
        parts = ", ".join(
            f"{k}: {v:.2f}" if k.endswith("(s)") else f"{k}: {1e3 * v:.2f} ms"
            for k, v in r["options"].items()
        )
        option_lines.append(
            f"- {r['name']} (floor {1e3 * r['floor_per_point']:.2f} ms per point): {parts}"
        )
    bound_lines = [
        f"- {r['name']} {r['steps']}x{r['steps']}: matrix operations {1e3 * r['matrix_per_point']:.2f} "
        f"ms of {1e3 * r['ops_per_point']:.2f} ms in all operations per point (profiled, engine's "
        f"choice); floor {1e3 * r['medians']['floor'] / r['steps'] ** 2:.2f} ms: at most "
        f"{r['medians']['floor'] / r['steps'] ** 2 / r['matrix_per_point']:.2f}x faster than the "
        "floor with these operations"
        for r in results
        if r.get("matrix_per_point")
    ]
    if bound_lines:
        lines += ["", "What the same matrix work allows (everything else free):", ""]
        lines += bound_lines
    if option_lines:
        lines += ["", "Each engine option alone, seconds per point (the floor's batches):", ""]
        lines += option_lines
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn,resnet")
    parser.add_argument("--steps", default="21,51", help="plane sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resnet-samples", type=int, default=10_000)
    parser.add_argument("--vit-samples", type=int, default=256)
    parser.add_argument("--gpt2-samples", type=int, default=128)
    parser.add_argument("--options", action="store_true", help="time each engine option alone")
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: model and data on it")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    device = torch.device(args.device)
    # lossvista warms glibc's allocator at its first CPU run (lossvista._allocator): done here
    # first, so that the floor and the classic loop are measured in the same process state
    _allocator.warm(device)
    peak = matmul_peak(device)
    results = []
    for key in args.models.split(","):
        name, model, X, y = workload(
            key.strip(), args.resnet_samples, args.vit_samples, args.gpt2_samples
        )
        model, X, y = model.to(device), X.to(device), y.to(device)
        results += bench(name, model, X, y, steps_list, args.repeats, args.options)
        peak = max(peak, matmul_peak(device))  # the best seen: other load only lowers it
        print(report(results, peak, sys.argv[1:]), flush=True)
    text = report(results, peak, sys.argv[1:])
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
