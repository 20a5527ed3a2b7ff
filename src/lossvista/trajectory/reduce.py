"""Low-dimensional embeddings of a trajectory (PCA, UMAP, an autoencoder) and how faithful they are
(trustworthiness, reconstruction error)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from .._checks import check_int
from .._json import json_ready
from .._result import Result
from ..errors import InputError, MissingDependencyError
from ._gram import Ignore, Spectrum, prepare, principal_axes
from .container import TrajectoryLike

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["TrajectoryEmbedding", "reduce_trajectory"]

Method = Literal["pca", "umap", "autoencoder"]

_METHODS = ("pca", "umap", "autoencoder")
_UMAP_MISSING = "method='umap' needs the optional package umap-learn: pip install umap-learn"
_AUTOENCODER_DEFAULTS = {"hidden": 64, "epochs": 2000, "lr": 1e-2}


@dataclasses.dataclass(eq=False, repr=False)
class TrajectoryEmbedding(Result):
    """A low-dimensional picture of a trajectory and how faithful it is.

    ``save`` writes an HDF5 ``lossvista-result`` file (kind ``"trajectory_embedding"``) that
    ``lossvista.load`` reads back.

    Attributes:
        method: ``"pca"``, ``"umap"`` or ``"autoencoder"``.
        embedding: ``(P, n)`` coordinates of the snapshots.
        steps: ``(P,)`` their steps.
        trustworthiness: how well the embedding keeps each snapshot's nearest neighbours (1 is
            perfect; Venna & Kaski 2001, the value of ``sklearn.manifold.trustworthiness``);
            ``None`` for fewer than 3 snapshots.
        n_neighbors: the neighbourhood size of ``trustworthiness``.
        reconstruction_error: mean squared error, per parameter entry, of mapping the embedding
            back to parameter space (PCA and autoencoder; ``None`` for UMAP).
        explained_variance_ratio_: for PCA, the share of variance of each component.
        seed: the seed of randomised methods.
        settings: the method's settings.
    """

    method: str
    embedding: np.ndarray
    steps: np.ndarray
    trustworthiness: float | None
    n_neighbors: int | None
    reconstruction_error: float | None
    explained_variance_ratio_: np.ndarray | None = None
    seed: int | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    result_kind = "trajectory_embedding"
    file_format = "hdf5"

    def __repr__(self) -> str:
        trust = "n/a" if self.trustworthiness is None else f"{self.trustworthiness:.4f}"
        error = "n/a" if self.reconstruction_error is None else f"{self.reconstruction_error:.4g}"
        return (
            f"TrajectoryEmbedding({self.method}, {len(self.embedding)} snapshots -> "
            f"{self.embedding.shape[1]}-D, trustworthiness={trust} (k={self.n_neighbors}), "
            f"reconstruction_error={error})"
        )

    @property
    def axis_labels(self) -> tuple[str, ...]:
        if self.explained_variance_ratio_ is not None:
            return tuple(
                f"PC{i + 1} ({100 * r:.1f}%)" for i, r in enumerate(self.explained_variance_ratio_)
            )
        return tuple(f"{self.method} {i + 1}" for i in range(self.embedding.shape[1]))

    def plot(self, ax: Axes | None = None) -> Figure:
        """The first two embedding coordinates as a path coloured by step; returns the figure.
        Drawn by :func:`lossvista.plot.trajectory.plot_embedding`."""
        from ..plot.trajectory import plot_embedding

        return plot_embedding(self, ax)

    def _summary(self) -> list[tuple[str, Any]]:
        rows: list[tuple[str, Any]] = [
            ("method", self.method),
            ("snapshots", len(self.embedding)),
            ("dimensions", self.embedding.shape[1]),
            ("trustworthiness", self.trustworthiness),
            ("n_neighbors", self.n_neighbors),
            ("reconstruction_error", self.reconstruction_error),
        ]
        if self.explained_variance_ratio_ is not None:
            rows += [
                (f"PC{i + 1}_explained_variance_ratio", float(r))
                for i, r in enumerate(self.explained_variance_ratio_)
            ]
        if self.seed is not None:
            rows.append(("seed", self.seed))
        return rows


def reduce_trajectory(
    trajectory: TrajectoryLike,
    method: Method = "pca",
    n: int = 2,
    *,
    seed: int = 0,
    ignore: Ignore = ("bias", "bn"),
    n_neighbors: int = 5,
    options: Mapping[str, Any] | None = None,
) -> TrajectoryEmbedding:
    """Embed the snapshots in ``n`` dimensions and measure how faithful the embedding is.

    Every method works on the snapshots expressed exactly in the orthonormal basis of their
    (at most ``P - 1``-dimensional) centred span, an isometry of parameter space computed from
    the Gram matrix, so the cost grows with the number of snapshots, not the model size.

    - ``"pca"``: classical (mean-centred) PCA, equal to scikit-learn's ``PCA``; the embedding
      equals :func:`project` on ``pca_directions(..., center="mean")`` around the mean.
      ``reconstruction_error`` is the exact MSE of the inverse transform.
    - ``"autoencoder"``: a seeded MLP autoencoder (``span -> hidden -> n -> hidden -> span``,
      tanh, float64, full-batch Adam with a cosine decay of the learning rate) trained on the
      span coordinates, centred and scaled to unit mean square; ``reconstruction_error`` is the
      MSE of its reconstruction in parameter space. It is measured on the snapshots the network
      was trained on: with few snapshots a wide network can memorise them, so read it together
      with ``trustworthiness``. ``options``: ``hidden`` (64), ``epochs`` (2000), ``lr`` (0.01).
    - ``"umap"``: ``umap.UMAP(n_components=n, random_state=seed, n_neighbors=min(15, P - 1),
      **options)`` from the optional package ``umap-learn``; no reconstruction error.

    Args:
        trajectory: a :class:`Trajectory` (or a list of state dicts).
        method: ``"pca"``, ``"umap"`` or ``"autoencoder"``.
        n: dimensions of the embedding.
        seed: seed of the autoencoder's initialisation and of UMAP.
        ignore: parameters left out, as in :func:`pca_directions`.
        n_neighbors: neighbourhood size of the trustworthiness (scikit-learn's default 5),
            capped at ``(P - 1) // 2`` so that it stays below ``P / 2``.
        options: method-specific settings (above).

    Returns:
        A :class:`TrajectoryEmbedding`.

    Raises:
        MissingDependencyError: ``method="umap"`` without umap-learn installed.
    """
    if method not in _METHODS:
        raise InputError(f"method must be one of {list(_METHODS)}, got {method!r}")
    traj, names = prepare(trajectory, n, ignore)
    n_neighbors = check_int(n_neighbors, "n_neighbors", minimum=1)
    seed = check_int(seed, "seed")
    options = dict(options or {})
    spectrum = Spectrum.of(traj, names, "mean")
    entries = len(traj) * sum(math.prod(traj.shapes[name]) for name in names)
    ratio = error = None
    settings: dict[str, Any] = {"ignore": json_ready(ignore), "options": json_ready(options)}
    if method == "pca":
        spectrum.require_rank(n)
        if options:
            raise InputError(f"method='pca' takes no options, got {sorted(options)}")
        _, left_out, signs = principal_axes(traj, names, "mean", spectrum, n)
        embedding = spectrum.vectors[:, :n] * np.sqrt(spectrum.values[:n]) * signs
        ratio = spectrum.values[:n] / spectrum.total
        error = left_out / entries
    else:
        spectrum.require_rank(1)
        coordinates = spectrum.coordinates()
        if method == "umap":
            embedding = _umap(coordinates, n, seed, options)
        else:
            embedding, rebuilt = _autoencoder(coordinates, n, seed, options)
            outside_span = max(spectrum.total - float(np.sum(coordinates**2)), 0.0)
            error = (float(np.sum((coordinates - rebuilt) ** 2)) + outside_span) / entries
            settings["options"] = {**_AUTOENCODER_DEFAULTS, **options}
    k = min(int(n_neighbors), (len(traj) - 1) // 2)
    trust = None if k < 1 else _trustworthiness(_distances_from_gram(spectrum.gram), embedding, k)
    return TrajectoryEmbedding(
        method=method,
        embedding=np.asarray(embedding, dtype=np.float64),
        steps=traj.steps,
        trustworthiness=trust,
        n_neighbors=k if k >= 1 else None,
        reconstruction_error=error,
        explained_variance_ratio_=ratio,
        seed=None if method == "pca" else int(seed),
        settings=settings,
    )


def _distances_from_gram(gram: np.ndarray) -> np.ndarray:
    diagonal = np.diag(gram)
    return np.sqrt(np.clip(diagonal[:, None] + diagonal[None, :] - 2.0 * gram, 0.0, None))


def _trustworthiness(high: np.ndarray, embedding: np.ndarray, k: int) -> float:
    """Trustworthiness (Venna & Kaski 2001) from the original distances and an embedding:
    ``1 - 2 / (P k (2P - 3k - 1)) * sum_i sum_{j in U_k(i)} (r(i, j) - k)``, where ``U_k(i)``
    are the embedding's ``k`` nearest neighbours of ``i`` that are not among its ``k`` nearest in
    the original space and ``r(i, j)`` is the rank of ``j`` among ``i``'s original neighbours."""
    count = len(high)
    original = high.copy()
    np.fill_diagonal(original, np.inf)
    order = np.argsort(original, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(count)[:, None]
    ranks[rows, order] = np.arange(1, count + 1)
    low = np.sum((embedding[:, None, :] - embedding[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(low, np.inf)
    neighbours = np.argsort(low, axis=1, kind="stable")[:, :k]
    excess = ranks[rows, neighbours] - k
    penalty = float(np.sum(excess[excess > 0]))
    return 1.0 - penalty * 2.0 / (count * k * (2.0 * count - 3.0 * k - 1.0))


def _umap(coordinates: np.ndarray, n: int, seed: int, options: Mapping[str, Any]) -> np.ndarray:
    try:
        import umap
    except ImportError as exc:
        raise MissingDependencyError(_UMAP_MISSING) from exc
    settings = {"n_neighbors": min(15, len(coordinates) - 1), **options}
    reducer = umap.UMAP(n_components=n, random_state=int(seed), **settings)
    return np.asarray(reducer.fit_transform(coordinates), dtype=np.float64)


def _autoencoder(
    coordinates: np.ndarray, n: int, seed: int, options: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Train the autoencoder; returns the codes ``(P, n)`` and the reconstruction ``(P, r)``."""
    unknown = sorted(set(options) - set(_AUTOENCODER_DEFAULTS))
    if unknown:
        raise InputError(
            f"unknown autoencoder options {unknown}; known: {sorted(_AUTOENCODER_DEFAULTS)}"
        )
    settings = {**_AUTOENCODER_DEFAULTS, **options}
    hidden = check_int(settings["hidden"], "hidden", minimum=1)
    epochs = check_int(settings["epochs"], "epochs", minimum=1)
    width = coordinates.shape[1]
    scale = float(np.sqrt(np.mean(coordinates**2))) or 1.0
    inputs = torch.from_numpy(coordinates / scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        encoder = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, n)).double()
        decoder = nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, width)).double()
    optimizer = torch.optim.Adam(
        [*encoder.parameters(), *decoder.parameters()], lr=float(settings["lr"])
    )
    # Decaying to 0 ends on a settled iterate rather than one of Adam's oscillations.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = ((decoder(encoder(inputs)) - inputs) ** 2).mean()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        codes = encoder(inputs)
        rebuilt = decoder(codes) * scale
    return codes.numpy(), rebuilt.numpy()
