"""Benchmark: Hessian-vector products and Lanczos on a device (issue 10), as one table.

For the digits MLP and the ResNet-style model (``--images`` synthetic 32x32x3 images) on
``--device``: the time of one gradient, of one Hessian-vector product of the
:class:`~lossvista.HessianOperator` (its graph kept, as Lanczos uses it), and of
``hessian_eigs(obj, 1)`` with its number of products, each product checked against the same
product on the CPU in float64 (relative difference). Times are the best of ``--repeats`` after a
warm-up, with the device synchronised around each.

    python benchmarks/bench_device_hvp.py [--device cuda] [--images 2048] [--repeats 5]
        [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import torch
from _digits import digits, mlp, train
from _resnet import images, resnet, with_statistics
from torch import nn

import lossvista as lv

F = nn.functional


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        _sync()
        tick = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - tick)
    return min(times)


def workloads(images_n: int):
    X, y = digits(False)
    yield "MLP 64-128-128-10 (digits, 1797)", train(mlp(), X, y), X, y
    X, y = images(images_n)
    yield f"ResNet-style 16-32-64, BN ({images_n} x 32x32x3)", with_statistics(resnet(), X), X, y


def measure(name, model, X, y, device: torch.device, repeats: int) -> dict:
    obj = lv.Objective(model.to(device), F.cross_entropy, (X.to(device), y.to(device)))
    reference = lv.Objective(copy.deepcopy(model).cpu().double(), F.cross_entropy, (X.double(), y))
    row: dict = {"name": name, "params": sum(p.numel() for p in model.parameters())}
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        loss = sum(
            F.cross_entropy(
                model(X[i : i + 512].to(device)), y[i : i + 512].to(device), reduction="sum"
            )
            for i in range(0, len(y), 512)
        )
        torch.autograd.grad(loss, params)

    row["gradient_s"] = _best(gradient, repeats)
    with lv.HessianOperator(obj) as H, lv.HessianOperator(reference) as H64:
        g = torch.Generator().manual_seed(0)
        v = torch.randn(H.size, generator=g, dtype=torch.float64)
        row["product_s"] = _best(lambda: H.matvec(v), repeats)
        device_product = H.matvec(v).double().cpu()
        exact = H64.matvec(v)
        row["rel_diff"] = float((device_product - exact).norm() / exact.norm())
    _sync()
    tick = time.perf_counter()
    eigs = lv.hessian_eigs(obj, 1)
    _sync()
    row["eigs_s"] = time.perf_counter() - tick
    row["products"] = eigs.n_hvp
    row["lambda_max"] = float(eigs.values[0])
    return row


def report(rows: list[dict], device: torch.device, argv: list[str]) -> str:
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    lines = [
        f"## bench_device_hvp ({dt.date.today().isoformat()})",
        "",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads; device: {gpu}; "
        f"torch {torch.__version__}, lossvista {lv.__version__}",
        f"- command: `python benchmarks/bench_device_hvp.py {' '.join(argv)}`",
        "",
        "| model | parameters | one gradient (ms) | one HVP (ms) | HVP / gradient "
        "| rel. diff vs CPU float64 | hessian_eigs(k=1) (s) | products | lambda_max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {1e3 * r['gradient_s']:.2f} | "
            f"{1e3 * r['product_s']:.2f} | {r['product_s'] / r['gradient_s']:.2f}x | "
            f"{r['rel_diff']:.1e} | {r['eigs_s']:.2f} | {r['products']} | {r['lambda_max']:.6g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [measure(*w, device, args.repeats) for w in workloads(args.images)]
    text = report(rows, device, sys.argv[1:])
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
