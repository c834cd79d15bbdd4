"""Route the standard library's logging (amqtt, asyncio) into ``twisted.logger``, and set the
libraries' own levels (autobahn's, through txaio, once a WebSocket module imports it)."""

from __future__ import annotations

import logging
import sys

from twisted.logger import Logger, LogLevel

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}

#: autobahn's (txaio's) level for each of the gateway's: below ``debug``, its errors only.
#: Its info and warn lines are per connection: two for each refused WebSocket handshake of
#: a link (``failing WebSocket opening handshake ('... [403]: Forbidden')``, ``dropping
#: connection to peer ... with abort=True: ...``), at every reconnect while the cloud refuses,
#: beside the link's own line with the same cause (throttled), and one for each connection
#: the broker's WebSocket listener aborts, beside the broker's.
_AUTOBAHN_LEVELS = {"debug": "debug", "info": "error", "warn": "error", "error": "error"}
#: The level :func:`install` chose for autobahn, given to txaio by :func:`set_autobahn_level`.
_autobahn_level = _AUTOBAHN_LEVELS["info"]


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
    """Send stdlib logging at ``level`` and above to twisted.logger, and autobahn's at the
    level :data:`_AUTOBAHN_LEVELS` gives it (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, TwistedLogHandler) for h in root.handlers):
        root.addHandler(TwistedLogHandler())
    root.setLevel(_LEVELS[level])
    # transitions (amqtt's state machines) logs every state change at INFO.
    logging.getLogger("transitions").setLevel(max(_LEVELS[level], logging.WARNING))
    global _autobahn_level
    _autobahn_level = _AUTOBAHN_LEVELS[level]
    # autobahn (and txaio's Twisted half, which it logs through) is imported where a WebSocket
    # is first used, and that module calls set_autobahn_level(): an idle gateway loads neither.
    if "txaio.tx" in sys.modules:
        set_autobahn_level()


def set_autobahn_level() -> None:
    """Give autobahn's loggers (txaio's) the level :func:`install` chose last: by every module
    that imports autobahn, as it is imported, and by :func:`install` once txaio is loaded."""
    from txaio import tx

    tx.set_global_log_level(_autobahn_level)
