"""Training trajectories: record parameters, PCA directions, projections, non-linear reductions.

A :class:`Trajectory` is a sequence of parameter snapshots (``{name: tensor}`` on the CPU) with the
training step of each. It comes from a :class:`TrajectoryRecorder` inside a training loop (kept in
memory or appended to an HDF5 file), from checkpoint files (:meth:`Trajectory.from_checkpoints`),
or from a list of state dicts. From there:

- :func:`pca_directions` gives the plane the path spreads along (Li et al., 2018, §7);
- :func:`project` places every snapshot on any directions, and :func:`span_covering` gives a plane
  span that covers the path;
- :func:`reduce_trajectory` embeds the path in a few dimensions (PCA, UMAP, an autoencoder) and
  says how faithful the picture is.

One concept per module, each with its definitions in its docstring:

- :mod:`~lossvista.trajectory.container`: :class:`Trajectory`, :func:`checkpoint_files`, and the
  layout of trajectory files;
- :mod:`~lossvista.trajectory.recorder`: :class:`TrajectoryRecorder`;
- :mod:`~lossvista.trajectory.pca`: :class:`PCADirections`, :func:`pca_directions`;
- :mod:`~lossvista.trajectory.projection`: :class:`Projection`, :func:`project`,
  :func:`span_covering`;
- :mod:`~lossvista.trajectory.reduce`: :class:`TrajectoryEmbedding`, :func:`reduce_trajectory`.
"""

# ``import X as X``: importable from here as before the split, but not in ``__all__`` (the
# trajectory file's format constants and the type aliases of the signatures).
from ._gram import Center as Center
from ._gram import Ignore as Ignore
from ._storage import FORMAT as FORMAT
from ._storage import FORMAT_VERSION as FORMAT_VERSION
from ._storage import Layout as Layout
from .container import Trajectory, checkpoint_files
from .container import TrajectoryLike as TrajectoryLike
from .pca import PCADirections, pca_directions
from .projection import Projection, project, span_covering
from .recorder import TrajectoryRecorder
from .reduce import Method as Method
from .reduce import TrajectoryEmbedding, reduce_trajectory

__all__ = [
    "PCADirections",
    "Projection",
    "Trajectory",
    "TrajectoryEmbedding",
    "TrajectoryRecorder",
    "checkpoint_files",
    "pca_directions",
    "project",
    "reduce_trajectory",
    "span_covering",
]
