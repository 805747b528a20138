"""Log lines a person reads in a terminal and journald understands under systemd.

Under systemd (stderr is the journal's stream, `JOURNAL_STREAM`), each line starts with the syslog
priority journald reads (`<4>` = warning), so `journalctl -p warning` finds the warnings, and carries no
timestamp of its own (the journal has one). In a terminal: time, logger, level, message.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

# logging level -> syslog priority (sd-daemon(3): "<N>" at the start of a line)
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def to_journal(stream: TextIO) -> bool:
    """True when `stream` is connected to journald (systemd sets JOURNAL_STREAM=device:inode)."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    if not wanted:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return wanted == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # every line of a multi-line message gets the priority, or journald files the rest as info
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: int, stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    if to_journal(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def error_line(message: str, stream: TextIO = sys.stderr) -> str:
    """`lalelu: error: ...` as printed for a mistake the user can fix; an error priority in the journal."""
    return ("<3>" if to_journal(stream) else "") + f"lalelu: error: {message}"


class RateLimited:
    """At most one warning a second from one source (a flooding client must not flood the journal); the
    next one that is written counts those held back."""

    __slots__ = ("every_ns", "held", "last_ns")

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_ns = int(every_s * 1e9)
        self.last_ns = -self.every_ns
        self.held = 0

    def warn(self, logger: logging.Logger, message: str, *args: object) -> None:
        """`message % args`, formatted only when it is written: a flood's held-back lines cost a clock read."""
        t = time.monotonic_ns()
        if t - self.last_ns <= self.every_ns:
            self.held += 1
            return
        more = f" (+{self.held} more since the last)" if self.held else ""
        logger.warning(message + "%s", *args, more)
        self.last_ns, self.held = t, 0
