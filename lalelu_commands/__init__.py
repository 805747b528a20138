"""The `lalelu` command and its subcommands (edge, backend, demo, bench, check, soak, convert, pose, replay)
and the fuzzer: they start the apps and measure them. The core (`lalelu`) never imports from here or from
the apps; the apps (`edge_app`, `backend_app`) never import from here."""
