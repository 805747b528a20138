"""`python -m lalelu`: the same as the `lalelu` command."""

from lalelu.cli import main

raise SystemExit(main())
