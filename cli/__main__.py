"""``python -m cli``: the same as the ``xmargin`` console script."""

from . import main

main()
