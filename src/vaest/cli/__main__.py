"""``python -m vaest.cli``: the console entry point."""

from vaest.cli import main

main()
