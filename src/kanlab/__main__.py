"""``python -m kanlab`` runs the command-line interface (same as the ``kanlab`` command)."""

from kanlab.cli import main

if __name__ == "__main__":
    main()
