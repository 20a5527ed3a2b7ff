"""The demo: train a small CNN on scikit-learn's 8x8 digits, then draw its landscape three ways.

Everything here runs offline on a CPU in well under a minute: the digits ship with scikit-learn.
:func:`digits_cnn` and :func:`digits_data` also serve as factories for the command line::

    lossvista plane --model lossvista.demo:digits_cnn --data lossvista.demo:digits_data \\
        --checkpoint lossvista-demo/model_final.pt --out plane.h5
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .checkpoint import load_checkpoint
from .curvature import hessian_eigs
from .directions import random_directions
from .errors import InputError
from .landscape import Landscape
from .objective import Objective
from .report import report
from .sharpness import sharpness
from .slices import interpolate, line, plane
from .trajectory import TrajectoryRecorder, pca_directions

#: Share of the 1797 digits held out for testing.
TEST_FRACTION = 0.2
#: Hessian eigenvalues the demo computes (Lanczos).
TOP_EIGENVALUES = 3
#: Average-case sharpness of the demo: noise standard deviation per parameter, and samples.
SHARPNESS_RHO = 0.01
SHARPNESS_SAMPLES = 20


def digits_cnn(seed: int = 0) -> nn.Module:
    """A small CNN for 1x8x8 digit images (about 7,800 parameters), initialised under ``seed``.

    Layers: Conv(1→16, 3x3, pad 1) 16x8x8 → BatchNorm → ReLU → Conv(16→32, 3x3) 32x6x6 →
    BatchNorm → ReLU → MaxPool(2) 32x3x3 → Flatten 288 → Linear(288→10) logits.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 3 * 3, 10),
        )


def digits_data(
    split: Literal["train", "test"] = "train", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits: ``X`` float32 ``(N, 1, 8, 8)`` in [0, 1], ``y`` int64 classes.

    A seeded 80/20 split of the 1797 images: ``"train"`` has 1438, ``"test"`` 359.
    """
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits  # lazily: only the demo needs scikit-learn

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(TEST_FRACTION * len(y))
    index = order[n_test:] if split == "train" else order[:n_test]
    return x[index], y[index]


@dataclasses.dataclass
class DemoResult:
    """What :func:`run_demo` wrote and measured.

    Attributes:
        out_dir: the output folder.
        files: label -> path of every file written (checkpoints, surfaces, pictures).
        train_accuracy, test_accuracy: of the trained model (BatchNorm in eval mode).
        center_loss: training loss of the trained model (the centre of the line and the plane).
        barrier: loss barrier on the path from the initialisation to the trained model.
        seconds: wall-clock time of the whole demo.
        top_eigenvalues: the largest Hessian eigenvalues of the training loss at the trained
            model (Lanczos, largest first).
        sharpness: average-case sharpness of the trained model (Gaussian noise of standard
            deviation :data:`SHARPNESS_RHO` per parameter, :data:`SHARPNESS_SAMPLES` samples).
        report: the interactive HTML report of the run (``report.html``).
    """

    out_dir: Path
    files: dict[str, Path]
    train_accuracy: float
    test_accuracy: float
    center_loss: float
    barrier: float
    seconds: float
    top_eigenvalues: tuple[float, ...] = ()
    sharpness: float = float("nan")
    report: Path | None = None

    def summary(self) -> str:
        lines = [
            f"trained digits CNN: train accuracy {self.train_accuracy:.4f}, "
            f"test accuracy {self.test_accuracy:.4f}",
            f"centre (training) loss {self.center_loss:.6g}",
            f"barrier from initialisation to trained model {self.barrier:.6g}",
            "top Hessian eigenvalues "
            + ", ".join(f"{value:.6g}" for value in self.top_eigenvalues),
            f"sharpness (average, rho {SHARPNESS_RHO:g}) {self.sharpness:.6g}",
            "wrote:",
            *(f"  {path}" for path in self.files.values()),
            f"done in {self.seconds:.1f} s",
        ]
        if self.report is not None:
            lines.append(f"open the report: {self.report}")
        return "\n".join(lines)


def train_digits_cnn(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 0.01,
    seed: int = 0,
    recorder: TrajectoryRecorder | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam on ``data`` (a seeded shuffle per epoch); returns it.

    ``recorder`` (recording ``model``) takes a snapshot before training and after every epoch.
    """
    x, y = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    if recorder is not None:
        recorder.record(step=0)
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
        if recorder is not None:
            recorder.record(step=epoch + 1)
    model.eval()
    return model


def run_demo(
    out_dir: str | Path = "lossvista-demo",
    *,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
) -> DemoResult:
    """Train the digits CNN, then write a line, a plane and an interpolation with their pictures.

    Files in ``out_dir`` (created if needed): ``model_init.pt``, ``model_final.pt`` (state dicts);
    ``line.h5``/``line.png`` (1-D, filter-normalised, -1..1, 51 points); ``plane.h5``,
    ``plane_contour.png`` (log-spaced levels), ``plane_surface3d.png`` (2-D, filter-normalised,
    -1..1, 25x25); ``path_plane.h5`` (the plane of the training path's two principal
    directions, 21x21, covering the path);
    ``interpolation.h5``/``interpolation.png`` (initialisation → trained model, t in -0.5..1.5,
    BatchNorm statistics recomputed at every point); ``hessian_eigs.h5`` (the top
    :data:`TOP_EIGENVALUES` Hessian eigenvalues), ``sharpness.json`` (average-case sharpness);
    ``report.html``, the interactive page of all of them (the plane with the training path
    projected onto it). All on the training data, with accuracy.

    Args:
        out_dir: output folder.
        seed: seeds the initialisation, the data split, the training order and the directions.
        progress: progress bars (on a terminal).
        echo: where the summary goes (``None`` for silence).

    Returns:
        A :class:`DemoResult` with the paths and the key numbers.
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    train, test = digits_data("train", seed=seed), digits_data("test", seed=seed)

    initial = digits_cnn(seed)
    files["model_init"] = out / "model_init.pt"
    torch.save(initial.state_dict(), files["model_init"])
    model = digits_cnn(seed)
    recorder = TrajectoryRecorder(model)
    train_digits_cnn(model, train, seed=seed, recorder=recorder)
    files["model_final"] = out / "model_final.pt"
    torch.save(model.state_dict(), files["model_final"])
    # From here on the models come from the files, as a user of the command line would get them.
    initial = load_checkpoint(digits_cnn(seed), files["model_init"])
    model = load_checkpoint(digits_cnn(seed), files["model_final"])

    objective = Objective(model, F.cross_entropy, train, metrics=["accuracy"])
    test_accuracy = Objective(model, F.cross_entropy, test, metrics=["accuracy"]).evaluate()
    d1, d2 = random_directions(objective, 2, norm="filter", ignore=("bias", "bn"), seed=seed)

    files["line"] = out / "line.h5"
    lines = line(objective, d1, span=(-1.0, 1.0), steps=51, store=files["line"], resume=False,
                 progress=progress)  # fmt: skip
    files["line_png"] = _save_plot(lines, out / "line.png", "line")

    files["plane"] = out / "plane.h5"
    surface = plane(objective, (d1, d2), span=(-1.0, 1.0), steps=(25, 25), store=files["plane"],
                    resume=False, progress=progress, trajectory=recorder.trajectory)  # fmt: skip
    # Log-spaced levels: the basin of a trained model spans decades of loss.
    files["plane_contour_png"] = _save_plot(surface, out / "plane_contour.png", "contour", log=True)
    files["plane_surface3d_png"] = _save_plot(surface, out / "plane_surface3d.png", "surface3d")
    # Random directions are almost orthogonal to the training path, which projects to a dot;
    # the plane of the path's two principal directions shows the road training took.
    files["path_plane"] = out / "path_plane.h5"
    path_surface = plane(objective, pca_directions(recorder.trajectory), steps=(21, 21),
                         trajectory=recorder.trajectory, store=files["path_plane"], resume=False,
                         progress=progress)  # fmt: skip

    # The BatchNorm statistics of either end describe no point in between: recompute them.
    path_objective = Objective(model, F.cross_entropy, train, metrics=["accuracy"], bn="recompute")
    files["interpolation"] = out / "interpolation.h5"
    path = interpolate(path_objective, initial, model, span=(-0.5, 1.5), steps=41,
                       store=files["interpolation"], resume=False, progress=progress)  # fmt: skip
    files["interpolation_png"] = _save_plot(path, out / "interpolation.png", "line")

    eigs = hessian_eigs(objective, k=TOP_EIGENVALUES, seed=seed)
    files["hessian_eigs"] = eigs.save(out / "hessian_eigs.h5")
    sharp = sharpness(objective, kind="average", rho=SHARPNESS_RHO, samples=SHARPNESS_SAMPLES,
                      seed=seed)  # fmt: skip
    files["sharpness"] = sharp.save(out / "sharpness.json")
    files["report"] = report(
        out / "report.html", path_surface, surface, lines, path, eigs, sharp,
        title="lossvista demo: digits CNN",
        notes=f"A small CNN trained for 8 epochs on scikit-learn's 8x8 digits (seed {seed}). The "
        "first plane spans the two principal directions of the training path (red, from the "
        "initialisation to the trained model at the origin); the second plane and the line use "
        "filter-normalised random directions, onto which the path projects almost to a point. "
        "The interpolation runs from the initialisation to the trained model with BatchNorm "
        "statistics recomputed.",
    )  # fmt: skip

    result = DemoResult(
        out_dir=out,
        files=files,
        train_accuracy=surface.center["accuracy"],
        test_accuracy=test_accuracy["accuracy"],
        center_loss=surface.center["loss"],
        barrier=path.barrier,
        seconds=time.perf_counter() - started,
        top_eigenvalues=tuple(float(v) for v in eigs.values),
        sharpness=sharp.value,
        report=files["report"],
    )
    if echo is not None:
        echo(result.summary())
    return result


def _save_plot(landscape: Landscape, path: Path, kind: str, *, log: bool = False) -> Path:
    import matplotlib.pyplot as plt  # lazily; the backend is the caller's choice

    figure = landscape.plot(kind=kind, log=log)
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
