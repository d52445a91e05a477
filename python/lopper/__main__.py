"""``python -m lopper``: the same as the ``lopper`` command."""

from ._cli import main

main()
