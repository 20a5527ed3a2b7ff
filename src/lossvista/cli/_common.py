"""What the command-line verbs share: option types, building the objective, errors, output."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import math
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
from ..landscape import Landscape
from ..objective import BUILTIN_METRICS, Objective
from . import _spec

BUILTIN_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
}
IGNORE_KEYWORDS = ("bias", "bn", "biasbn", "none")
#: Batch size for a map-style ``Dataset`` returned by --data (it needs a DataLoader around it).
DATASET_BATCH_SIZE = 256


# -- option types ---------------------------------------------------------------------------------
class StepsType(click.ParamType):
    """``51`` (every axis) or ``51,41`` (one count per axis)."""

    def __init__(self, axes: int):
        self.axes = axes
        self.name = "n" if axes == 1 else "n[,n]"  # the metavar in --help, upper-cased

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) > self.axes:
            self.fail(f"{value!r}: give {self._expect()}", param, ctx)
        try:
            counts = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not {self._expect()}", param, ctx)
        for count in counts:
            if count < 2:
                self.fail(
                    f"{value!r}: every axis needs at least 2 points (both ends of the span), "
                    f"got {count}",
                    param,
                    ctx,
                )
        return counts * self.axes if len(counts) == 1 else counts

    def _expect(self) -> str:
        if self.axes == 1:
            return "one whole number of points such as 51"
        return "a number of points such as 21 (both axes) or 21,31 (one per axis)"


class SpanType(click.ParamType):
    """``-1:1`` (every axis) or ``-1:1,-0.5:0.5`` (one range per axis)."""

    def __init__(self, axes: int):
        self.axes = axes
        self.name = "min:max" if axes == 1 else "min:max[,min:max]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[tuple[float, float], ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) > self.axes:
            self.fail(f"{value!r}: give {self._expect()}", param, ctx)
        spans = []
        for part in parts:
            pieces = part.split(":")
            try:
                if len(pieces) != 2:
                    raise ValueError
                lo, hi = float(pieces[0]), float(pieces[1])
            except ValueError:
                self.fail(f"{part!r} is not MIN:MAX; give {self._expect()}", param, ctx)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                self.fail(f"{part!r}: both ends must be finite numbers", param, ctx)
            if not lo < hi:
                self.fail(
                    f"{part!r}: MIN must be below MAX (write {min(lo, hi):g}:{max(lo, hi):g})"
                    if lo != hi
                    else f"{part!r}: MIN and MAX are equal; the span must have a length",
                    param,
                    ctx,
                )
            spans.append((lo, hi))
        return tuple(spans) * self.axes if len(spans) == 1 else tuple(spans)

    def _expect(self) -> str:
        if self.axes == 1:
            return "one range MIN:MAX such as -1:1"
        return "MIN:MAX for both axes (-1:1) or one per axis (-1:1,-0.5:0.5)"


# -- errors and warnings --------------------------------------------------------------------------
def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into clean click messages (exit code 1), warnings into stderr lines."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
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
    click.echo(f"Warning: {message}", err=True)


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


def build_model(spec: str, seed: int) -> nn.Module:
    """Call the model factory under ``torch.manual_seed(seed)`` (so its initialisation repeats)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _spec.call_factory(spec, "'--model'")
    if not isinstance(model, nn.Module):
        raise click.BadParameter(
            f"{spec!r}() returned a {type(model).__name__}, expected a torch.nn.Module",
            param_hint="'--model'",
        )
    return model


def load_into(model: nn.Module, checkpoint: str | Path, option: str, unsafe: bool) -> nn.Module:
    try:
        return load_checkpoint(model, checkpoint, weights_only=not unsafe)
    except CheckpointError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


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


def build_objective(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Any,
    *,
    data_spec: str,
    metrics: list[Any],
    params: Sequence[str],
    device: torch.device,
    batch_size: int | None,
    subset: int | None,
    seed: int,
    bn: str,
) -> Objective:
    with data_errors(data_spec):
        return Objective(
            model,
            loss_fn,
            data,
            metrics=metrics,
            params=list(params) or None,
            device=device,
            batch_size=batch_size,
            subset=subset,
            seed=seed,
            bn=bn,  # type: ignore[arg-type]
        )


@contextlib.contextmanager
def data_errors(data_spec: str) -> Iterator[None]:
    """A :class:`DataError` (also one found while evaluating) is a bad ``--data`` (exit code 2)."""
    try:
        yield
    except DataError as exc:
        raise click.BadParameter(f"{data_spec!r}: {exc}", param_hint="'--data'") from exc


def parse_ignore(ignore: str, parameter_names: Sequence[str]) -> tuple[str, ...]:
    """``biasbn``, ``bias``, ``bn``, ``none`` or a comma list of those and globs."""
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


# -- output ---------------------------------------------------------------------------------------
def headless_pyplot() -> Any:
    """pyplot on the Agg backend: the command line only writes files, it never opens windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(landscape: Landscape, out: Path, /, **kwargs: Any) -> Path:
    """Draw ``landscape`` (``kwargs`` go to ``Landscape.plot``, ``path=`` included) into ``out``."""
    plt = headless_pyplot()
    figure = landscape.plot(**kwargs)
    try:
        figure.savefig(out, dpi=150, bbox_inches="tight")
    finally:
        plt.close(figure)
    return out


def computed_in(path: Path) -> int:
    """Points already computed in an existing surface file (0 when there is none or it is bad)."""
    from ..store import load

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
