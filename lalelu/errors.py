"""Errors a person can act on: the CLI prints them as one message, never as a traceback."""


class LaleluError(Exception):
    """An expected failure with a message that names the problem and the fix."""


class ConfigError(LaleluError):
    pass


class ModelError(LaleluError):
    pass


class CameraError(LaleluError):
    pass
