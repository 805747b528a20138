"""Errors a person can act on: the CLI prints them as one message, never as a traceback, and exits with
the error's `exit_code`: 2 for a mistake in what was given (a configuration value, a path, a file that is
not what it should be), 1 for a run that failed (a camera that stopped, a backend that cannot be reached, a
port already taken)."""


class LaleluError(Exception):
    """An expected failure with a message that names the problem and the fix."""

    exit_code = 2


class ConfigError(LaleluError):
    pass


class ModelError(LaleluError):
    pass


class RunFailed(LaleluError):
    """The input was fine; the run itself failed (hardware, network, the machine)."""

    exit_code = 1


class CameraError(LaleluError):
    """A camera source that cannot be used as configured (a missing clip, an unreadable image, a rate the
    sensor cannot reach)."""


class CameraFailed(CameraError, RunFailed):
    """A camera that is not there or stopped delivering frames: systemd's Restart= tries again."""
