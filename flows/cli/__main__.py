"""``python -m flows.cli``: the same as the ``ragops`` console script."""

from flows.cli import main

main()
