"""``python -m convkit`` is the ``convkit`` command."""

from convkit.cli import main

main()
