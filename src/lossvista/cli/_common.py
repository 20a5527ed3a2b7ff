"""What the command-line verbs share: errors, building the model and objective, output, and the
run of a command that writes a surface file. Their options are in :mod:`._options`."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..checkpoint import load_checkpoint
from ..errors import (
    CenterMismatchError,
    CheckpointError,
    DataError,
    LossvistaError,
    StoreMismatchError,
)
from ..landscape import Interpolation, Landscape
from ..objective import BUILTIN_METRICS, Objective
from . import _spec

BUILTIN_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
}
IGNORE_KEYWORDS = ("bias", "bn", "norm", "biasbn", "biasnorm", "none")
#: Batch size for a map-style ``Dataset`` returned by --data (it needs a DataLoader around it).
DATASET_BATCH_SIZE = 256


# -- errors and warnings --------------------------------------------------------------------------
def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into clean click messages (exit code 1), warnings into stderr lines."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            # Deprecations inside torch and friends are not the user's business here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.showwarning = _show_warning
            try:
                return command(*args, **kwargs)
            except StoreMismatchError as exc:
                raise click.ClickException(
                    f"{exc}\n(On the command line: --no-resume overwrites the file.)"
                ) from exc
            except CenterMismatchError as exc:
                raise click.ClickException(
                    f"{exc}\n(The command line always checks the centre: make the model's forward "
                    "pass and the --data factory deterministic.)"
                ) from exc
            except LossvistaError as exc:
                raise click.ClickException(str(exc)) from exc

    return wrapper


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """A warning as one line on stderr: ``Warning: <message>``, without the source line.

    Written through ``tqdm.write``, so that a warning raised while a grid runs (the long-run
    estimate after its first chunk, a non-finite point) lands above the progress bar, which is
    redrawn below it, instead of being spliced into the bar's line.
    """
    from tqdm.auto import tqdm  # lazily, like the engine's progress bar

    tqdm.write(f"Warning: {message}", file=sys.stderr)


# -- building the pieces ---------------------------------------------------------------------------
def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise click.BadParameter(
            f"{device!r} is not a device; use auto, cpu, cuda or cuda:N", param_hint="'--device'"
        ) from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(
            f"{device!r}: CUDA is not available in this environment; use --device cpu",
            param_hint="'--device'",
        )
    return chosen


def build_model(spec: str, seed: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the model factory with ``kwargs`` under ``torch.manual_seed(seed)`` (so its
    initialisation repeats)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _spec.call_factory(spec, "'--model'", kwargs, "--model-kwargs")
    if not isinstance(model, nn.Module):
        raise click.BadParameter(
            f"{spec!r}() returned a {type(model).__name__}, expected a torch.nn.Module",
            param_hint="'--model'",
        )
    return model


def build_data(spec: str, seed: int, batch_size: int | None) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = _spec.call_factory(spec, "'--data'")
    if data is None:
        raise click.BadParameter(
            f"{spec!r}() returned None; return a tuple (X, y) of tensors, a DataLoader, a Dataset "
            "or an iterable of (X, y) batches",
            param_hint="'--data'",
        )
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        # A map-style dataset yields single samples; batch it, in order.
        data = DataLoader(data, batch_size=batch_size or DATASET_BATCH_SIZE, shuffle=False)
    return data


def resolve_loss(loss: str) -> Callable[..., torch.Tensor]:
    if loss in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[loss]
    if ":" not in loss:
        raise click.BadParameter(
            f"unknown loss {loss!r}; use {' or '.join(BUILTIN_LOSSES)}, or name a callable "
            f"loss_fn(output, target) as {_spec.SPEC_FORMS}",
            param_hint="'--loss'",
        )
    return _instantiate(_spec.resolve_callable(loss, "'--loss'"), loss, "'--loss'")


def resolve_metrics(metrics: Sequence[str], loss: str) -> list[Any]:
    if not metrics:
        return ["accuracy"] if loss == "cross_entropy" else []
    if "none" in metrics:
        if len(metrics) > 1:
            raise click.BadParameter(
                "'none' cannot be combined with other metrics", param_hint="'--metric'"
            )
        return []
    out: list[Any] = []
    for metric in metrics:
        if metric in BUILTIN_METRICS:
            out.append(metric)
        elif ":" in metric:
            fn = _spec.resolve_callable(metric, "'--metric'")
            out.append(_instantiate(fn, metric, "'--metric'"))
        else:
            raise click.BadParameter(
                f"unknown metric {metric!r}; use {', '.join(BUILTIN_METRICS)}, none, or name a "
                f"callable f(output, target) -> scalar as {_spec.SPEC_FORMS}",
                param_hint="'--metric'",
            )
    return out


def _instantiate(fn: Any, spec: str, option: str) -> Any:
    """An ``nn.Module`` class (``torch.nn:L1Loss``) is instantiated; functions are kept."""
    if isinstance(fn, type) and issubclass(fn, nn.Module):
        try:
            return fn()
        except Exception as exc:
            raise click.BadParameter(
                f"{spec!r}() raised {type(exc).__name__}: {exc}", param_hint=option
            ) from exc
    return fn


@contextlib.contextmanager
def data_errors(data_spec: str) -> Iterator[None]:
    """A :class:`DataError` (also one found while evaluating) is a bad ``--data`` (exit code 2),
    except a loss or metric that cannot read a model output that is not a tensor: a bad
    ``--loss`` (or ``--metric``), with an example of one that reads ``.logits``."""
    try:
        yield
    except DataError as exc:
        output_type = getattr(exc, "output_type", None)
        if output_type is not None and isinstance(exc, (TypeError, AttributeError)):
            raise _output_error(exc, output_type) from exc
        raise click.BadParameter(f"{data_spec!r}: {exc}", param_hint="'--data'") from exc


def _output_error(exc: DataError, output_type: str) -> click.BadParameter:
    metric = str(getattr(exc, "failed_part", "")).startswith("metric")
    option = "--metric" if metric else "--loss"
    example = (
        "--metric my_metrics.py:token_accuracy"
        if metric
        else "--loss my_losses.py:lm_loss with def lm_loss(out, y): return "
        "F.cross_entropy(out.logits.flatten(0, -2), y.flatten())"
    )
    return click.BadParameter(
        f"the model returns a {output_type}, not a tensor, so the {option[2:]} cannot read it: "
        f"name a {option[2:]} that picks the logits (out.logits, or out['logits'] for a dict), "
        f"e.g. {example}. ({exc})",
        param_hint=f"'{option}'",
    )


def parse_ignore(ignore: str, parameter_names: Sequence[str]) -> tuple[str, ...]:
    """``biasbn``/``biasnorm``, ``bias``, ``bn``/``norm``, ``none`` or a comma list of those
    and globs."""
    tokens = tuple(t.strip() for t in ignore.split(",") if t.strip())
    if "none" in tokens:
        if len(tokens) > 1:
            raise click.BadParameter(
                "'none' cannot be combined with other entries", param_hint="'--ignore'"
            )
        return ()
    for token in tokens:
        if token not in IGNORE_KEYWORDS and not any(
            fnmatch.fnmatchcase(n, token) for n in parameter_names
        ):
            shown = ", ".join(list(parameter_names)[:12])
            raise click.BadParameter(
                f"{token!r} is not one of {', '.join(IGNORE_KEYWORDS)} and matches no parameter "
                f"name (parameters: {shown}{', ...' if len(parameter_names) > 12 else ''})",
                param_hint="'--ignore'",
            )
    return tokens


class Inputs:
    """The model and the objective that a command's options name.

    ``options`` are the command's keyword arguments: ``model_spec``, ``data_spec``, ``loss``,
    ``metrics`` (a command without --metric evaluates the loss alone), ``params``, ``bn``,
    ``batch_size``, ``subset``, ``device``, ``seed`` and ``unsafe_load``. The device, the loss and
    the metrics are checked here, before any factory runs.
    """

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.seed: int = options["seed"]
        self.device = pick_device(options["device"])
        self.loss_fn = resolve_loss(options["loss"])
        self.metrics = (
            resolve_metrics(options["metrics"], options["loss"]) if "metrics" in options else []
        )

    def model(self, checkpoint: Path | None, option: str = "'--checkpoint'") -> nn.Module:
        """A fresh model from --model with ``checkpoint`` loaded (``option`` names it in errors),
        on the device."""
        model = build_model(
            self.options["model_spec"], self.seed, self.options.get("model_kwargs") or {}
        )
        if checkpoint is not None:
            try:
                load_checkpoint(model, checkpoint, weights_only=not self.options["unsafe_load"])
            except CheckpointError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from exc
        try:
            return model.to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise click.BadParameter(
                f"cannot move the model to {self.device}: {exc}", param_hint="'--device'"
            ) from exc

    def objective(self, model: nn.Module, *, bn_as_given: bool = False) -> Objective:
        """The objective of ``model`` on the --data.

        Unless ``bn_as_given``, --bn recompute on a model without BatchNorm layers becomes eval:
        the same values, and the engine may then evaluate many points at once.
        """
        data_spec = self.options["data_spec"]
        data = build_data(data_spec, self.seed, self.options["batch_size"])
        bn = self.options["bn"]
        if not bn_as_given and bn == "recompute" and not _has_batchnorm(model):
            bn = "eval"
        with data_errors(data_spec):
            return Objective(
                model,
                self.loss_fn,
                data,
                metrics=self.metrics,
                params=_params(self.options["params"]),
                device=self.device,
                batch_size=self.options["batch_size"],
                subset=self.options["subset"],
                seed=self.seed,
                bn=bn,  # type: ignore[arg-type]
                count=self.options.get("count", "samples"),
            )


def _params(given: Sequence[str]) -> str | list[str] | None:
    """--params: None (the trainable parameters), "all", or names and globs."""
    if tuple(given) in (("all",), ("trainable",)):
        return given[0]
    return list(given) or None


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def named_inputs(options: dict[str, Any]) -> dict[str, Any]:
    """What --model (with --model-kwargs), --data and --checkpoint named, for a JSON summary."""
    checkpoint = options["checkpoint"]
    return {
        "model": options["model_spec"],
        "model_kwargs": options.get("model_kwargs") or {},
        "data": options["data_spec"],
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }


# -- output ---------------------------------------------------------------------------------------
def headless_pyplot() -> Any:
    """pyplot on the Agg backend: the command line only writes files, it never opens windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(draw: Callable[[], Any], path: Path) -> Path:
    """``draw()`` on the Agg backend, saved to ``path`` and closed."""
    plt = headless_pyplot()
    figure = draw()
    try:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def save_plot(landscape: Landscape, out: Path, /, **kwargs: Any) -> Path:
    """Draw ``landscape`` (``kwargs`` go to ``Landscape.plot``, ``path=`` included) into ``out``."""
    return save_figure(lambda: landscape.plot(**kwargs), out)


def computed_in(path: Path) -> int:
    """Points already computed in an existing surface file (0 when there is none or it is bad)."""
    from .._result import load

    if not path.is_file():
        return 0
    try:
        return int(load(path).computed.sum())
    except (LossvistaError, OSError, KeyError, ValueError):
        return 0


def format_values(values: dict[str, float]) -> str:
    """``loss 0.123 (accuracy 0.97)``, standard errors shown as ``± se``."""
    shown = []
    order = sorted(values, key=lambda name: name != "loss")  # loss first; files sort names
    for name in order:
        value = values[name]
        if name.endswith("_stderr"):
            continue
        text = f"{name} {value:.6g}"
        if f"{name}_stderr" in values:
            text += f" ± {values[f'{name}_stderr']:.2g}"
        shown.append(text)
    if not shown:
        return "(none)"
    head, rest = shown[0], shown[1:]
    return head + (f" ({', '.join(rest)})" if rest else "")


# -- commands that write a surface file (line, plane, interpolate, trajectory) ---------------------
class SurfaceRun(Inputs):
    """:class:`Inputs` plus --out, --resume, --strategy and the report of the surface file."""

    def __init__(self, options: dict[str, Any]):
        self.quiet: bool = options["quiet"]
        self.out: Path = options["out"]
        super().__init__(options)

    def engine_options(self) -> dict[str, Any]:
        """The keyword arguments of :mod:`lossvista.slices` that the options set."""
        options = self.options
        return dict(store=self.out, resume=options["resume"], strategy=options["strategy"],
                    points_per_pass=options.get("points_per_pass"),
                    precision=options.get("precision"), progress=not self.quiet)  # fmt: skip

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Data errors name --data; an interrupted run says how to go on."""
        with data_errors(self.options["data_spec"]):
            try:
                yield
            except KeyboardInterrupt:
                done = computed_in(self.out)
                raise click.ClickException(
                    f"interrupted; {done} points are stored in {self.out}. Run the same command "
                    "again to compute only the rest."
                ) from None

    def computed_before(self) -> int:
        """Points of --out that this run will not compute again."""
        return 0 if self.options["resume"] is False else computed_in(self.out)

    def finish(
        self,
        result: Landscape,
        before: int,
        seconds: float,
        pictures: dict[Path, dict[str, Any]],
    ) -> None:
        """Draw ``pictures`` (path -> ``Landscape.plot`` arguments) unless --no-png; report."""
        written = [self.out]
        if self.options["png"]:
            for path, kwargs in pictures.items():
                written.append(save_plot(result, path, **kwargs))
        if self.quiet:
            return
        total = int(result._computed_mask().sum())
        size = " x ".join(str(s) for s in result.shape)
        click.echo(
            f"{result.kind}: {size} points, {total - before} computed now"
            + (f", {before} taken from the existing file" if before else "")
            + f" ({seconds:.1f} s)"
        )
        where = "start θ_a (t = 0)" if isinstance(result, Interpolation) else "centre"
        click.echo(f"{where}: {format_values(result.center)}")
        check = result.center_check or {}
        if check:
            click.echo(
                f"centre check: {'ok' if check.get('ok') else 'MISMATCH'} (engine "
                f"{check['engine']:.8g} vs objective {check['expected']:.8g}, relative error "
                f"{check['relative_error']:.1e})"
            )
        if isinstance(result, Interpolation):
            end = result.endpoints.get("b", {})
            click.echo(f"end θ_b (t = 1): {format_values(end)}")
            click.echo(f"barrier: {result.barrier:.6g} (at t = {result.barrier_t:.4g})")
        if result.nonfinite:
            click.echo(f"non-finite points: {result.nonfinite} (stored as NaN)")
        click.echo("wrote:")
        for path in written:
            click.echo(f"  {path}")
