"""lalelu drums: shared code of the edge and backend apps (protocol, poses, timing, configuration)."""

__version__ = "0.1.0"
