"""lalelu backend: the pinned inference server."""
