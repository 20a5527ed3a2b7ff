"""Geometry beyond random planes: curves between minima, permutation alignment, absolute
two-weight planes, per-layer sensitivity and the topology of basins.

One concept per module: :mod:`~lossvista.geometry.curves` (:func:`connect`, :class:`Curve`),
:mod:`~lossvista.geometry.align` (:func:`align`, :class:`Alignment`),
:mod:`~lossvista.geometry.coordinates` (:func:`coordinate_plane`, :func:`coordinate_line`),
:mod:`~lossvista.geometry.sensitivity` (:func:`layer_sensitivity`) and
:mod:`~lossvista.geometry.topology` (:func:`persistence`). Drawings are in :mod:`lossvista.plot`.
"""

from .align import Alignment, align, permutation_spec
from .coordinates import coordinate_line, coordinate_plane
from .curves import Curve, connect
from .sensitivity import LayerSensitivity, layer_sensitivity
from .topology import Persistence, persistence, persistence_pairs

__all__ = [
    "Alignment",
    "Curve",
    "LayerSensitivity",
    "Persistence",
    "align",
    "connect",
    "coordinate_line",
    "coordinate_plane",
    "layer_sensitivity",
    "permutation_spec",
    "persistence",
    "persistence_pairs",
]
