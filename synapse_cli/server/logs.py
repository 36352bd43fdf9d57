"""Log output: uvicorn-style lines by default, or one JSON object per line (``--log-format json``).

Never message bodies, never tokens: call logs carry ids, names, durations and outcomes only.
"""

from __future__ import annotations

import copy
import logging
import re
from datetime import datetime, timezone
from typing import Any

import orjson

__all__ = ["FIELDS", "JSONFormatter", "SafeLogFilter", "log_config"]

# The structured fields a record may carry (passed with ``extra=``); nothing else reaches JSON logs.
FIELDS = ("connection", "peer", "call_id", "function", "duration_ms", "outcome", "code", "suppressed")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, event, and the structured fields present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


_FRAME = re.compile(r"^([<>] (?:TEXT|BINARY|CONT))\b")


class SafeLogFilter(logging.Filter):
    """Keeps what must never be logged out of uvicorn's and websockets' debug lines.

    * the ``Authorization`` header and a ``bearer.`` subprotocol (the token) are redacted;
    * frame payloads (message bodies) are replaced by their kind;
    * a peer's invalid UTF-8 is one line, not a traceback per occurrence.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Invalid UTF-8"):
            record.exc_info = None
            record.exc_text = None
            return True
        if record.levelno > logging.DEBUG:
            return True
        text = record.getMessage()
        lowered = text.lower()
        if "authorization" in lowered:
            record.msg, record.args = "< authorization: [redacted]", ()
        elif "sec-websocket-protocol" in lowered and "bearer." in lowered:  # a browser's token
            record.msg, record.args = "< sec-websocket-protocol: [redacted]", ()
        elif match := _FRAME.match(text):
            record.msg, record.args = "%s [payload not logged]", (match.group(1),)
        return True


def log_config(level: str, log_format: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's loggers and synapse's own, in the chosen format."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # uvicorn's is stdout: stdout is for results
    config["loggers"]["synapse"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    if log_format == "json":
        json_formatter = {"()": "synapse_cli.server.logs.JSONFormatter"}
        config["formatters"] = {"default": json_formatter, "access": json_formatter}
    return config
