"""The summaries the curvature commands write, as results ``lossvista.load`` reads back.

``lossvista hessian --out DIR`` writes ``DIR/hessian.json`` (format tag
``"lossvista-hessian-summary"``) and ``lossvista sharpness --out FILE`` a JSON summary
(``"lossvista-sharpness-summary"``). Both keep the readable keys people and scripts use, and add
``"results"``: the lossless states (``_json.dumps`` form) of the results they summarise, so that
``lossvista.load`` gives back a :class:`HessianSummary` or a
:class:`~lossvista.sharpness.Sharpness` equal to what the command computed. Layouts:
``docs/FORMAT.md``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _hdf5, _json
from .._result import Result, register_reader
from ..errors import InputError, LossvistaError, StoreError
from .critical import CriticalPoint
from .density import SpectralDensity
from .lanczos import EigenResult
from .trace import TraceEstimate

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..sharpness import Sharpness

HESSIAN_SUMMARY_FORMAT = "lossvista-hessian-summary"
SHARPNESS_SUMMARY_FORMAT = "lossvista-sharpness-summary"
SUMMARY_FORMAT_VERSION = 1

#: In a saved :class:`HessianSummary`, the critical point's ``density`` when it is the summary's
#: own density (as ``lossvista hessian`` computes it): written once, not twice.
SHARED_DENSITY = "density"


@dataclasses.dataclass(eq=False, repr=False)
class HessianSummary(Result):
    """What ``lossvista hessian`` measured at one point: eigenvalues, verdict, trace, density.

    ``lossvista.load("DIR/hessian.json")`` returns one; ``save`` writes a JSON
    ``lossvista-result`` file (kind ``"hessian_summary"``) that ``lossvista.load`` reads back.
    Eigenvectors are left out (``vectors=()``, also in the critical point's eigen result), so the
    summary stays small for any model; ``hessian_eigs`` and ``EigenResult.save`` keep them.

    Attributes:
        eigs: the largest eigenvalues with their residuals (no eigenvectors).
        critical_point: the verdict (minimum, maximum, saddle, degenerate) with its evidence,
            or None when it was not computed.
        trace: the trace estimate with its standard error, or None.
        density: the spectral density (nodes, weights, smoothed curve), or None.
        settings: what produced it (for the command: the inputs it named, the request, the
            objective's settings and the lossvista version).
    """

    result_kind = "hessian_summary"
    file_format = "json"

    eigs: EigenResult
    critical_point: CriticalPoint | None = None
    trace: TraceEstimate | None = None
    density: SpectralDensity | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, cls in (
            ("eigs", EigenResult),
            ("critical_point", CriticalPoint),
            ("trace", TraceEstimate),
            ("density", SpectralDensity),
        ):
            value = getattr(self, name)
            if not isinstance(value, cls) and (name == "eigs" or value is not None):
                allowed = f"an {cls.__name__}" if name == "eigs" else f"a {cls.__name__} or None"
                raise InputError(
                    f"HessianSummary {name} must be {allowed}, got {type(value).__name__}"
                )
        if not isinstance(self.settings, Mapping):
            raise InputError(
                f"HessianSummary settings must be a dict, got {type(self.settings).__name__}"
            )
        # New objects without vectors: the caller's results stay as they are.
        self.eigs = _without_vectors(self.eigs)
        if self.critical_point is not None and self.critical_point.eigs.vectors:
            self.critical_point = dataclasses.replace(
                self.critical_point, eigs=_without_vectors(self.critical_point.eigs)
            )

    def plot(self, ax: Axes | None = None, *, log: bool = True) -> Figure:
        """The spectral density when there is one (``log``: logarithmic density axis), else the
        eigenvalues with their residual bounds; returns the figure."""
        if self.density is not None:
            return self.density.plot(ax, log=log)
        return self.eigs.plot(ax)

    def _summary(self) -> list[tuple[str, Any]]:
        values = ", ".join(f"{v:.6g}" for v in self.eigs.values)
        residual = float(np.max(self.eigs.residuals)) if len(self.eigs.residuals) else 0.0
        rows: list[tuple[str, Any]] = [
            ("eigenvalues", f"[{values}]"),
            ("converged", f"{int(np.sum(self.eigs.converged))}/{len(self.eigs.values)}"),
            ("max_residual", residual),
        ]
        if self.critical_point is not None:
            rows += [
                ("verdict", self.critical_point.kind),
                ("lambda_min", self.critical_point.lambda_min),
            ]
        if self.trace is not None:
            rows += [("trace", self.trace.estimate), ("trace_stderr", self.trace.stderr)]
        if self.density is not None:
            rows.append(("negative_mass", self.density.negative_mass))
        return rows

    # -- the result protocol ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        point = None
        if self.critical_point is not None:
            point = self.critical_point._state()
            shared = self.critical_point.density
            if shared is not None and self.density is not None and shared == self.density:
                point["density"] = SHARED_DENSITY
        return {
            "eigs": self.eigs._state(),
            "critical_point": point,
            "trace": None if self.trace is None else self.trace._state(),
            "density": None if self.density is None else self.density._state(),
            "settings": self.settings,
        }

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> HessianSummary:
        density = state["density"]
        density = None if density is None else SpectralDensity._from_state(density)
        point = state["critical_point"]
        if point is not None:
            point = dict(point)
            if isinstance(point.get("density"), str):
                if point["density"] != SHARED_DENSITY or density is None:
                    raise ValueError(
                        f"critical_point.density is {point['density']!r}, and the summary "
                        + ("holds no density" if density is None else f"not {SHARED_DENSITY!r}")
                    )
                point["density"] = density._state()
            point = CriticalPoint._from_state(point)
        trace = state["trace"]
        return cls(
            eigs=EigenResult._from_state(state["eigs"]),
            critical_point=point,
            trace=None if trace is None else TraceEstimate._from_state(trace),
            density=density,
            settings=dict(state["settings"]),
        )


def _without_vectors(eigs: EigenResult) -> EigenResult:
    return dataclasses.replace(eigs, vectors=()) if eigs.vectors else eigs


# -- the command's files -------------------------------------------------------------------------
def summary_document(
    format_tag: str, fields: Mapping[str, Any], states: Mapping[str, Any]
) -> dict[str, Any]:
    """A command's JSON summary: ``format``, ``format_version``, the readable ``fields`` as
    given, and ``"results"``: the results' ``states`` in the lossless JSON form (strict JSON:
    NaN, arrays and tuples as tagged objects, so they come back exactly)."""
    return {
        "format": format_tag,
        "format_version": SUMMARY_FORMAT_VERSION,
        **fields,
        "results": json.loads(_json.dumps(dict(states))),
    }


def hessian_summary_states(summary: HessianSummary) -> dict[str, Any]:
    """The ``"results"`` of a ``hessian.json``: the summary's state without its ``settings``
    (the file's readable ``"settings"`` key holds them)."""
    state = summary._state()
    del state["settings"]
    return state


def read_hessian_summary(path: str | Path) -> HessianSummary:
    """The :class:`HessianSummary` of a ``hessian.json`` written by ``lossvista hessian``.

    Raises:
        StoreError: the file is damaged, edited, written by a newer lossvista or by one from
            before the ``"results"`` key; the message names the file.
    """
    path = Path(path)
    data = _checked(path, HESSIAN_SUMMARY_FORMAT, "lossvista hessian")
    state = {**data["results"], "settings": data.get("settings")}
    return _rebuilt(path, "Hessian summary", lambda: HessianSummary._from_state(state))


def read_sharpness_summary(path: str | Path) -> Sharpness:
    """The :class:`~lossvista.sharpness.Sharpness` of a summary written by ``lossvista sharpness``.

    Raises:
        StoreError: as :func:`read_hessian_summary`.
    """
    from ..sharpness import Sharpness  # sharpness builds on curvature: imported when read

    path = Path(path)
    data = _checked(path, SHARPNESS_SUMMARY_FORMAT, "lossvista sharpness")
    state = data["results"]
    return _rebuilt(path, "sharpness summary", lambda: Sharpness._from_state(state["sharpness"]))


def _checked(path: Path, format_tag: str, command: str) -> Mapping[str, Any]:
    """The decoded summary file, after its header and its ``"results"`` were checked."""
    try:
        data = _json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{str(path)!r} is not a readable {format_tag} file ({exc})") from exc
    except OSError as exc:
        raise StoreError(f"cannot read {str(path)!r}: {_hdf5.describe_os_error(exc)}") from exc
    if not isinstance(data, Mapping) or data.get("format") != format_tag:
        raise StoreError(f"{str(path)!r} is not a {format_tag} file")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(
            f"{str(path)!r} has format_version {version!r}, not a version number: it was "
            f"damaged or edited; run `{command}` again"
        )
    if version > SUMMARY_FORMAT_VERSION:
        raise StoreError(
            f"{str(path)!r} is a {format_tag} file of version {version}, newer than this "
            f"lossvista reads ({SUMMARY_FORMAT_VERSION}); upgrade lossvista"
        )
    results = data.get("results")
    if not isinstance(results, Mapping):
        what = "no 'results'" if results is None else f"a {type(results).__name__} as 'results'"
        raise StoreError(
            f"{str(path)!r} is a {format_tag} file with {what} (the states lossvista.load "
            f"rebuilds): it was damaged or edited, or written by an older lossvista; run "
            f"`{command}` again"
        )
    return data


def _rebuilt(path: Path, what: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except (LossvistaError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        missing = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StoreError(
            f"{str(path)!r}: cannot rebuild its {what} ({type(exc).__name__}: {missing}); the "
            "file was damaged or edited; write it again with the command"
        ) from exc


register_reader(HESSIAN_SUMMARY_FORMAT, read_hessian_summary)
register_reader(SHARPNESS_SUMMARY_FORMAT, read_sharpness_summary)
