"""What synapse shows a person: rich renderables built by pure functions, and JSON writers.

Commands never print on their own: they build a value, and this module turns it into text for a
terminal (rich) or for a pipe (compact JSON on one line). Consoles come from :func:`console`, which
tests replace to capture output. The bench's tables, charts and progress bar are in
:mod:`synapse_cli.cli.bench_render`.
"""

from __future__ import annotations

import codecs
import io
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

import orjson

__all__ = [
    "banner",
    "banner_entry",
    "console",
    "error_line",
    "functions_table",
    "json_line",
    "plain",
    "pretty_value",
    "rpc_error_text",
    "serve_banner",
    "signature",
    "tolerant_streams",
    "type_of",
    "write_banner",
    "write_json",
]


def console(*, stderr: bool = False) -> Any:
    """The rich Console for stdout or stderr (rich decides colour: NO_COLOR, TTY, FORCE_COLOR)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def json_line(value: Any) -> str:
    """Compact JSON on one line, as pipes and ``--json`` get it."""
    return orjson.dumps(value, default=_fallback).decode() + "\n"


def _fallback(value: Any) -> Any:
    return str(value)


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _carries_unicode(stream: IO[str]) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return codecs.lookup(encoding).name.startswith("utf")
    except LookupError:
        return False


def write_json(value: Any, stream: IO[str] | None = None) -> None:
    """Write ``value`` as one JSON line to stdout (bypassing rich) and flush.

    On a stream that cannot carry Unicode (``PYTHONIOENCODING=ascii``), non-ASCII characters are
    written as JSON ``\\u`` escapes: the same JSON value, never a ``UnicodeEncodeError``.
    """
    out = stream or sys.stdout
    line = json_line(value)
    if not _carries_unicode(out):
        line = _NON_ASCII.sub(_escape, line)
    out.write(line)
    out.flush()


def tolerant_streams() -> None:
    """stdout and stderr replace what their encoding cannot carry instead of raising (JSON is escaped first)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not _carries_unicode(stream):
            stream.reconfigure(errors="replace")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def plain(text: Any) -> str:
    """Remote text made safe to show: control characters (escape sequences, bidi overrides) escaped."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], str(text))


def pretty_value(value: Any) -> Any:
    """A result for a terminal: indented, highlighted JSON."""
    from rich.json import JSON

    return JSON(orjson.dumps(value, default=_fallback).decode())


def error_line(message: str) -> str:
    """The one line every CLI error is: ``synapse: error: ...`` (no traceback, no newlines, no control codes)."""
    return "synapse: error: " + plain(" ".join(str(message).split()))


def rpc_error_text(message: str, code: int, data: Any) -> str:
    """An RPC error for a person: message, code, and the validation details or data."""
    text = f"{message} (code {code})"
    if isinstance(data, list) and all(isinstance(d, dict) and "msg" in d for d in data):
        details = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d['msg']}" for d in data)
        return f"{text}: {details}"
    if data is not None:
        return f"{text}: {orjson.dumps(data, default=str).decode()}"
    return text


def type_of(schema: dict[str, Any]) -> str:
    """A short type name for a JSON Schema: ``integer | number``, ``array[string]``, ``Point``."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_of(option) for option in schema[key])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, dict) and items:
            return f"array[{type_of(items)}]"
        return "array"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object[{type_of(schema['additionalProperties'])}]"
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if "const" in schema:
        return orjson.dumps(schema["const"]).decode()
    if "enum" in schema:
        return " | ".join(orjson.dumps(v).decode() for v in schema["enum"])
    return str(kind) if kind else "any"


def signature(function: dict[str, Any]) -> str:
    """``name(a: integer, b: number = 1) -> number`` from a ``list`` entry."""
    params = function.get("params") or {}
    required = set(params.get("required", []))
    parts = []
    for name, schema in (params.get("properties") or {}).items():
        part = f"{name}: {type_of(schema)}"
        if name not in required and "default" in schema:
            part += f" = {orjson.dumps(schema['default']).decode()}"
        elif name not in required:
            part += " = …"
        parts.append(part)
    result = type_of(function.get("result") or {})
    if function.get("stream") is True:  # a stream function: its result schema is one item's
        result = f"stream of {result}"
    return f"{function['name']}({', '.join(parts)}) -> {result}"


def functions_table(functions: Iterable[dict[str, Any]], *, title: str | None = None) -> Any:
    """The table ``synapse list`` and the ``serve`` banner show."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("function", style="bold cyan", no_wrap=True)
    table.add_column("signature", overflow="fold")
    table.add_column("description", overflow="fold")
    for function in functions:  # what a server sends is shown as text: no markup, no control codes
        call_signature = signature(function).split("(", 1)[1]
        cells = (function["name"], "(" + call_signature, function.get("description", ""))
        table.add_row(*(Text(plain(cell)) for cell in cells))
    return table


def banner(url: str, functions: list[dict[str, Any]], *, version: str, details: dict[str, str]) -> Any:
    """The ``synapse serve`` banner: where to connect, how it is set up, what it serves."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    lines = Text()
    lines.append("synapse ", style="bold")
    lines.append(version)
    lines.append("  serving on ")
    lines.append(url, style="bold green")
    for key, value in details.items():
        lines.append(f"\n{key}: ", style="dim")
        lines.append(value)
    count = len(functions)
    table = functions_table(functions, title=f"{count} function{'' if count == 1 else 's'}")
    return Group(Panel(lines, expand=False), table)


def serve_banner(settings: Any, functions: list[dict[str, Any]], *, version: str) -> Any:
    """``synapse serve``'s banner for its ``Settings`` (the port is the one bound)."""
    return banner(settings.url, functions, version=version, details=_serve_details(settings))


def _serve_details(settings: Any) -> dict[str, str]:
    auth = "bearer token required" if settings.token else "none" if settings.insecure else "none (loopback only)"
    if settings.tokens:
        count = len(settings.tokens) + (settings.token is not None)
        identities = len(set(settings.tokens.values()))
        tokens = f"{count} token" + ("s" if count != 1 else "")
        auth = f"bearer token required ({tokens}, {identities} identit{'ies' if identities != 1 else 'y'})"
    details = {
        "auth": auth,
        "limits": f"{settings.max_message_size} B/message, {settings.max_connections} connections, "
        f"{settings.max_inflight} in flight/connection, call timeout {settings.call_timeout:g} s",
        "health": settings.url.replace("ws", "http", 1).removesuffix("/ws") + "/health",
    }
    if settings.docs:
        details["docs"] = settings.url.replace("ws", "http", 1).removesuffix("/ws") + "/docs"
    if settings.workers > 1:
        details["workers"] = str(settings.workers)
    return details


def banner_entry(url: str, functions: list[dict[str, Any]], *, version: str, details: dict[str, str]) -> dict[str, Any]:
    """The banner as one ``--log-format json`` line: a log entry with the URL, settings and signatures."""
    from datetime import datetime, timezone

    return {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "level": "info",
        "logger": "synapse.server",
        "event": f"synapse {version} serving on {url}",
        "url": url,
        "version": version,
        **details,
        "functions": [signature(function) for function in functions],
    }


def write_banner(settings: Any, functions: list[dict[str, Any]], *, version: str) -> None:
    """Write ``synapse serve``'s banner to stderr: the panel and table, or one JSON line with --log-format json."""
    if settings.log_format == "json":
        entry = banner_entry(settings.url, functions, version=version, details=_serve_details(settings))
        write_json(entry, sys.stderr)
    else:
        console(stderr=True).print(serve_banner(settings, functions, version=version))
