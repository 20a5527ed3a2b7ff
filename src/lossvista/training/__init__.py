"""Training dynamics: a monitor for any training loop, optimizer comparisons and sweeps.

:class:`TrainingMonitor` records, from calls placed in the user's loop, the gradient norm after
every backward pass (total and per parameter tensor), the loss, weight norm and learning rate per
step and per epoch, and answers two questions about the curve: is it on a plateau, and from which
epoch on has it converged.

:func:`compare_optimizers` and :func:`sweep` train fresh models from a factory (the same seeded
initialisation for every run), record them with a monitor, and return a :class:`Comparison`: a
table (final and best loss, convergence epoch, wall time, final sharpness when
``lossvista.sharpness`` is available), the histories, the final state dicts and learning curves.
:func:`shared_plane` puts the final models of a comparison on one plane of directions.

One concept per module: :mod:`~lossvista.training.monitor` (:class:`TrainingMonitor`),
:mod:`~lossvista.training.comparison` (:class:`Comparison`, :func:`compare_optimizers`,
:func:`sweep`), :mod:`~lossvista.training._runs` (the training runs they drive) and
:mod:`~lossvista.training.shared_plane` (:func:`shared_plane`). The figures are drawn by
:mod:`lossvista.plot.training`.
"""

# ``import X as X``: importable from here as before the split, but not in ``__all__`` (the
# settings' defaults, the files' format names and the type aliases of the signatures).
from ._runs import LossFn as LossFn
from ._runs import OptimizerSpec as OptimizerSpec
from .comparison import COMPARISON_FORMAT as COMPARISON_FORMAT
from .comparison import DEFAULT_SHARPNESS as DEFAULT_SHARPNESS
from .comparison import Comparison, compare_optimizers, sweep
from .monitor import DEFAULT_RTOL as DEFAULT_RTOL
from .monitor import HISTORY_FORMAT as HISTORY_FORMAT
from .monitor import TrainingMonitor
from .shared_plane import shared_plane

__all__ = ["Comparison", "TrainingMonitor", "compare_optimizers", "shared_plane", "sweep"]
