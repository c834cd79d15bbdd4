"""Route the standard library's logging (amqtt, asyncio) into ``twisted.logger``."""

from __future__ import annotations

import logging

from twisted.logger import Logger, LogLevel

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class TwistedLogHandler(logging.Handler):
    """A ``logging.Handler`` that re-emits each record as a structured Twisted log event."""

    def emit(self, record: logging.LogRecord) -> None:
        """Forward one record, keeping its logger name as the namespace."""
        if record.levelno >= logging.ERROR:
            level = LogLevel.error
        elif record.levelno >= logging.WARNING:
            level = LogLevel.warn
        elif record.levelno >= logging.INFO:
            level = LogLevel.info
        else:
            level = LogLevel.debug
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not break logging
            message = str(record.msg)
        Logger(namespace=record.name).emit(level, "{text}", text=message)


def install(level: str) -> None:
    """Send stdlib logging at ``level`` and above to twisted.logger (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, TwistedLogHandler) for h in root.handlers):
        root.addHandler(TwistedLogHandler())
    root.setLevel(_LEVELS[level])
    # transitions (amqtt's state machines) logs every state change at INFO.
    logging.getLogger("transitions").setLevel(max(_LEVELS[level], logging.WARNING))
