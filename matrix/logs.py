"""Structured logs: one JSON object per line, with the fields an operator filters on.

No request body and no answer text is logged at info level; secrets never reach a log
record because the config holds them as SecretStr and error messages never carry them.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson
from aiohttp.http_exceptions import BadHttpMessage


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class ClientGarbage(logging.Filter):
    """Demote aiohttp's "Error handling request" for a client's malformed HTTP to debug.

    aiohttp logs those at ERROR with a traceback, so any client could flood the error log;
    the client already got its 400.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage) and record.levelno > logging.DEBUG:
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def install_filters() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientGarbage) for f in server.filters):
        server.addFilter(ClientGarbage())


def configure(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "websockets", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def event(logger: logging.Logger, msg: str, **fields) -> None:
    """Log `msg` at info with structured `fields` (skipped cheaply when info is off)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(msg, extra={"fields": fields})
