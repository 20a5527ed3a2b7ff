"""``python -m lossvista`` runs the command line (see :mod:`lossvista.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
