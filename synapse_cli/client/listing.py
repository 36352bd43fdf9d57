"""The functions a server describes, checked: the ``list`` result and ``rpc.discover``'s OpenRPC document.

Both become the same ``list`` entries (``name``, ``description``, ``params``, ``result``, ``stream``);
anything that does not have the documented shape is :class:`~synapse_cli.InvalidReply`, never a KeyError.
"""

from __future__ import annotations

from typing import Any

from synapse_cli.core.errors import InvalidReply

__all__ = ["functions_of_list", "functions_of_openrpc"]


def functions_of_list(result: Any) -> list[dict[str, Any]]:
    """The ``list`` result's functions, checked: ``InvalidReply`` unless each has the documented shape."""
    functions = result.get("functions") if type(result) is dict else None
    if type(functions) is not list:
        raise InvalidReply('the server\'s list result is not {"functions": [...]}')
    for function in functions:
        if not (
            type(function) is dict
            and type(function.get("name")) is str
            and type(function.get("description", "")) is str
            and type(function.get("params", {})) is dict
            and type(function.get("result", {})) is dict
        ):
            raise InvalidReply(f"the server's list result has a malformed function: {function!r:.200}")
    return functions


def functions_of_openrpc(document: Any) -> list[dict[str, Any]]:
    """``rpc.discover``'s OpenRPC document as ``list`` entries; ``InvalidReply`` when it is malformed."""
    methods = document.get("methods") if type(document) is dict else None
    if type(methods) is not list:
        raise InvalidReply("the server's rpc.discover result has no list of methods")
    try:
        return functions_of_list({"functions": [_from_openrpc(method) for method in methods]})
    except (AttributeError, KeyError, TypeError) as exc:
        raise InvalidReply(f"the server's rpc.discover result has a malformed method: {exc}") from None


def _from_openrpc(method: dict[str, Any]) -> dict[str, Any]:
    params = method.get("params", [])
    schema = {
        "type": "object",
        "properties": {p["name"]: p.get("schema", {}) for p in params},
        "required": [p["name"] for p in params if p.get("required")],
    }
    result = method.get("result", {}).get("schema", {})
    entry = {"name": method["name"], "description": method.get("description", ""), "params": schema, "result": result}
    if method.get("x-stream") is True:
        entry["stream"] = True
    return entry
