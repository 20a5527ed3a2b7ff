"""The evaluation engine: the only place where a model is evaluated at perturbed parameters.

A *point* is a coefficient vector ``c`` (one entry per direction); its parameters are
``origin + sum_i c_i * direction_i``. The engine evaluates any set of points in chunks and hands
every finished chunk to a *sink* (a surface file or an in-memory array) before starting the next,
so an interrupted run loses at most the chunk in flight.

Two strategies compute the same numbers:

- ``"loop"``: write each point's parameters into the model in place and run the objective over
  its batches (inference mode). One point per forward pass.
- ``"vmap"``: ``torch.func.functional_call`` + ``torch.vmap`` over a stack of parameter points, so
  one forward pass evaluates several points. It pays off for small dense models, not for every
  model (on CPU, convolutions with BatchNorm are usually faster in the loop). A model vmap
  cannot batch (an LSTM, data-dependent control flow) is an :class:`~lossvista.InputError`
  naming ``strategy="loop"``; ``"auto"`` tries vmap and keeps the loop.

A configuration may also switch on options that make a point cheaper
(:mod:`lossvista._strategies`): BatchNorm folded into the preceding convolution (``bn="eval"``),
channels-last convolution weights, the layers that read the data computed once per direction,
linear layers through oneDNN on the CPU, ``torch.compile`` of the forward (only where the grid's
work repays compiling), bfloat16/float16 autocast: each gives the plain values up to rounding (or
autocast's precision), undone at the end. ``bn="perturb"`` moves BatchNorm statistics (loop only).

Every point (every vmap block) starts from the origin's buffers: those a forward pass changes
(an EMA normaliser, a cache) are found after the first point and put back before every other
(:class:`~lossvista.params.BufferReset`), so a value never depends on the order of evaluation.

With ``strategy="auto"`` the engine measures: it runs the first points of the grid with
candidate configurations (strategy, data batch size, points per pass, options) and evaluates the
grid with the fastest; trial points of the others are evaluated again, so a grid never mixes
configurations. The choice is remembered for the model, data and device (:mod:`lossvista._tuning`),
reported and stored, so a repeated call and a resumed run use the same configuration and give the
same bits. A vmap block is aligned to the points' indices (``index // points_per_call``), so a
resumed grid groups its points as the uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from . import _allocator, _compile, _estimate, _input_layers, _strategies, _tuning
from ._collect import Collector, block_end, is_vmap_failure, vmap_error
from ._data import call_functional
from ._restore import VarianceGuard
from .errors import DataError, DirectionError, InputError
from .objective import Objective
from .params import BufferReset, checked_against_model, restoring

Strategy = Literal["auto", "loop", "vmap"]
Sink = Callable[[np.ndarray, dict[str, np.ndarray]], None]

#: Batch sizes the tuning tries besides the whole data set: small batches keep a convolutional
#: network's activations in the CPU caches, large ones fill a GPU.
BATCH_SIZES = (32, 64, 128, 512)
#: A chunk (the unit written to the store) aims at this many seconds of work.
CHUNK_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How points are evaluated.

    Attributes:
        strategy: ``"loop"`` (one point per forward pass) or ``"vmap"`` (several).
        batch_size: samples per forward pass (``None``: the objective's batches).
        points_per_call: points per forward pass (``points_per_pass`` of the verbs; vmap only).
        fold_batchnorm: BatchNorm folded into the preceding convolution (``bn="eval"`` only).
        channels_last: convolution weights in channels-last layout (loop only).
        precompute_input: the layers that read the data computed once per direction (loop
            only, model dtype; :mod:`lossvista._input_layers`).
        onednn_linear: float32 linear layers through oneDNN (CPU, loop; :mod:`lossvista._onednn`).
        compile: ``torch.compile`` of the forward (loop only; chosen when it repays itself).
        precision: ``None`` (the model's dtype), ``"bfloat16"`` or ``"float16"`` autocast.
    """

    strategy: Literal["loop", "vmap"] = "loop"
    batch_size: int | None = None
    points_per_call: int = 1
    fold_batchnorm: bool = False
    channels_last: bool = False
    compile: bool = False
    precision: str | None = None
    precompute_input: bool = False
    onednn_linear: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in ("loop", "vmap"):
            raise InputError(
                f"EngineConfig.strategy must be 'loop' or 'vmap', got {self.strategy!r}"
            )
        _strategies.check_points_per_pass(self.points_per_call)
        _compile.check_precision(self.precision)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> EngineConfig:
        return cls(**{f.name: value[f.name] for f in dataclasses.fields(cls) if f.name in value})


@dataclasses.dataclass
class EngineReport:
    """What the engine did: the configuration used, tuning measurements and timing."""

    config: EngineConfig
    points: int = 0
    seconds: float = 0.0
    nonfinite: int = 0
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Items (samples) one evaluation averaged over, as counted by the engine.
    samples: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "config": self.config.as_dict()}


class PointEvaluator:
    """Evaluates points ``origin + sum_i c_i d_i`` of an objective.

    Args:
        objective: the :class:`~lossvista.Objective`.
        origin: parameter values at ``c = 0`` for (a subset of) the objective's parameters;
            parameters not given keep the model's current values.
        directions: the directions ``d_i`` (mappings name -> tensor), checked against the model.
    """

    def __init__(
        self,
        objective: Objective,
        origin: Mapping[str, torch.Tensor],
        directions: Sequence[Mapping[str, torch.Tensor]],
    ) -> None:
        self.objective = objective
        self._buffers: BufferReset | None = None  # set while run() evaluates
        self._active: tuple[EngineConfig, contextlib.ExitStack] | None = None
        self._layers: _input_layers.InputLayers | None = None  # the active config's, if any
        self._points_per_pass: int | None = None
        self._setup: dict[str, Any] = {}  # what configurations may reuse (fold pairs, ...)
        buffers = objective.perturbed_buffers()  # bn="perturb": they move like parameters
        model_params = {**dict(objective.model.named_parameters()), **buffers}
        selected, self._model_tensors = (*objective.param_names, *buffers), model_params
        self.origin = checked_against_model(origin, model_params, selected, "origin")
        checked = [
            checked_against_model(d, model_params, selected, f"direction {i}")
            for i, d in enumerate(directions)
        ]
        self.n_directions = len(checked)
        for i, d in enumerate(checked):
            if not any(bool(t.any()) for t in d.values()):
                raise DirectionError(
                    f"direction {i} is zero on every parameter the objective may move "
                    f"({len(selected)} selected); pass a non-zero direction"
                )
        names = [n for n in selected if any(n in d for d in checked)]
        # Parameters that move: a (k, *shape) stack of their direction entries.
        self.stacks: dict[str, torch.Tensor] = {}
        for name in names:
            p = model_params[name]
            rows = [d.get(name, torch.zeros_like(p)) for d in checked]
            if any(bool(r.any()) for r in rows):
                self.stacks[name] = torch.stack(rows)
        for name in selected:
            if name not in self.origin and name in self.stacks:
                self.origin[name] = model_params[name].detach().clone()
        self._guard = VarianceGuard(model_params, [n for n in self.stacks if n in buffers])

    # -- public entry point -----------------------------------------------------------------------
    def run(
        self,
        coefficients: np.ndarray,
        indices: np.ndarray | None = None,
        *,
        sink: Sink | None = None,
        strategy: Strategy = "auto",
        config: EngineConfig | None = None,
        chunk_size: int | None = None,
        progress: bool = True,
        desc: str = "lossvista",
        on_config: Callable[[EngineConfig], None] | None = None,
        points_per_pass: int | None = None,
        precision: str | None = None,
    ) -> tuple[dict[str, np.ndarray], EngineReport]:
        """Evaluate every row of ``coefficients`` (shape ``(P, k)``).

        Args:
            indices: labels handed to the sink with each chunk (default ``arange(P)``).
            sink: called as ``sink(indices, values)`` after every chunk, ``values`` a dict
                metric -> array of the chunk's points.
            strategy: ``"auto"`` (measure and pick), ``"loop"`` or ``"vmap"``.
            config: a fixed configuration (overrides ``strategy``; used when resuming).
            chunk_size: points per chunk; default aims at a few seconds of work per chunk.
            progress: show a progress bar (only on a terminal).
            on_config: called with the configuration once it is chosen (before most work).
            points_per_pass: points per vmap forward pass (default: 32 with batches of 128
                samples and 8 with batches of 512, bounded by the free memory).
            precision: ``"bfloat16"``/``"float16"``: the forward of the chosen configuration
                runs under autocast (losses in float32, sums in float64); ``None``: the model's
                dtype. Tuning measures in the model's dtype; its trial rows are not kept.

        Returns:
            ``(values, report)``: arrays of length ``P`` per value name, and an
            :class:`EngineReport`.
        """
        coefficients = np.ascontiguousarray(coefficients, dtype=np.float64).reshape(
            -1, self.n_directions
        )
        n_points = len(coefficients)
        indices = np.arange(n_points) if indices is None else np.asarray(indices)
        if strategy not in ("auto", "loop", "vmap"):
            raise InputError(f"strategy must be 'auto', 'loop' or 'vmap', got {strategy!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if points_per_pass is not None:
            _strategies.check_points_per_pass(points_per_pass)
        _compile.check_precision(precision, self.objective.model)
        self._points_per_pass = points_per_pass
        seconds = CHUNK_SECONDS if chunk_size is None else None  # whatever a point costs
        collector = Collector(self.objective, indices, sink, chunk_size, seconds)
        report = EngineReport(config=config or self._default_config())
        started = time.perf_counter()

        from tqdm.auto import tqdm  # lazily: importing tqdm costs time at package import

        with tqdm(total=n_points, desc=desc, unit="pt", disable=None if progress else True) as bar:
            collector.bar = bar
            self._guard.refused.clear()
            with self._guarded():
                self.objective.model.eval()
                self._write_origin()
                per_point, kept = None, None
                if config is None and strategy == "auto" and n_points >= _tuning.TUNE_MIN_POINTS:
                    report.config, per_point, kept = _tuning.choose(
                        self, coefficients, report, strategy
                    )
                elif config is None and strategy == "vmap":
                    configs = self._vmap_configs()
                    if not configs:
                        bn = self.objective.bn
                        raise InputError(f"strategy='vmap' cannot be used with bn={bn!r}")
                    report.config = configs[0]
                if precision is not None and report.config.precision != precision:
                    report.config = dataclasses.replace(report.config, precision=precision)
                    kept = None  # the trial rows were computed in the model's own dtype
                _estimate.note_speed(per_point)  # the grid's estimate, tuning excluded
                if on_config is not None:
                    on_config(report.config)
                if collector.chunk_size is None:
                    collector.chunk_size = self._auto_chunk(report.config, per_point)
                    collector.flush_if_full()
                collector.restart_clock()
                self._evaluate_all(report.config, coefficients, indices, collector, kept)
                collector.flush()
        self._guard.warn(n_points)
        report.points = n_points
        report.seconds = time.perf_counter() - started
        report.nonfinite = collector.nonfinite
        report.samples = collector.samples
        return collector.values, report

    def _evaluate_all(
        self,
        config: EngineConfig,
        coefficients: np.ndarray,
        indices: np.ndarray,
        collector: Collector,
        kept: _tuning.Kept,
    ) -> None:
        """Every point with ``config``, in blocks aligned to ``indices``; ``kept`` trial rows
        (computed with ``config``) are used as they are."""
        n_points = len(coefficients)
        kept_start, kept_rows = kept if kept is not None else (n_points, None)
        position = 0
        while position < n_points:
            if position == kept_start and kept_rows is not None:
                collector.add(position, kept_rows)
                position += len(kept_rows)
                continue
            limit = kept_start if position < kept_start else n_points
            stop = block_end(indices, position, max(config.points_per_call, 1), limit)
            collector.add(position, self._evaluate(config, coefficients[position:stop]))
            position = stop

    # -- strategies ---------------------------------------------------------------------------
    def _evaluate(self, config: EngineConfig, coefficients: np.ndarray) -> np.ndarray:
        """Rows ``[count, *sums, *squares]`` (see :class:`~lossvista._averaging.Totals`)."""
        self._use(config)
        if config.strategy == "vmap":
            with self._fresh_buffers():
                return self._evaluate_vmap(config, coefficients)
        rows = []
        for c in coefficients:
            with self._fresh_buffers():
                rows.append(self._evaluate_loop(config, c))
        return np.stack(rows)

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """The model restored on exit (:func:`~lossvista.params.restoring`), the buffers a forward
        changes put back before every point (under ``bn="recompute"`` BatchNorm statistics are
        re-estimated anyway), activations kept in the heap (:mod:`~lossvista._allocator`)."""
        objective = self.objective
        _allocator.warm(objective.device)
        skip = objective.batchnorm_modules if objective.bn == "recompute" else []
        with restoring(objective.model, skip=skip) as buffers:
            self._buffers = buffers
            try:
                yield
            finally:
                self._release()
                self._buffers = None

    def _use(self, config: EngineConfig) -> None:
        """Set the model up for ``config`` (:func:`~lossvista._strategies.configured`), kept
        until another configuration is used or the run ends."""
        if self._active is not None and self._active[0] == config:
            return
        self._release()
        stack = contextlib.ExitStack()
        self._layers = stack.enter_context(
            _strategies.configured(self.objective, config, self._setup, self)
        )
        self._active = (config, stack)

    def _release(self) -> None:
        self._layers = None
        if self._active is not None:
            active, self._active = self._active, None
            active[1].close()

    @contextlib.contextmanager
    def _fresh_buffers(self) -> Iterator[None]:
        """Every point (every vmap block) starts from the origin's buffers."""
        buffers = self._buffers
        if buffers is None:  # outside run(): nothing to put back
            yield
            return
        buffers.reset()
        try:
            yield
        finally:
            buffers.check()

    def _write_origin(self) -> None:
        """Copy the origin into the model once; afterwards only moving parameters change."""
        model_params = self._model_tensors  # parameters (and bn="perturb" buffers)
        with torch.no_grad():
            for name, value in self.origin.items():
                model_params[name].copy_(value)
        self._moving = [
            (model_params[n], self.origin[n], stack) for n, stack in self.stacks.items()
        ]

    def _evaluate_loop(self, config: EngineConfig, c: np.ndarray) -> np.ndarray:
        coefficients = [(i, float(v)) for i, v in enumerate(c) if v != 0.0]
        # torch.compile traces under no_grad; inference-mode tensors would force recompiles
        with torch.no_grad() if config.compile else torch.inference_mode():
            for p, origin, stack in self._moving:
                p.copy_(origin)
                for i, value in coefficients:
                    p.add_(stack[i], alpha=value)
            if self._layers is not None:
                self._layers.at(c)
            return self._guard.checked(c, self.objective._point_vector(config.batch_size))

    def moving_parameters(self, coefficients: np.ndarray) -> dict[str, torch.Tensor]:
        """``origin + sum_i c_i d_i`` for the parameters the directions move: tensors of the
        parameters' shapes for coefficients ``(ndim,)``, with a leading ``P`` axis for ``(P, ndim)``.
        """
        moving = {}
        for name, stack in self.stacks.items():
            c = torch.as_tensor(coefficients, dtype=stack.dtype, device=stack.device)
            moving[name] = self.origin[name] + torch.tensordot(c, stack, dims=1)
        return moving

    def _evaluate_vmap(self, config: EngineConfig, coefficients: np.ndarray) -> np.ndarray:
        objective = self.objective
        model = objective.model
        fixed = {n: p.detach() for n, p in model.named_parameters()}  # hold the origin
        fixed.update({n: b.detach() for n, b in model.named_buffers()})
        moving = self.moving_parameters(coefficients)

        def vector_at(batched: dict[str, torch.Tensor], inputs: Any, target: torch.Tensor):
            output = call_functional(model, {**fixed, **batched}, inputs)
            return objective._averaging.batch_vector(output, target)

        mapped = torch.vmap(vector_at, in_dims=(0, None, None))
        total = None
        with torch.no_grad():
            for inputs, target in objective._batches(config.batch_size):
                try:
                    vectors = mapped(moving, inputs, target)
                except RuntimeError as exc:
                    # After a whole pass of the plain forward worked, a failure is vmap's.
                    if is_vmap_failure(exc) or getattr(objective, "_data_verified", False):
                        raise vmap_error(model, exc) from exc
                    raise
                total = vectors if total is None else total + vectors
        if total is None:
            raise DataError("the data yielded no batches; pass a non-empty data set")
        return total.cpu().numpy()

    # -- configuration ------------------------------------------------------------------------
    def _default_config(self) -> EngineConfig:
        return EngineConfig("loop", self.objective._default_batch_size(), 1)

    def _batch_sizes(self) -> Sequence[int | None]:
        objective = self.objective
        if not objective._is_sliceable():
            return [objective._default_batch_size()]
        n = objective.n_samples or 1
        return sorted({min(size, n) for size in (*BATCH_SIZES, n)})

    def _vmap_configs(self) -> list[EngineConfig]:
        if self.objective.bn == "recompute" and self.objective.batchnorm_modules:
            return []  # BatchNorm buffers are updated in train mode: one point at a time
        if self._guard.moving:
            return []  # bn="perturb": the buffers move, written into the model point by point
        if not self.objective._is_sliceable():
            pairs = [(self.objective._default_batch_size(), 16)]
        else:
            n = self.objective.n_samples or 1
            pairs = [(min(128, n), 32), (min(512, n), 8)]
        configs = []
        for batch, points in pairs:
            if self._points_per_pass is not None:
                points = self._points_per_pass
            else:
                points = min(points, _strategies.points_bound(self, batch))
            config = EngineConfig("vmap", batch, points)
            if config not in configs:
                configs.append(config)
        return configs

    @staticmethod
    def _auto_chunk(config: EngineConfig, per_point: float | None) -> int:
        step = max(config.points_per_call, 1)
        if per_point is None or per_point <= 0:
            return max(step, 64 // step * step)
        points = max(1, int(CHUNK_SECONDS / per_point))
        return max(step, math.ceil(points / step) * step)
