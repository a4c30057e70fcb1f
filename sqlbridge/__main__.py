"""``python -m sqlbridge``: the same as the ``sqlbridge`` command."""

from sqlbridge.cli import main

main()
