"""Everything synapse shows a person: rich renderables built by pure functions, and JSON writers.

Commands never print on their own: they build a value, and this module turns it into text for a
terminal (rich) or for a pipe (compact JSON on one line). Consoles come from :func:`console`, which
tests replace to capture output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

import orjson

__all__ = [
    "banner",
    "console",
    "error_line",
    "functions_table",
    "json_line",
    "pretty_value",
    "signature",
    "type_of",
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


def write_json(value: Any, stream: IO[str] | None = None) -> None:
    """Write ``value`` as one JSON line to stdout (bypassing rich) and flush."""
    out = stream or sys.stdout
    out.write(json_line(value))
    out.flush()


def pretty_value(value: Any) -> Any:
    """A result for a terminal: indented, highlighted JSON."""
    from rich.json import JSON

    return JSON(orjson.dumps(value, default=_fallback).decode())


def error_line(message: str) -> str:
    """The one line every CLI error is: ``synapse: error: ...`` (no traceback, no newlines inside)."""
    return "synapse: error: " + " ".join(str(message).split())


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
    return f"{function['name']}({', '.join(parts)}) -> {result}"


def functions_table(functions: Iterable[dict[str, Any]], *, title: str | None = None) -> Any:
    """The table ``synapse list`` and the ``serve`` banner show."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("function", style="bold cyan", no_wrap=True)
    table.add_column("signature", overflow="fold")
    table.add_column("description", overflow="fold")
    for function in functions:
        call_signature = signature(function).split("(", 1)[1]
        table.add_row(function["name"], "(" + call_signature, function.get("description", ""))
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
    table = functions_table(functions, title=f"{len(functions)} functions")
    return Group(Panel(lines, expand=False), table)
