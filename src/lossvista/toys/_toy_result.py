"""What the toy lab's results on a function share: the file names the function (by its registered
name and parameters, :func:`~lossvista.toys.functions.function_state`) instead of pickling its
expression, so ``save`` refuses a function built by hand, which ``lossvista.load`` could not
rebuild."""

from __future__ import annotations

from pathlib import Path

from .._result import Result
from .functions import ToyFunction, check_registered


class FunctionResult(Result):
    """A :class:`~lossvista._result.Result` about one toy function (its ``function`` attribute)."""

    function: ToyFunction

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (read it back with :func:`lossvista.load`).

        Raises:
            InputError: the function is not one :func:`lossvista.toys.get` builds by name (a
                ``ToyFunction`` made by hand), so loading could not rebuild it.
        """
        check_registered(self.function)
        return super().save(path)
