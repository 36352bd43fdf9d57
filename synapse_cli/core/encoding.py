"""JSON of what goes out, sans I/O: replies and stream items (server side), requests (client side).

Every message synapse writes is encoded here, in the dialect of the request it answers (SPEC §1), and a
client's reply frames are decoded here (:func:`decode_replies`). Results are serialized exactly or not at
all: :func:`dump_json` refuses what JSON cannot carry (SPEC §1.3, -32603 "result not serializable").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Final

import orjson

from synapse_cli.core.protocol import (
    INT64_MIN,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_DEPTH,
    METHOD_NOT_FOUND,
    NATIVE,
    PARSE_ERROR,
    UINT64_END,
    Dialect,
    ErrorInfo,
    Reply,
)

__all__ = [
    "decode_replies",
    "dump_json",
    "encode_call",
    "encode_cancel",
    "encode_end",
    "encode_item",
    "encode_list",
    "encode_notification",
    "item_framing",
    "join_batch",
    "reply_body",
    "reply_error",
    "reply_result",
]

# JSON-RPC 2.0 §5.1 names these codes; replies in that dialect use its exact words.
_JSONRPC_MESSAGES: Final = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
}

# -- encoding replies (server side) -----------------------------------------------------------------


def _to_json(value: Any) -> Any:
    """orjson's fallback: pydantic models and other objects with ``model_dump`` become dicts."""
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _children(item: Any) -> Any:
    """What orjson would serialize inside ``item`` (None for a leaf)."""
    if isinstance(item, dict):
        return item.values()
    if isinstance(item, (list, tuple)):
        return item
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return [getattr(item, f.name) for f in dataclasses.fields(item)]
    dump = getattr(item, "model_dump", None)
    if dump is not None:  # a pydantic model: check its Python values, NaN included
        return dump().values()
    return None


def _carriable(value: Any) -> bool:
    """True when ``value`` has no NaN/Infinity and no nesting deeper than MAX_DEPTH."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
            continue
        children = _children(item)
        if children is not None:
            if depth > MAX_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in children)
    return True


def dump_json(value: Any) -> bytes | None:
    """Serialize a result exactly, or return None when JSON cannot carry it (SPEC §1.3, -32603)."""
    if type(value) is int and INT64_MIN <= value < UINT64_END:  # the commonest result, without the checks
        return b"%d" % value
    try:
        out = orjson.dumps(value, default=_to_json)
    except (TypeError, orjson.JSONEncodeError):
        return None
    # orjson writes NaN as null; only look closer when the output could hide one or nests deeply.
    if (b"null" in out or out.count(b"[") + out.count(b"{") > MAX_DEPTH) and not _carriable(value):
        return None
    return out


def _id_json(request_id: Any) -> bytes:
    return b"%d" % request_id if type(request_id) is int else orjson.dumps(request_id)


def reply_result(request_id: Any, dialect: Dialect, result: Any) -> bytes:
    """The success reply; a result JSON cannot carry becomes -32603 "result not serializable"."""
    body = dump_json(result)
    if body is None:
        return reply_error(request_id, dialect, ErrorInfo(INTERNAL_ERROR, "result not serializable"))
    if dialect == NATIVE:  # reply_body's two lines, repeated: one call less for list/discover replies
        return b'{"id":' + _id_json(request_id) + b',"result":' + body + b',"error":null}'
    return b'{"jsonrpc":"2.0","result":' + body + b',"id":' + _id_json(request_id) + b"}"


def reply_body(request_id: Any, dialect: Dialect, body: bytes) -> bytes:
    """The success reply around a result already encoded as JSON text (``body``, see Function.encode_result)."""
    if dialect == NATIVE:
        return b'{"id":' + _id_json(request_id) + b',"result":' + body + b',"error":null}'
    return b'{"jsonrpc":"2.0","result":' + body + b',"id":' + _id_json(request_id) + b"}"


def item_framing(request_id: Any, dialect: Dialect, subscription: str | None) -> tuple[bytes, bytes]:
    """What goes around a stream's items (SPEC §5): ``prefix + item + suffix`` is one item's message.

    Native: ``{"id": X, "item": ...}``. JSON-RPC: an ``rpc.item`` notification naming the subscription.
    The item part may be followed by ``,"position":N`` (a topic with a history): a topic encodes that once
    per publish and every subscriber puts only its own prefix and suffix around it.
    """
    if dialect == NATIVE:
        return b'{"id":' + _id_json(request_id) + b',"item":', b"}"
    head = b'{"jsonrpc":"2.0","method":"rpc.item","params":{"subscription":' + orjson.dumps(subscription)
    return head + b',"item":', b"}}"


def encode_item(request_id: Any, dialect: Dialect, subscription: str | None, body: bytes) -> bytes:
    """One item of a stream, already encoded as JSON (``body``, see Function.encode_result)."""
    prefix, suffix = item_framing(request_id, dialect, subscription)
    return prefix + body + suffix


def encode_start(request_id: Any, dialect: Dialect, subscription: str | None, position: int) -> bytes:
    """Where a subscription to a topic with a history starts, sent before its first item: its items are
    those after ``position`` (a client whose connection drops before any item resumes from there).

    Native: ``{"id": X, "position": N}``. JSON-RPC: an ``rpc.start`` notification naming the subscription.
    """
    if dialect == NATIVE:
        return b'{"id":' + _id_json(request_id) + b',"position":%d}' % position
    head = b'{"jsonrpc":"2.0","method":"rpc.start","params":{"subscription":' + orjson.dumps(subscription)
    return head + b',"position":%d}}' % position


def encode_end(subscription: str, error: ErrorInfo | None) -> bytes:
    """The ``rpc.end`` notification that closes a JSON-RPC subscription (``error`` None: it ended well)."""
    params = {"subscription": subscription, "error": None if error is None else error.to_dict()}
    return orjson.dumps({"jsonrpc": "2.0", "method": "rpc.end", "params": params})


def _jsonrpc_error(error: ErrorInfo) -> dict[str, Any]:
    standard = _JSONRPC_MESSAGES.get(error.code)
    if standard is None or error.verbatim:
        return error.to_dict()
    # Keep the spec's exact words; a detail the client needs (duplicate id, batch size) goes in data.
    detail = error.data
    if detail is None and error.code == INVALID_REQUEST and error.message.startswith(("duplicate id", "batch")):
        detail = error.message
    return ErrorInfo(error.code, standard, detail).to_dict()


def reply_error(request_id: Any, dialect: Dialect, error: ErrorInfo) -> bytes:
    """The error reply in the request's dialect."""
    body = error.to_dict() if dialect == NATIVE else _jsonrpc_error(error)
    if body.get("data") is not None and dump_json(body["data"]) is None:
        del body["data"]  # an RPCError's data JSON cannot carry: keep the code and message
    if dialect == NATIVE:
        return orjson.dumps({"id": request_id, "result": None, "error": body})
    return orjson.dumps({"jsonrpc": "2.0", "error": body, "id": request_id})


def join_batch(replies: list[bytes]) -> bytes:
    """Join encoded replies into one batch reply."""
    return b"[" + b",".join(replies) + b"]"


# -- the client half -------------------------------------------------------------------------------


def encode_call(
    request_id: Any, func: str, args: list[Any] | tuple[Any, ...] | dict[str, Any], dialect: Dialect
) -> bytes:
    """Encode a call in the given dialect; ValueError for arguments JSON cannot carry (NaN, a set...)."""
    body = dump_json(args)
    if body is None:
        raise ValueError(f"the arguments of {func} cannot be sent as JSON (NaN, Infinity, sets, 64+ bit integers...)")
    name = orjson.dumps(func)
    if dialect == NATIVE:
        return b'{"id":' + _id_json(request_id) + b',"func":' + name + b',"args":' + body + b"}"
    return b'{"jsonrpc":"2.0","method":' + name + b',"params":' + body + b',"id":' + _id_json(request_id) + b"}"


def encode_notification(method: str, params: list[Any] | dict[str, Any] | None) -> bytes:
    """A JSON-RPC notification (no id: no reply), in both dialects: the native one has none of its own.

    ValueError for params JSON cannot carry.
    """
    head = b'{"jsonrpc":"2.0","method":' + orjson.dumps(method)
    if params is None:
        return head + b"}"
    body = dump_json(params)
    if body is None:
        raise ValueError(f"the params of {method} cannot be sent as JSON (NaN, Infinity, sets, 64+ bit integers...)")
    return head + b',"params":' + body + b"}"


def encode_list(request_id: Any) -> bytes:
    """Encode a native ``list`` request."""
    return b'{"id":' + _id_json(request_id) + b',"op":"list"}'


def encode_cancel(request_id: Any) -> bytes:
    """Encode a native ``cancel`` for the call with this id."""
    return orjson.dumps({"op": "cancel", "id": request_id})


def _error_info(error: Any) -> ErrorInfo:
    if type(error) is not dict:
        raise ValueError("error member is not an object")
    code = error.get("code")
    return ErrorInfo(code if type(code) is int else INTERNAL_ERROR, str(error.get("message", "")), error.get("data"))


def _stream_event(obj: dict[str, Any]) -> Reply:
    """A stream's item (native ``{"id", "item"}``, JSON-RPC ``rpc.item``), start (``{"id", "position"}``,
    ``rpc.start``: see :func:`encode_start`) or end (``rpc.end``)."""
    if "id" in obj and "method" not in obj:
        if "item" in obj:
            return Reply(obj["id"], obj["item"], kind="item", position=_position(obj))
        if "position" in obj:
            return Reply(obj["id"], kind="start", position=_position(obj))
    params = obj.get("params")
    method = obj.get("method")
    if method not in _STREAM_EVENTS or type(params) is not dict or type(params.get("subscription")) is not str:
        raise ValueError("not a reply object")
    if method == "rpc.item":
        return Reply(
            None, params.get("item"), kind="item", subscription=params["subscription"], position=_position(params)
        )
    if method == "rpc.start":
        return Reply(None, kind="start", subscription=params["subscription"], position=_position(params))
    error = params.get("error")
    return Reply(None, None, None if error is None else _error_info(error), "end", params["subscription"])


_STREAM_EVENTS = ("rpc.item", "rpc.start", "rpc.end")


def _position(obj: dict[str, Any]) -> int | None:
    """An item's ``position`` (a topic with a history), when it has a valid one."""
    position = obj.get("position")
    return position if type(position) is int else None


def _reply_from(obj: Any) -> Reply:
    if type(obj) is not dict:
        raise ValueError("not a reply object")
    if "result" not in obj and "error" not in obj:
        return _stream_event(obj)
    error = obj.get("error")
    if error is None:
        return Reply(obj.get("id"), obj.get("result"))
    return Reply(obj.get("id"), None, _error_info(error))


def decode_replies(text: str | bytes | bytearray) -> list[Reply]:
    """Decode a reply frame (an object or a batch) from either dialect; ValueError when malformed."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON: {exc}") from exc
    if type(value) is not list:
        return [_reply_from(value)]
    return [_reply_from(item) for item in value]
