"""Permutation alignment of two networks' hidden units (Ainsworth et al. 2023, "Git Re-Basin").

Hidden units can be reordered without changing what a network computes: permute a layer's
output units, and the next layer's input columns the same way. :func:`align` finds the
reordering of ``model_b``'s units that best matches ``model_a``'s, so that the straight path
between ``model_a`` and the aligned ``model_b`` (``lv.interpolate``) compares like with like.

- ``method="weights"``: weight matching. For one permutation at a time, with the others fixed,
  the linear assignment that maximises the sum of inner products of every weight touching its
  axis, ``sum_i <W_a[i], W_b[perm[i]]>`` (``scipy.optimize.linear_sum_assignment``); the
  permutations are visited in a seeded random order until a full pass changes none of them.
- ``method="activations"``: activation matching. Both models run on ``data`` (in eval mode, on
  copies); each hidden layer's units (per channel for convolutions, the spatial positions
  stacked as samples) are matched by the correlation of their activations, one assignment per
  layer.

The axes to permute are found by tracing the model with ``torch.fx`` (:mod:`._fx_spec`):
``Linear``/``Conv`` layers, BatchNorm (weight, bias and running statistics), LayerNorm,
element-wise operations, dropout, pooling, flatten/view, and residual connections, which join the
blocks they connect into one permutation. A model that cannot be traced falls back to walking
``nn.Sequential`` chains (nested ones too); other models need the permutations by hand,
``spec=`` (see :func:`permutation_spec`). The model's inputs and outputs never move.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._checks import check_int
from .._result import Result
from ..errors import DataError, InputError
from . import _fx_spec, _fx_trace
from . import _permutation_spec as _spec

__all__ = ["Alignment", "align", "permutation_spec"]

Method = Literal["weights", "activations"]


@dataclasses.dataclass(eq=False, repr=False)
class Alignment(Result):
    """``model_b`` with its hidden units reordered to match ``model_a``.

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"alignment"``) that
    ``lossvista.load`` reads back. The file holds the permuted state dict, not the module: after
    loading, ``.model`` is not available; ``alignment.apply(model_b)`` (or ``load_state_dict`` of
    ``.state`` into a model of the same architecture) gives it again.

    Attributes:
        permutations: permutation name (the layer whose output units it orders; the layers a
            residual connection joins, as ``"a+b+c"`` or ``"a+...+z"``; or the name in a hand
            ``spec``) -> int64 index array: unit ``i`` of the aligned model is unit
            ``permutations[name][i]`` of ``model_b``.
        method: ``"weights"`` or ``"activations"``.
        settings: ``seed``, ``max_iter``, ``samples``, ``spec`` (perm -> ``[tensor, axis,
            block]`` lists) the alignment used and ``found_by`` (``"torch.fx"``,
            ``"nn.Sequential"`` or ``"spec"``).
        iterations: full passes over the permutations (weight matching; 1 for activations).
        state: the permuted state dict of the aligned model (parameters and buffers).
    """

    permutations: dict[str, np.ndarray]
    method: str
    settings: dict[str, Any]
    iterations: int
    state: dict[str, torch.Tensor]
    _model: nn.Module | None = dataclasses.field(default=None, compare=False)

    result_kind = "alignment"
    file_format = "hdf5"

    def _state(self) -> dict[str, Any]:
        return {
            "permutations": dict(self.permutations),
            "method": self.method,
            "settings": self.settings,
            "iterations": self.iterations,
            "state": dict(self.state),
        }

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> Alignment:
        perms = {k: np.asarray(v, dtype=np.int64) for k, v in state["permutations"].items()}
        settings = dict(state["settings"])
        settings["spec"] = {
            k: [(str(n), int(a), int(b)) for n, a, b in v] for k, v in settings["spec"].items()
        }
        tensors = dict(state["state"])
        return cls(perms, str(state["method"]), settings, int(state["iterations"]), tensors)

    @property
    def model(self) -> nn.Module:
        """The aligned copy of ``model_b`` (only for an alignment computed in this process)."""
        if self._model is None:
            raise InputError(
                "this alignment was loaded from a file, which keeps the permuted state dict but "
                "not the module: use alignment.apply(model_b) for the aligned model"
            )
        return self._model

    def apply(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` with this alignment's permutations applied to its parameters
        and buffers (``model`` has the names and shapes of the ``model_b`` that was aligned; it
        is not changed). Applied to ``model_b``, the result's state equals ``.state``."""
        if not isinstance(model, nn.Module):
            raise InputError(f"apply needs an nn.Module, got {type(model).__name__}")
        tensors = dict(model.state_dict())
        if not self.settings["spec"]:  # a single layer: nothing hidden to permute
            return copy.deepcopy(model)
        spec, sizes = _spec.checked(self.settings["spec"], tensors)
        for perm, size in sizes.items():
            if len(self.permutations[perm]) != size:
                raise InputError(
                    f"permutation {perm!r} orders {len(self.permutations[perm])} units, the "
                    f"model has {size} there: not the architecture that was aligned"
                )
        out = copy.deepcopy(model)
        with torch.no_grad():
            permuted = _spec.permute_tensors(tensors, spec, self.permutations)
            out.load_state_dict({n: t.clone() for n, t in permuted.items()})
        return out

    def units_moved(self) -> int:
        """How many hidden units (over all permutations) changed place."""
        return int(sum(np.sum(p != np.arange(len(p))) for p in self.permutations.values()))

    def _summary(self) -> list[tuple[str, Any]]:
        return [
            ("method", self.method),
            ("permuted axes", len(self.permutations)),
            ("units", int(sum(len(p) for p in self.permutations.values()))),
            ("units moved", self.units_moved()),
            ("iterations", self.iterations),
        ]


def permutation_spec(
    model: nn.Module, *, example_input: Any = None
) -> dict[str, list[tuple[str, int, int]]]:
    """The axes :func:`align` permutes in ``model``, in the format ``spec=`` takes.

    The format: ``{permutation name: [(tensor name, axis, block), ...]}`` where each tensor name
    is a key of ``model.state_dict()`` (parameters and buffers such as BatchNorm's
    ``running_mean``), ``axis`` is the axis holding the units and ``block`` (optional, default 1)
    the number of consecutive entries per unit along it (``H * W`` for the input columns of the
    first ``Linear`` after a ``Flatten`` of ``(C, H, W)`` channels). All axes of one permutation
    hold the same number of units and are reordered together; a residual connection is one
    permutation listing the axes of every block it joins. Example for a two-layer MLP
    ``fc1 -> relu -> fc2``: ``{"hidden": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight",
    1)]}``. A residual connection ``h + f(h)`` gives one permutation named after the layers it
    joins, ``"fc1+fc2"``.

    Args:
        model: the module (traced with torch.fx; not changed).
        example_input: one batch of inputs (a tensor or a tuple of positional inputs), needed
            when the layout depends on shapes (``view``/``reshape``, BatchNorm after a
            ``Linear``); the error says so.

    Raises:
        InputError: the model cannot be traced or holds an operation that cannot be aligned (the
            message names the module or graph node).
    """
    return _fx_spec.discover(model, _example(example_input, None, model)).spec


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: Any = None,
    method: Method = "weights",
    spec: Mapping[str, Iterable[Any]] | None = None,
    example_input: Any = None,
    seed: int = 0,
    max_iter: int = 100,
    samples: int = 1024,
) -> Alignment:
    """Reorder ``model_b``'s hidden units to match ``model_a``'s (Ainsworth et al. 2023).

    Args:
        model_a: the reference model (not changed).
        model_b: the model to permute (not changed; ``.model`` is a permuted deep copy that
            computes exactly the same function).
        data: for ``method="activations"``: a tensor of inputs, an ``(X, y)`` pair or an
            iterable of such batches; the first ``samples`` inputs are used. With ``data`` (or
            ``example_input``), the aligned model's outputs are checked against ``model_b``'s,
            and tracing sees the shapes.
        method: ``"weights"`` (weight matching) or ``"activations"`` (activation matching).
        spec: the permutations by hand, ``{name: [(tensor name, axis[, block]), ...]}`` (see
            :func:`permutation_spec`), for models that cannot be traced. Activation matching
            needs a traced model or an ``nn.Sequential`` chain (it reads each layer's output).
        example_input: one batch of inputs (a tensor or a tuple of positional inputs) for the
            shapes, when ``data`` is not given and tracing needs them (the error says so).
        seed: the order in which weight matching visits the permutations.
        max_iter: the most passes of weight matching.
        samples: how many inputs activation matching uses.

    Returns:
        An :class:`Alignment`.

    Raises:
        InputError: models of different architectures, a model that cannot be aligned (the
            message names the module), a wrong ``spec``, or a hand spec that changes the
            function on ``data``.
    """
    for label, model in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(model, nn.Module):
            raise InputError(f"{label} must be a torch.nn.Module, got {type(model).__name__}")
    if method not in ("weights", "activations"):
        raise InputError(f"method must be 'weights' or 'activations', got {method!r}")
    seed = check_int(seed, "seed")
    max_iter = check_int(max_iter, "max_iter", 1)
    samples = check_int(samples, "samples", 1)
    tensors_a = {n: t.detach() for n, t in model_a.state_dict().items()}
    tensors_b = {n: t.detach() for n, t in model_b.state_dict().items()}
    _check_same(tensors_a, tensors_b)
    if method == "activations" and spec is not None:
        raise InputError(
            "activation matching reads the layers that the tracing finds; with a hand spec use "
            "method='weights'"
        )
    if method == "activations" and data is None:
        raise InputError("method='activations' needs data= (inputs the models run on)")
    inputs = _inputs(data, samples) if data is not None else None
    found = None
    if spec is None:
        found = _fx_spec.discover(model_b, _example(example_input, inputs, model_b))
        spec_, sizes = _spec.checked(found.spec, tensors_b) if found.spec else ({}, {})
    else:
        spec_, sizes = _spec.checked(spec, tensors_b)
    if method == "activations" and found is not None and inputs is not None:  # both checked
        perms = _activation_matching(model_a, model_b, found, inputs)
        iterations = 1
    else:
        perms, iterations = _weight_matching(tensors_a, tensors_b, spec_, sizes, seed, max_iter)
    settings = {
        "seed": seed,
        "max_iter": max_iter,
        "samples": samples,
        "spec": {k: [(n, a, b) for n, a, b in v] for k, v in spec_.items()},
        "found_by": "spec" if found is None else "torch.fx" if found.traced else "nn.Sequential",
    }
    result = Alignment(perms, method, settings, iterations, {})
    aligned = result.apply(model_b)
    result.state = {n: t.detach().clone() for n, t in aligned.state_dict().items()}
    result._model = aligned
    check = (inputs,) if inputs is not None else _example(example_input, None, model_b)
    if check is not None and spec_:
        _check_function(model_b, aligned, check, hand=spec is not None)
    return result


def _example(example_input: Any, inputs: torch.Tensor | None, model: nn.Module) -> Any:
    """Positional inputs for one forward pass on ``model``'s device (a few of ``inputs`` when
    no ``example_input`` is given), or None."""
    if example_input is None:
        example = None if inputs is None else (inputs[:2],)
    elif isinstance(example_input, torch.Tensor):
        example = (example_input,)
    elif isinstance(example_input, tuple) and all(
        isinstance(x, torch.Tensor) for x in example_input
    ):
        example = example_input
    else:
        raise InputError(
            "example_input must be a tensor or a tuple of tensors (the positional inputs of "
            f"one forward pass), got {type(example_input).__name__}"
        )
    if example is None:
        return None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return tuple(x.to(device) for x in example)


def _check_same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if a.keys() != b.keys():
        differ = sorted(set(a) ^ set(b))[:8]
        raise InputError(f"model_a and model_b have different tensors: {differ}")
    shapes = [n for n in a if a[n].shape != b[n].shape]
    if shapes:
        raise InputError(f"model_a and model_b differ in the shapes of {shapes[:8]}")


# -- weight matching -------------------------------------------------------------------------------
def _weight_matching(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    spec: _spec.Spec,
    sizes: Mapping[str, int],
    seed: int,
    max_iter: int,
) -> tuple[dict[str, np.ndarray], int]:
    from scipy.optimize import linear_sum_assignment

    perms = {p: np.arange(n) for p, n in sizes.items()}
    by_tensor: dict[str, list[tuple[str, int, int]]] = {}
    for perm, entries in spec.items():
        for name, axis, block in entries:
            by_tensor.setdefault(name, []).append((perm, axis, block))
    rng = np.random.default_rng(seed)
    names = sorted(perms)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is returned)
        changed = False
        for perm in rng.permutation(names):
            n = sizes[perm]
            cost = np.zeros((n, n))
            for name, axis, _block in spec[perm]:
                wb = b[name]
                for other, other_axis, other_block in by_tensor[name]:
                    if (other, other_axis) != (perm, axis):
                        index = torch.as_tensor(perms[other])
                        wb = _spec.take(wb, other_axis, index, other_block)
                cost += _units(a[name], axis, n) @ _units(wb, axis, n).T
            rows, cols = linear_sum_assignment(cost, maximize=True)
            new = np.empty(n, dtype=np.int64)
            new[rows] = cols
            old_value = cost[np.arange(n), perms[perm]].sum()
            new_value = cost[np.arange(n), new].sum()
            # Only a strict gain counts, so that ties cannot make the passes cycle.
            if new_value > old_value + 1e-12 * max(1.0, abs(old_value)):
                perms[perm] = new
                changed = True
        if not changed:
            break
    return {p: np.asarray(v, dtype=np.int64) for p, v in perms.items()}, iterations


def _units(tensor: torch.Tensor, axis: int, n: int) -> np.ndarray:
    """``(n, -1)`` float64: one row per unit along ``axis`` (its block of entries included)."""
    moved = tensor.detach().to("cpu", torch.float64)
    shape = moved.shape
    grouped = moved.reshape(*shape[:axis], n, shape[axis] // n, *shape[axis + 1 :])
    return grouped.movedim(axis, 0).reshape(n, -1).numpy()


# -- activation matching ---------------------------------------------------------------------------
def _activation_matching(
    model_a: nn.Module, model_b: nn.Module, found: _fx_spec.Found, inputs: torch.Tensor
) -> dict[str, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    acts_a = _activations(model_a, found, inputs)
    acts_b = _activations(model_b, found, inputs)
    perms = {}
    for perm in found.probes:
        za, zb = _standardised(acts_a[perm]), _standardised(acts_b[perm])
        correlation = za.T @ zb / len(za)
        rows, cols = linear_sum_assignment(correlation, maximize=True)
        index = np.empty(len(rows), dtype=np.int64)
        index[rows] = cols
        perms[perm] = index
    return perms


def _activations(
    model: nn.Module, found: _fx_spec.Found, inputs: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per permutation, ``(rows, units)`` float64: the probe's output with the unit axis last and
    every other axis (samples, spatial positions) stacked as rows."""
    if found.traced:
        values = _fx_trace.node_activations(model, found.probes, inputs)
    else:
        values = _fx_trace.module_outputs(
            model, {p: name for p, (name, _) in found.probes.items()}, inputs
        )
    out = {}
    for perm, value in values.items():
        units = value.movedim(found.probes[perm][1], -1)
        out[perm] = units.reshape(-1, units.shape[-1]).to("cpu", torch.float64).numpy()
    return out


def _standardised(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=0)
    return centred / (centred.std(axis=0) + 1e-12)


def _inputs(data: Any, samples: int) -> torch.Tensor:
    """The first ``samples`` inputs of a tensor, an ``(X, y)`` pair or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        return data[:samples]
    if isinstance(data, np.ndarray):
        return torch.as_tensor(data[:samples])
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0][:samples]
    if not isinstance(data, Iterable):
        raise DataError(
            f"data must be a tensor of inputs, an (X, y) pair or an iterable of batches, got "
            f"{type(data).__name__}"
        )
    parts, count = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise DataError(f"every batch must hold a tensor of inputs, got {type(x).__name__}")
        parts.append(x)
        count += len(x)
        if count >= samples:
            break
    if not parts:
        raise DataError("data yielded no batches")
    return torch.cat(parts)[:samples]


def _check_function(
    model_b: nn.Module, aligned: nn.Module, inputs: tuple[torch.Tensor, ...], *, hand: bool
) -> None:
    """A spec that misses an axis changes the function: say so instead of returning it."""
    first, second = copy.deepcopy(model_b).eval(), copy.deepcopy(aligned).eval()
    device = next((p.device for p in first.parameters()), torch.device("cpu"))
    inputs = tuple(x.to(device) for x in inputs)
    with torch.no_grad():
        y_b, y_aligned = first(*inputs), second(*inputs)
    if not isinstance(y_b, torch.Tensor):
        return  # structured outputs: the traced spec pins every output tensor
    scale = max(1.0, float(y_b.abs().max()))
    tolerance = 1e-4 if y_b.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    if torch.allclose(y_b, y_aligned, rtol=tolerance, atol=tolerance * scale):
        return
    if hand:
        raise InputError(
            "the permuted model computes another function than model_b on data: the spec "
            "misses axes that the permutations touch (or lists ones they must not)"
        )
    raise InputError(
        "the permutations lossvista traced change the function of model_b on data (an "
        "operation the tracing took for element-wise is not): pass spec= by hand and please "
        "report the model"
    )
