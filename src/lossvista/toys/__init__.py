"""The optimizer lab: analytic 2-D functions, optimizers and searches on them, races, scaling.

>>> from lossvista import toys
>>> fn = toys.get("himmelblau")
>>> len(fn.minima), float(fn.minimum_values.max()) < 1e-20
(4, True)
>>> path = toys.run(fn, "adam", start=(0.0, 0.0), steps=300, lr=0.1)
>>> path.points.shape, path.reached_minimum()
((301, 2), 0)
>>> result = toys.grid_search(fn, n=41)
>>> [round(float(v), 2) for v in result.best_params]
[3.0, 2.0]

Functions (:mod:`~lossvista.toys.functions`): ``quadratic`` (condition number and rotation
chosen), ``sincos_bowl`` (``sin(4x) cos(4y) + 2(x^2 + y^2)``, four minima), ``rosenbrock``,
``himmelblau``, ``rastrigin``, ``beale``, ``six_hump_camel``, ``saddle`` (``x^2 - y^2``) and
``monkey_saddle``; every minimum inside their bounds is listed. Optimizers
(:mod:`~lossvista.toys.optimizers`) run through ``torch.optim`` or the textbook update rules.
Searches (:mod:`~lossvista.toys.search`): simulated annealing and parallel grid search. Races
(:mod:`~lossvista.toys.race`): a table, a contour plot with every path, a GIF. Feature scaling
(:mod:`~lossvista.toys.scaling`): a regression loss surface before and after standardisation.

Every result here (paths, races and their tables, searches and their histories, the scaling study
and its parts) is a lossvista result: ``as_dict()``, ``save(path)`` and ``lossvista.load(path)``,
value equality, a one-line repr and a notebook view; the drawing is in :mod:`lossvista.plot.toys`.
A result on a function stores the function's name and parameters, so only functions that
:func:`get` builds can be saved.

>>> import pathlib, tempfile, lossvista
>>> with tempfile.TemporaryDirectory() as folder:
...     lossvista.load(path.save(pathlib.Path(folder) / "adam.h5")) == path
True
"""

from .functions import ToyFunction, get, names
from .optimizers import OptimizerPath, default_hyperparameters, optimizer_names, run
from .race import Race, RaceTable, race
from .scaling import LossSurface, RegressionProblem, ScalingStudy, scaling_study
from .search import (
    AnnealingHistory,
    GridHistory,
    SearchResult,
    grid_search,
    simulated_annealing,
)

__all__ = [
    "AnnealingHistory",
    "GridHistory",
    "LossSurface",
    "OptimizerPath",
    "Race",
    "RaceTable",
    "RegressionProblem",
    "ScalingStudy",
    "SearchResult",
    "ToyFunction",
    "default_hyperparameters",
    "get",
    "grid_search",
    "names",
    "optimizer_names",
    "race",
    "run",
    "scaling_study",
    "simulated_annealing",
]
