"""`python -m lalelu`: the same as the `lalelu` command."""

from lalelu.cli.main import main

raise SystemExit(main())
