"""``lossvista sharpness``: a model, a checkpoint and data -> a JSON summary of one sharpness value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import _dist
from .._result import write_json_file
from .._version import __version__
from ..curvature.summary import SHARPNESS_SUMMARY_FORMAT, summary_document
from ..sharpness import DEFAULT_ASCENT_STEPS, KINDS, NOISES, NORMS, Sharpness
from ..sharpness import sharpness as measure
from ._common import Inputs, data_errors, friendly_errors, named_inputs
from ._options import DATA, MODEL, checkpoint, measurement, options, out_file


@click.command()
@options(
    MODEL,
    DATA,
    checkpoint("the centre of the neighbourhood whose sharpness is measured"),
    out_file(
        "JSON summary",
        "sharpness.json",
        optional="Without it the result is only printed.",
    ),
    click.option(
        "--kind",
        type=click.Choice(KINDS),
        required=True,
        help="worst: largest loss increase in a ball (--norm); adaptive: the same in the "
        "scale-invariant ball |eps_i| ~ rho (|theta_i| + eta) (Kwon et al. 2021); epsilon: the "
        "box |eps_i| <= rho (|theta_i| + 1) (Keskar et al. 2017); average: mean increase under "
        "noise (--noise); hessian: rho^2 lambda_max / 2.",
    ),
    click.option(
        "--rho",
        type=click.FloatRange(min=0.0, min_open=True),
        required=True,
        help="Radius of the ball or box; for average, the noise standard deviation per parameter "
        "(gaussian) or the sphere radius (sphere).",
    ),
    click.option(
        "--norm",
        type=click.Choice(NORMS),
        default=None,
        help="Ball of worst and adaptive: l2 (default) or linf.",
    ),
    click.option(
        "--noise",
        type=click.Choice(NOISES),
        default="gaussian",
        show_default=True,
        help="Noise of average: gaussian, or uniform on the sphere of radius --rho.",
    ),
    click.option(
        "--samples",
        type=click.IntRange(min=2),
        default=100,
        show_default=True,
        help="Noise draws of average (each evaluated at +eps and -eps).",
    ),
    click.option(
        "--ascent-steps",
        "--steps",
        "ascent_steps",
        type=click.IntRange(min=1),
        default=DEFAULT_ASCENT_STEPS,
        show_default=True,
        help="Gradient-ascent steps per start (worst, adaptive, epsilon). --steps is its old "
        "name (elsewhere --steps counts grid points).",
    ),
    click.option(
        "--restarts",
        type=click.IntRange(min=0),
        default=2,
        show_default=True,
        help="Random starting points inside the ball, besides the unperturbed model.",
    ),
    click.option(
        "--eta",
        type=click.FloatRange(min=0.0),
        default=0.0,
        show_default=True,
        help="Added to |theta| in the scale of adaptive.",
    ),
    *measurement(
        bn_note="The ascent kinds (worst, adaptive, epsilon) recompute them once, at the "
        "checkpoint, and hold them fixed.",
        seed_uses="the random starts and the noise",
    ),
)
@friendly_errors
def sharpness(**options: Any) -> None:
    """How much the loss rises around a checkpoint: one sharpness value as a loss increase.

    Prints the value; with --out also writes it, its settings and the objective's settings
    (JSON, which lossvista.load and lossvista report read as the Sharpness result).
    """
    ascent_steps = options["ascent_steps"]
    _dist.use_local_device()  # under torchrun/srun: --device cuda is this rank's GPU
    with data_errors(options["data_spec"]):
        inputs = Inputs(options)
        # As given: the summary records the BatchNorm policy that was asked for.
        objective = inputs.objective(inputs.model(options["checkpoint"]), bn_as_given=True)
        result = measure(
            objective,
            kind=options["kind"],
            rho=options["rho"],
            norm=options["norm"],
            ascent_steps=ascent_steps,
            restarts=options["restarts"],
            eta=options["eta"],
            noise=options["noise"],
            samples=options["samples"],
            seed=options["seed"],
        )
    if _dist.secondary_rank():  # under torchrun/srun rank 0 alone reports and writes
        return
    out: Path | None = options["out"]
    if out is not None:
        fields = {
            "sharpness": result.as_dict(),
            "objective": objective.settings(),
            **named_inputs(options),
            "lossvista": __version__,
        }
        # "results" holds the lossless state: lv.load gives back a Sharpness equal to `result`.
        states = {"sharpness": result._state()}
        summary = summary_document(SHARPNESS_SUMMARY_FORMAT, fields, states)
        write_json_file(out, summary, what="JSON summary")  # strict JSON: a NaN value is null
    if not options["quiet"] or out is None:  # without --out the printed value is the result
        click.echo(_describe(result))
    if out is not None and not options["quiet"]:
        click.echo(f"wrote: {out}")


def _describe(result: Sharpness) -> str:
    spread = f" ± {result.stderr:.2g}" if result.kind == "average" else ""
    bound = " (a lower bound)" if result.kind in ("worst", "adaptive", "epsilon") else ""
    lines = [
        f"{result.kind} sharpness (loss increase): {result.value:.6g}{spread}{bound}",
        f"rho {result.rho:g}; loss {result.base_loss:.6g} -> {result.perturbed_loss:.6g}; "
        f"{result.n_evaluations} evaluations",
    ]
    if result.keskar is not None:
        lines.append(f"Keskar's normalised sharpness: {result.keskar:.6g}")
    if result.lambda_max is not None:
        lines.append(f"lambda_max: {result.lambda_max:.6g}")
    if result.converged is False:
        if result.kind == "hessian":
            lines.append(
                "not converged: the eigensolver did not reach its tolerance; lambda_max is its "
                "best estimate"
            )
        else:
            lines.append(
                f"not converged: the ascent was still climbing after {result.settings['steps']} "
                "steps per start; more --ascent-steps may find a larger value"
            )
    return "\n".join(lines)
