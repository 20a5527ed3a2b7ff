"""The lossvista exception and warning family.

Every error a user can cause derives from :class:`LossvistaError`. Messages name the offending
input and say what to do about it. Input errors also derive from :class:`ValueError` so generic
``except ValueError`` code keeps working.
"""

from __future__ import annotations


class LossvistaError(Exception):
    """Base class of every error raised by lossvista."""


class InputError(LossvistaError, ValueError):
    """An argument has the wrong type, shape, range or content."""


class DataError(InputError):
    """The data set is empty, ragged or not in a form lossvista understands."""


class DirectionError(InputError):
    """A direction does not fit the model (names, shapes) or is degenerate (zero norm)."""


class CheckpointError(InputError):
    """A checkpoint does not match the model it is loaded into."""


class StoreError(LossvistaError):
    """A surface file cannot be created, read or written."""


class StoreMismatchError(StoreError):
    """An existing surface file was made with other settings than the ones asked for now."""


class CenterMismatchError(LossvistaError):
    """The slice origin evaluated by the engine differs from the objective's own loss."""


class LossvistaWarning(UserWarning):
    """Base class of lossvista warnings."""


class NonFiniteLossWarning(LossvistaWarning):
    """Some evaluated points gave NaN or infinite values; they are stored as NaN."""


class HessianWarning(LossvistaWarning):
    """A Hessian-vector backend failed or gave suspicious values, and lossvista fell back."""


class ConvergenceWarning(LossvistaWarning):
    """An iterative method stopped at its iteration limit before every pair met the tolerance."""
