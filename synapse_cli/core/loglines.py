"""Log lines that are safe to write: bounded, printable and rate-limited (no logging set-up here).

The registry and the connection driver log through these; how lines look (uvicorn-style or JSON) and
where they go is the server's business (:mod:`synapse_cli.server.logs`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitedLog", "loggable"]


def loggable(text: str, limit: int) -> str:
    """``text`` safe for one log line: at most ``limit`` characters kept, control characters escaped."""
    extra = len(text) - limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return f"{text}... ({extra} more characters)" if extra > 0 else text


class RateLimitedLog:
    """At most one line per ``interval`` seconds for a repeated event; the lines skipped are counted."""

    __slots__ = ("interval", "_last", "_suppressed")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def __call__(self, logger: logging.Logger, level: int, message: str, *args: Any, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        self._last = now
        text = message % args if args else message
        if self._suppressed:
            fields["suppressed"] = self._suppressed
            first, newline, rest = text.partition("\n")  # the note ends the first line
            text = f"{first} ({self._suppressed} similar suppressed){newline}{rest}"
            self._suppressed = 0
        logger.log(level, "%s", text, extra=fields)
