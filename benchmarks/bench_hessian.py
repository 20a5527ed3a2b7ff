"""Benchmark: Hessian-vector products, the top eigenvalue and the trace on the digits MLP.

The MLP 64-128-128-10 (ReLU, float32, 26,122 parameters) is trained for 30 full-batch Adam
steps on all 1797 digits (as in ``bench_surface.py``); every measurement is at that point, on
the exact loss over all samples. Measured in one run:

- **products**: seconds per Hessian-vector product (over all batches) for each backend, against
  one gradient (median of ``--repeats`` interleaved rounds of 10 calls). ``double_backward, kept
  graph`` is what ``HessianOperator`` (and so Lanczos, Hutchinson, SLQ) does after its one-off
  graph build; the others recompute the forward pass per product.
- **top eigenvalue**: relative error against a converged float64 reference
  (``hessian_eigs(tol=1e-12)`` on a float64 copy), for lossvista's Lanczos and for a plain power
  iteration, at equal numbers of products; the products each needs to reach its target (1e-6
  for lossvista, 1e-3 for power iteration); and both run as a user would (lossvista with its
  default ``tol=1e-6``, power iteration with PyHessian's rule: stop when the relative change of
  the estimate is below 1e-3), with wall times (medians of interleaved repeats).
- **trace**: Hutchinson and Hutch++ at equal budgets, estimate -+ stderr, against the exact
  trace. For a piecewise-linear (ReLU) network the logits are linear in each single parameter,
  so ``diag(H) = diag(J^T A J)`` (Gauss-Newton) and ``tr(H) = 1/N sum_n tr(A_n J_n J_n^T)`` with
  ``A_n = diag(p_n) - p_n p_n^T``: computed in float64 from per-sample Jacobians.

    python benchmarks/bench_hessian.py [--repeats 5] [--threads N] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import math
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from _digits import digits, mlp, train
from torch import nn

import lossvista as lv
from lossvista.curvature import ConvergenceWarning, HessianOperator, hessian_eigs, hessian_trace
from lossvista.curvature.hvp import GRAPH_BYTES, hvp_choice

F = nn.functional
BUDGETS = (4, 6, 8, 10, 12, 16, 20, 30, 50)
TRACE_BUDGETS = (30, 99, 300)
CALLS = 10


# -- products -------------------------------------------------------------------------------------
def time_products(obj: lv.Objective, repeats: int) -> dict[str, float]:
    """Median seconds per full product (all batches) of each backend, and of one gradient
    (interleaved rounds of CALLS calls)."""
    v = None
    with contextlib.ExitStack() as stack:
        ops = {}
        for name, method, budget in [
            ("double_backward", "double_backward", 0),
            ("double_backward, kept graph", "double_backward", GRAPH_BYTES),
            ("forward_over_reverse", "forward_over_reverse", 0),
            ("finite_difference", "finite_difference", 0),
        ]:
            ops[name] = stack.enter_context(
                HessianOperator(obj, backend=method, max_graph_bytes=budget)
            )
        first = ops["double_backward"]
        v = torch.randn(first.size, generator=torch.Generator().manual_seed(0))
        calls = {"gradient": first.loss_and_gradient}
        calls.update({name: (lambda op=op: op.matvec(v)) for name, op in ops.items()})
        for call in calls.values():  # warm-up: one-off costs are not per product
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                tick = time.perf_counter()
                for _ in range(CALLS):
                    call()
                times[name].append((time.perf_counter() - tick) / CALLS)
    return {name: statistics.median(values) for name, values in times.items()}


def product_accuracy(obj: lv.Objective) -> dict[str, float]:
    """Relative difference of each backend from forward-over-reverse on one random vector."""
    out = {}
    v = None
    for method in ("forward_over_reverse", "double_backward", "finite_difference"):
        with HessianOperator(obj, backend=method) as op:
            if v is None:
                v = torch.randn(op.size, generator=torch.Generator().manual_seed(1))
            out[method] = op.matvec(v).double()
    ref = out["forward_over_reverse"]
    return {m: float((p - ref).norm() / ref.norm()) for m, p in out.items()}


# -- top eigenvalue ---------------------------------------------------------------------------------
def power_iteration(op: HessianOperator, steps: int, rule: bool = False):
    """PyHessian's power iteration; returns the estimates after each product (and, with
    ``rule``, stops when the relative change falls below 1e-3)."""
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    estimates, previous = [], None
    for _ in range(steps):
        hv = op.matvec(v)
        value = float(torch.dot(hv.double(), v.double()))
        estimates.append(value)
        if rule and previous is not None and abs(value - previous) / (abs(previous) + 1e-6) < 1e-3:
            break
        previous = value
        v = hv / hv.norm()
    return estimates


def lanczos_at_budget(obj: lv.Objective, budget: int) -> float:
    """Top eigenvalue from exactly ``budget`` products (budget - 1 steps and one check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = hessian_eigs(obj, 1, tol=1e-30, max_iter=budget - 1)
    assert result.n_hvp == budget, result.n_hvp
    return float(result.values[0])


def top_eigenvalue(obj: lv.Objective, reference: float, repeats: int) -> dict:
    def error(value: float) -> float:
        return abs(value - reference) / abs(reference)

    with HessianOperator(obj) as op:
        power = [error(e) for e in power_iteration(op, 2000)]
    lanczos = {b: error(lanczos_at_budget(obj, b)) for b in BUDGETS}
    power_target = next((i + 1 for i, e in enumerate(power) if e <= 1e-3), None)
    lanczos_target = None
    for budget in range(2, 200):
        if error(lanczos_at_budget(obj, budget)) <= 1e-6:
            lanczos_target = budget
            break
    times: dict[str, list[float]] = {"lossvista": [], "power": []}
    for _ in range(repeats):  # interleaved; each includes the graph build of its operator
        tick = time.perf_counter()
        default = hessian_eigs(obj, 1)
        times["lossvista"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        with HessianOperator(obj) as op:
            ruled = power_iteration(op, 100, rule=True)
        times["power"].append(time.perf_counter() - tick)
    return {
        "reference": reference,
        "budgets": {b: (lanczos[b], power[b - 1]) for b in BUDGETS},
        "power_to_1e-3": power_target,
        "lanczos_to_1e-6": lanczos_target,
        "default": (default.n_hvp, error(float(default.values[0])), bool(default.converged[0])),
        "pyhessian": (len(ruled), error(ruled[-1])),
        "seconds": {k: statistics.median(v) for k, v in times.items()},
    }


# -- trace ----------------------------------------------------------------------------------------
def exact_relu_trace(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """``tr(H) = 1/N sum_n tr(A_n J_n J_n^T)`` for a piecewise-linear network (float64)."""
    model = copy.deepcopy(model).double()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def logits(p, x):
        return torch.func.functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)

    jacobian = torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))
    total = 0.0
    for start in range(0, len(y), 128):
        x = X[start : start + 128].double()
        jac = jacobian(params, x)  # name -> (n, classes, *shape)
        flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)
        gram = flat @ flat.transpose(1, 2)  # (n, classes, classes)
        p = torch.softmax(model(x), dim=1).detach()
        a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        total += float((a * gram).sum())
    return total / len(y)


def traces(obj: lv.Objective, exact: float) -> dict:
    rows = {}
    for budget in TRACE_BUDGETS:
        for method in ("hutchinson", "hutch++"):
            tick = time.perf_counter()
            result = hessian_trace(obj, method=method, n_probes=budget, seed=0)
            seconds = time.perf_counter() - tick
            rows[(budget, method)] = (result.estimate, result.stderr, result.n_hvp, seconds)
    return {"exact": exact, "rows": rows}


# -- report ---------------------------------------------------------------------------------------
def report(products, accuracy, eig, trace, choice, repeats, threads, batches) -> str:
    gradient = products["gradient"]
    lines = [
        f"## bench_hessian ({dt.date.today().isoformat()})",
        "",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.platform()}; torch {torch.__version__}, "
        f"lossvista {lv.__version__}",
        f"- command: `python benchmarks/bench_hessian.py --repeats {repeats}"
        f"{f' --threads {threads}' if threads else ''}`",
        "- MLP 64-128-128-10 (ReLU, float32, 26,122 parameters) after 30 Adam steps, exact loss "
        f"over all 1797 digits (the objective's default batches: {batches})",
        "",
        f"### Hessian-vector products (median of {repeats} interleaved rounds of {CALLS} calls)",
        "",
        "| backend | ms per product | x one gradient | rel. diff vs forward_over_reverse |",
        "|---|---|---|---|",
    ]
    for name, seconds in products.items():
        diff = accuracy.get(name.split(",")[0], None) if name != "gradient" else None
        lines.append(
            f"| {name} | {1e3 * seconds:.2f} | {seconds / gradient:.2f}x | "
            f"{'' if diff is None else f'{diff:.1e}'} |"
        )
    lines += [
        "",
        f'`backend="auto"` measured on the first batch {", ".join(f"{m} {1e3 * s:.2f} ms" for m, s in choice.seconds.items())}'
        f" and chose {choice.fastest} for one-off products; operators keep the graph "
        "(double_backward, kept graph).",
        "",
        f"### Top eigenvalue (reference {eig['reference']:.10g}, float64, tol 1e-12)",
        "",
        "| products | lossvista rel. error | power iteration rel. error |",
        "|---|---|---|",
    ]
    for budget, (lanczos, power) in eig["budgets"].items():
        lines.append(f"| {budget} | {lanczos:.1e} | {power:.1e} |")
    n_default, err_default, ok = eig["default"]
    n_rule, err_rule = eig["pyhessian"]
    target = eig["lanczos_to_1e-6"]
    power_target = eig["power_to_1e-3"]
    met = target is not None and power_target is not None and target <= power_target
    lines += [
        "",
        "| run as a user would | products | rel. error | wall time (s) |",
        "|---|---|---|---|",
        f"| lossvista `hessian_eigs(obj)` (tol 1e-6, converged={ok}) | {n_default} | "
        f"{err_default:.1e} | {eig['seconds']['lossvista']:.3f} |",
        f"| power iteration, PyHessian's rule (rel. change < 1e-3) | {n_rule} | {err_rule:.1e} | "
        f"{eig['seconds']['power']:.3f} |",
        "",
        f"Products to reach the target: lossvista to 1e-6: {target}; power iteration to 1e-3: "
        f"{power_target}. Target (lossvista at 1e-6 in no more products than power iteration at "
        f"1e-3): {'met' if met else 'NOT met'}.",
        "",
        f"### Trace (exact {trace['exact']:.8g}; seed 0)",
        "",
        "| products | method | estimate ± stderr | error / stderr | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for (budget, method), (estimate, stderr, _, seconds) in trace["rows"].items():
        ratio = abs(estimate - trace["exact"]) / stderr if stderr > 0 else math.inf
        lines.append(
            f"| {budget} | {method} | {estimate:.6g} ± {stderr:.2g} | {ratio:.2f} | {seconds:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="append the table to this file")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y = digits()
    model = train(mlp(), X, y)
    obj = lv.Objective(model, F.cross_entropy, (X, y))
    choice = hvp_choice(obj)
    double = copy.deepcopy(model).double()
    reference = hessian_eigs(lv.Objective(double, F.cross_entropy, (X.double(), y)), 1, tol=1e-12)
    products = time_products(obj, args.repeats)
    accuracy = product_accuracy(obj)
    eig = top_eigenvalue(obj, float(reference.values[0]), args.repeats)
    trace = traces(obj, exact_relu_trace(model, X, y))
    batches = "+".join(str(len(t)) for _, t in obj.batches())
    text = report(products, accuracy, eig, trace, choice, args.repeats, args.threads, batches)
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
