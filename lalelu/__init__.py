"""lalelu drums, one package whose folders follow a frame: `camera` -> `wire` -> `engine` -> `gestures` ->
`output`; `edge` and `backend` are the two apps built from those stages, `runtime` what runs them as
services, `cli` the `lalelu` command. The stages never import an app, the apps never import the command."""

__version__ = "0.1.0"
