"""Forward passes in a fresh process, with and without lossvista's allocator warm-up.

glibc maps and unmaps large blocks until the process has freed one (lossvista._allocator); a
forward whose activations do not fit twice its largest block then faults its pages in afresh
every time. Each row runs in its own fresh interpreter (the state under test is the process's),
cold and warmed in turn, and reports the median milliseconds per forward and page faults.

    python benchmarks/bench_allocator.py [--rounds 3] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {here!r})
import torch
from lossvista import _allocator
from bench_surface import cnn
from _resnet import images, resnet
name, batch, warm = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "warm"
if name == "cnn":  # untrained, as a user's model loaded in a fresh process: no training frees
    from _digits import digits
    X, y = digits(True)
    model = cnn().eval()
else:
    X, y = images(2048)
    model = resnet().eval()
if warm:
    _allocator.warm()
times, faults = [], []
with torch.inference_mode():
    for _ in range(12):
        before, tick = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for start in range(0, len(X), batch):
            torch.nn.functional.cross_entropy(model(X[start:start + batch]), y[start:start + batch])
        times.append(time.perf_counter() - tick)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"ms": 1e3 * min(times[2:]), "faults": min(faults[2:])}}))
"""

CASES = (("cnn", 1797), ("cnn", 256), ("resnet", 128), ("resnet", 256))


def child(name: str, batch: int, mode: str) -> dict[str, float]:
    code = CHILD.format(here=str(Path(__file__).parent))
    done = subprocess.run(
        [sys.executable, "-c", code, name, str(batch), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per cell")
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    args = parser.parse_args()
    lines = [
        f"## bench_allocator ({datetime.date.today()})",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{' '.join(platform.libc_ver())}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        f"- command: `python benchmarks/bench_allocator.py --rounds {args.rounds}`",
        "- one full pass over the data per forward (digits: 1,797 images; ResNet-style: 2,048),",
        "  eager float32, inference mode; best of 10 passes per process, median over processes",
        "",
        "| model | batch | cold (ms) | warmed (ms) | cold / warmed | faults cold | faults warmed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, batch in CASES:
        runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
        for _ in range(args.rounds):  # interleaved: drift hits both alike
            for mode in runs:
                runs[mode].append(child(name, batch, mode))
        ms = {m: statistics.median(r["ms"] for r in rs) for m, rs in runs.items()}
        faults = {m: statistics.median(r["faults"] for r in rs) for m, rs in runs.items()}
        lines.append(
            f"| {name} | {batch} | {ms['cold']:.2f} | {ms['warm']:.2f} | "
            f"{ms['cold'] / ms['warm']:.2f}x | {faults['cold']:.0f} | {faults['warm']:.0f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
