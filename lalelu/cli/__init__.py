"""The `lalelu` command and its subcommands (edge, backend, demo, bench, check, soak, convert, pose, replay)
and the fuzzer: they start the apps and measure them. Nothing else in the package imports from here."""
