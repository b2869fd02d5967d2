"""Logging for journald: stderr, a level prefix, no timestamps (the journal adds them).

``<3>``-style priority prefixes let journald file each line under its level when the unit
runs with ``SyslogLevelPrefix=yes`` (the default); on a terminal the plain level name is shown.
"""

from __future__ import annotations

import logging
import sys

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{msg}"
        return f"{record.levelname}: {msg}"


def setup(level: str = "INFO") -> None:
    import os

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and pymodbus are chatty at INFO
    logging.getLogger("pymodbus").setLevel(logging.WARNING)
