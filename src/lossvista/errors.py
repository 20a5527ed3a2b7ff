"""The lossvista exception and warning family.

Every error a user can cause derives from :class:`LossvistaError`. Messages name the offending
input and say what to do about it. Input errors also derive from :class:`ValueError` so generic
``except ValueError`` code keeps working, and an error lossvista translates (a failing model or
loss, see :func:`translated`) still derives from the builtin class of the original.
"""

from __future__ import annotations

from typing import Any, TypeVar

E = TypeVar("E", bound="LossvistaError")


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


class MissingDependencyError(LossvistaError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip extra
    (``pip install 'lossvista[tensorboard]'``). Also an :class:`ImportError`."""


class CenterMismatchError(LossvistaError):
    """The slice origin evaluated by the engine differs from the objective's own loss."""


class LossvistaWarning(UserWarning):
    """Base class of lossvista warnings."""


class NonFiniteLossWarning(LossvistaWarning):
    """Some evaluated points gave NaN or infinite values; they are stored as NaN."""


class HessianWarning(LossvistaWarning):
    """A Hessian-vector backend failed or gave suspicious values, and lossvista fell back."""


class LongRunWarning(LossvistaWarning):
    """A grid will take long; the message states the estimated time, memory and file size."""


class ConvergenceWarning(LossvistaWarning):
    """An iterative method stopped at its iteration limit before every pair met the tolerance."""


_TRANSLATED: dict[tuple[type, type], type] = {}


def translated(error: type[E], message: str, cause: BaseException) -> E:
    """``error(message)`` that is also an instance of the builtin class of ``cause``.

    lossvista adds what it knows (the batch, the shapes and dtypes) to an exception raised by the
    caller's model or loss, and raises the result ``from`` the original. Deriving from the
    original's builtin class (``RuntimeError``, ``IndexError``...) keeps ``except RuntimeError``
    around a lossvista call working. Where the classes cannot be combined, ``error`` alone.
    """
    base = next(
        (c for c in type(cause).__mro__ if c.__module__ == "builtins" and c is not Exception),
        Exception,
    )
    if not issubclass(base, Exception) or issubclass(error, base):
        return error(message)
    key = (error, base)
    if key not in _TRANSLATED:
        try:
            _TRANSLATED[key] = type(
                error.__name__,
                (error, base),
                {
                    "__module__": error.__module__,
                    "__qualname__": error.__qualname__,
                    "__reduce__": _reduce_to(error),
                },
            )
        except TypeError:  # incompatible layouts (e.g. OSError): the lossvista class alone
            _TRANSLATED[key] = error
    return _TRANSLATED[key](message)  # type: ignore[no-any-return]


def _reduce_to(error: type) -> Any:
    def __reduce__(self: BaseException) -> tuple[type, tuple[Any, ...]]:
        return (error, self.args)  # pickles (multiprocessing) as the plain lossvista class

    return __reduce__
