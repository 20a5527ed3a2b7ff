"""Integrations with training frameworks. Importing this package needs none of them: each
framework is imported when its integration is used.

- :class:`LandscapeCallback` (:mod:`~lossvista.integrations.lightning`): a PyTorch Lightning
  callback running a :class:`~lossvista.LandscapeProbe` every ``n`` epochs
  (``pip install 'lossvista[lightning]'``).
"""

from .lightning import LandscapeCallback

__all__ = ["LandscapeCallback"]
