"""`python -m confroom` runs the command line."""

from confroom.cli import main

raise SystemExit(main())
