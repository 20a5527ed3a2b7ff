"""``lossvista hessian``: a model, a checkpoint and data -> Hessian eigenvalues, trace, density and
the critical-point verdict, as ``hessian.json`` (and ``density.png``) in a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import _dist
from .._json import json_ready
from .._result import write_json_file
from .._version import __version__
from ..curvature import (
    HessianSummary,
    critical_point,
    hessian_density,
    hessian_eigs,
    hessian_trace,
)
from ..curvature.hvp import BACKENDS
from ..curvature.summary import HESSIAN_SUMMARY_FORMAT, hessian_summary_states, summary_document
from ._common import Inputs, data_errors, friendly_errors, named_inputs
from ._options import DATA, MODEL, checkpoint, measurement, options, out_folder

SUMMARY = "hessian.json"
DENSITY_PLOT = "density.png"


@click.command()
@options(
    MODEL,
    DATA,
    checkpoint("the point whose Hessian is measured"),
    out_folder(f"Folder for {SUMMARY} (and {DENSITY_PLOT} with --density); created if needed."),
    click.option(
        "--top-k",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="How many of the largest eigenvalues (Lanczos, each with its residual).",
    ),
    click.option(
        "--tol",
        type=click.FloatRange(min=0.0, min_open=True),
        default=None,
        help="Eigenpairs converge when |Hv - lambda v| <= TOL * |H|. Default: the library's, by "
        "the model's dtype (1e-6 for float64, 1e-5 for lower precision).",
    ),
    click.option(
        "--max-iter",
        type=click.IntRange(min=1),
        default=None,
        help="Most Lanczos steps per eigen solve (default max(300, 30 k)).",
    ),
    click.option(
        "--critical/--no-critical",
        default=True,
        show_default=True,
        help="Classify the point (minimum, maximum, saddle, degenerate) from the smallest "
        "eigenvalue and the gradient; --no-critical skips that solve (most of the products when "
        "--top-k is small) and writes critical_point: null.",
    ),
    click.option(
        "--trace/--no-trace",
        default=False,
        show_default=True,
        help="Also estimate the trace, with its standard error.",
    ),
    click.option(
        "--trace-method",
        type=click.Choice(["hutchinson", "hutch++"]),
        default="hutchinson",
        show_default=True,
        help="hutchinson (Rademacher probes) or hutch++ (Meyer et al. 2021; better when a few "
        "eigenvalues dominate).",
    ),
    click.option(
        "--probes",
        type=click.IntRange(min=4),
        default=100,
        show_default=True,
        help="Hessian-vector products spent on the trace.",
    ),
    click.option(
        "--density/--no-density",
        default=False,
        show_default=True,
        help=f"Also estimate the spectral density (SLQ) and draw {DENSITY_PLOT}.",
    ),
    click.option(
        "--runs",
        type=click.IntRange(min=1),
        default=10,
        show_default=True,
        help="SLQ runs (random start vectors) of the density.",
    ),
    click.option(
        "--lanczos-steps",
        type=click.IntRange(min=2),
        default=80,
        show_default=True,
        help="Lanczos steps (quadrature nodes) per SLQ run.",
    ),
    click.option(
        "--linear-density",
        is_flag=True,
        help=f"Draw {DENSITY_PLOT} on a linear density axis (default: log, where the outliers "
        "and the bulk near zero both show).",
    ),
    click.option(
        "--hvp-backend",
        type=click.Choice(["auto", *BACKENDS]),
        default=None,
        help="Hessian-vector product backend [default: auto]; auto measures the exact ones and "
        "keeps the fastest that works (finite_difference only when neither does).",
    ),
    click.option(
        "--hvp",
        "hvp_legacy",
        type=click.Choice(["auto", *BACKENDS]),
        default=None,
        hidden=True,
        help="Deprecated name of --hvp-backend.",
    ),
    *measurement(
        bn_note="For the Hessian they are computed once, at the checkpoint, and held constant.",
        seed_uses="the Lanczos start vector, the trace probes and the density runs",
    ),
)
@friendly_errors
def hessian(**options: Any) -> None:
    """Curvature at a checkpoint: the largest Hessian eigenvalues (with residuals), the
    critical-point verdict (minimum, maximum, saddle or degenerate; --no-critical skips it), and
    optionally the trace and the spectral density.

    Writes OUT/hessian.json, and OUT/density.png with --density. Eigenpairs that did not
    converge are marked false under "converged" in the file and named on stderr.
    """
    out: Path = options["out"]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create {str(out)!r}: {exc}", param_hint="'--out'"
        ) from exc
    # Under torchrun/srun every rank computes its share of each product (--device cuda is its
    # own GPU); rank 0 alone reports and writes.
    _dist.use_local_device()
    secondary = _dist.secondary_rank()
    say = (lambda text: None) if options["quiet"] or secondary else click.echo
    common = {"seed": options["seed"], "hvp_backend": _backend(options)}
    with data_errors(options["data_spec"]):
        inputs = Inputs(options)
        objective = inputs.objective(inputs.model(options["checkpoint"]))
        top = hessian_eigs(
            objective, options["top_k"], tol=options["tol"], max_iter=options["max_iter"], **common
        )
        say(_describe_eigs(top))
        density = None
        if options["density"]:
            density = hessian_density(
                objective, n_runs=options["runs"], n_steps=options["lanczos_steps"], **common
            )
        verdict = None
        if options["critical"]:
            verdict = critical_point(
                objective,
                eigs=top,
                density=density if density is not None else False,
                eig_tol=top.tol,
                max_iter=options["max_iter"],
                **common,
            )
            say(_describe_verdict(verdict))
        trace = None
        if options["trace"]:
            trace = hessian_trace(
                objective, method=options["trace_method"], n_probes=options["probes"], **common
            )
            say(f"trace: {trace.estimate:.6g} ± {trace.stderr:.2g} (stderr; {trace.method}, "
                f"{trace.n_hvp} products)")  # fmt: skip
    if secondary:
        return
    written = []
    if density is not None:
        say(f"density: {density.negative_mass:.2%} of the spectrum is negative")
        written.append(
            _save_density(density, out / DENSITY_PLOT, log=not options["linear_density"])
        )
    summary = _summary(options, objective, top, verdict, trace, density)
    path = write_json_file(out / SUMMARY, summary, what="summary")
    written.insert(0, path)
    say("wrote:")
    for item in written:
        say(f"  {item}")
    for line in _unconverged(top, verdict):  # even with --quiet: the numbers are provisional
        click.echo(f"Warning: {line}", err=True)


def _unconverged(top, verdict) -> list[str]:
    """One line per solve whose eigenpairs did not converge."""
    lines = []
    if not top.all_converged:
        missed = [f"{v:.6g}" for v, ok in zip(top.values, top.converged) if not ok]
        lines.append(
            f"{len(missed)} of {len(top.values)} top eigenpairs did NOT converge (values "
            f"{', '.join(missed)}; largest residual {float(top.residuals.max()):.1e}); "
            f'{SUMMARY} marks them false under "converged". Raise --max-iter or --tol.'
        )
    if verdict is not None and not verdict.converged:
        lines.append(
            f"the critical-point verdict ({verdict.kind}) is provisional: its extreme "
            f'eigenpairs did not converge ("critical_point": {{"converged": false}} in '
            f"{SUMMARY}). Raise --max-iter or --tol."
        )
    return lines


def _summary(options, objective, top, verdict, trace, density) -> dict[str, Any]:
    """The readable keys (unchanged since the first version), a ``format`` tag and the
    ``results`` that ``lv.load`` rebuilds as a :class:`HessianSummary`."""
    settings = json_ready(
        {
            **named_inputs(options),
            "top_k": options["top_k"],
            "critical": options["critical"],
            "tol": top.tol,
            "max_iter": options["max_iter"],
            "seed": options["seed"],
            "hvp": top.settings.get("hvp_backend"),
            "objective": objective.settings(),
            "lossvista": __version__,
        }
    )
    result = HessianSummary(
        eigs=top, critical_point=verdict, trace=trace, density=density, settings=settings
    )
    fields = _readable(top, verdict, trace, density, settings)
    return summary_document(HESSIAN_SUMMARY_FORMAT, fields, hessian_summary_states(result))


def _readable(top, verdict, trace, density, settings) -> dict[str, Any]:
    n_hvp = {
        "eigenvalues": top.n_hvp,
        "critical_point": None if verdict is None else verdict.eigs.n_hvp - top.n_hvp,
        "trace": None if trace is None else trace.n_hvp,
        "density": None if density is None else density.n_hvp,
    }
    n_hvp["total"] = sum(v for v in n_hvp.values() if v is not None)
    point = None
    if verdict is not None:
        point = verdict.as_dict()
        point.pop("eigs")
        point.pop("density")
    return json_ready(
        {
            "eigenvalues": top.values,
            "residuals": top.residuals,
            "converged": top.converged,
            "all_converged": bool(top.all_converged),
            "spectral_norm": top.spectral_norm,
            "n_hvp": n_hvp,
            "trace": None
            if trace is None
            else {
                "estimate": trace.estimate,
                "stderr": trace.stderr,
                "method": trace.method,
                "n_probes": trace.n_probes,
                "n_hvp": trace.n_hvp,
            },
            "critical_point": point,
            "density": None
            if density is None
            else {
                "negative_mass": density.negative_mass,
                "n_runs": density.n_runs,
                "n_steps": density.n_steps,
                "width": density.width,
                "plot": DENSITY_PLOT,
            },
            "settings": settings,
        }
    )


def _backend(options: dict[str, Any]) -> str:
    """--hvp-backend, or its old name --hvp (with a note on stderr)."""
    backend, legacy = options["hvp_backend"], options["hvp_legacy"]
    if legacy is None:
        return backend or "auto"
    if backend is not None:
        raise click.UsageError("give --hvp-backend only (--hvp is its deprecated old name)")
    click.echo("Warning: --hvp is deprecated; use --hvp-backend", err=True)
    return legacy


def _save_density(density, path: Path, *, log: bool) -> Path:
    # A bare Figure (no pyplot): nothing global changes and no window can open.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0))
    density.plot(ax=figure.add_subplot(), log=log)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    return path


def _describe_eigs(result) -> str:
    values = ", ".join(f"{v:.6g}" for v in result.values)
    done = int(result.converged.sum())
    return (
        f"top-{result.k} eigenvalues: {values} (converged {done}/{len(result.values)}, "
        f"max residual {float(result.residuals.max()):.1e}, {result.n_hvp} products)"
    )


def _describe_verdict(point) -> str:
    text = (
        f"critical point: {point.kind} (lambda_max {point.lambda_max:.6g}, lambda_min "
        f"{point.lambda_min:.6g}"
    )
    if point.condition_number is not None:
        text += f", condition number {point.condition_number:.4g}"
    text += f"; |grad| {point.grad_norm:.3g})"
    if point.note:
        text += f"\nnote: {point.note}"
    return text
