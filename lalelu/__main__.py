"""`python -m lalelu`: the same as the `lalelu` command."""

from lalelu_commands.cli import main

raise SystemExit(main())
