"""The ``lossvista`` command line: a thin layer over the library.

A user's model and data are named as ``package.module:callable`` or ``path/to/file.py:callable``
(factories called without arguments) plus a checkpoint path; every verb prints where its files
went. Library errors become one-line messages, never tracebacks.
"""

from __future__ import annotations

import click

from .._version import __version__
from .demo import demo
from .export import export
from .files import info, plot
from .hessian import hessian
from .merge import merge
from .report import report
from .sharpness import sharpness
from .slices import interpolate, line, plane
from .toys import toys
from .trajectory import trajectory

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lossvista")
def main() -> None:
    """See and measure the loss landscape of PyTorch models.

    \b
    Compute a surface file (HDF5) and its pictures:
      lossvista line        --model SPEC --data SPEC --checkpoint CKPT --out line.h5
      lossvista plane       --model SPEC --data SPEC --checkpoint CKPT --out plane.h5
      lossvista interpolate --model SPEC --data SPEC --checkpoint END [--start START] --out path.h5
      lossvista trajectory  --model SPEC --data SPEC --checkpoints 'ckpt_*.pt' --out traj.h5
    Work with surface files:
      lossvista plot FILE   lossvista info FILE
      lossvista merge SHARD... --out surf.h5   (files of plane/line --shard i/N)
      lossvista report FILE... --out report.html   (one interactive offline page)
      lossvista export FILE --out surf.vtp [--log] [--clip V]   (.vtp .obj .stl .csv)
    Measure:
      lossvista hessian   --model SPEC --data SPEC --checkpoint CKPT --top-k 5 --trace --density --out DIR
      lossvista sharpness --model SPEC --data SPEC --checkpoint CKPT --kind worst --rho 0.05
    The optimizer lab (analytic 2-D functions):
      lossvista toys race --function rosenbrock --optimizers gd,momentum,adam --out DIR
      lossvista toys scaling --out DIR
    Try it on a small CNN (no download, under a minute on a CPU):
      lossvista demo

    SPEC names a factory called without arguments: package.module:callable or
    path/to/file.py:callable.
    """


_COMMANDS = (
    line,
    plane,
    interpolate,
    plot,
    info,
    demo,
    sharpness,
    toys,
    trajectory,
    hessian,
    merge,
    export,
    report,
)
for _command in _COMMANDS:
    main.add_command(_command)
