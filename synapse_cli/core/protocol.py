"""The wire protocol, sans I/O: text in, message objects out, and back.

Two dialects share the ``/ws`` endpoint (SPEC §1): the native ``{id, op, func, args}`` /
``{id, result, error}`` and JSON-RPC 2.0. :func:`decode_frame` turns one WebSocket text frame into
:class:`Request` and :class:`Invalid` items (and :class:`Reply` items: the peer answering a call this
side sent, a server-to-client call); the ``reply_*`` functions turn outcomes back into bytes in
the dialect of the request (:mod:`synapse_cli.core.encoding`, with the client half: :func:`encode_call`,
:func:`decode_replies`). Nothing in this module touches a socket or an event loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

__all__ = [
    "CALL",
    "CALL_TIMEOUT",
    "CANCEL",
    "CANCELLED",
    "DISCOVER",
    "FORBIDDEN",
    "HISTORY_LOST",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INT64_MIN",
    "INVALID_REQUEST",
    "JSONRPC",
    "LIST",
    "MAX_DEPTH",
    "OVERLOADED",
    "METHOD_NOT_FOUND",
    "NATIVE",
    "PARSE_ERROR",
    "SERVER_ERROR",
    "SHUTTING_DOWN",
    "SUBSCRIBER_TOO_SLOW",
    "UINT64_END",
    "BROKER_UNAVAILABLE",
    "Dialect",
    "ErrorInfo",
    "Frame",
    "Invalid",
    "Reply",
    "Request",
    "decode_frame",
    "decode_text",
    "json_problem",
]

Dialect = Literal["native", "jsonrpc"]
NATIVE: Final = "native"
JSONRPC: Final = "jsonrpc"

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
SERVER_ERROR: Final = -32000
CALL_TIMEOUT: Final = -32001
CANCELLED: Final = -32002
SHUTTING_DOWN: Final = -32003
SUBSCRIBER_TOO_SLOW: Final = -32004
BROKER_UNAVAILABLE: Final = -32005
HISTORY_LOST: Final = -32006  # a topic subscription's since= is older than the history the topic keeps
FORBIDDEN: Final = -32007  # a check of the call's context refused it (Registry(requires=...))
OVERLOADED: Final = -32008  # calls past 2 x max_inflight while the server waits on the peer (ctx.call)

CALL: Final = "call"
LIST: Final = "list"
CANCEL: Final = "cancel"
DISCOVER: Final = "discover"

MAX_DEPTH: Final = 64
MAX_ID_LENGTH: Final = 128
MAX_NAME_LENGTH: Final = 128
MAX_NATIVE_ID: Final = 2**53
INT64_MIN: Final = -(2**63)
UINT64_END: Final = 2**64

_NATIVE_KEYS: Final = frozenset({"id", "op", "func", "args"})
_JSONRPC_KEYS: Final = frozenset({"jsonrpc", "method", "params", "id"})
_REPLY_KEYS: Final = frozenset({"jsonrpc", "id", "result", "error"})
_OPS: Final = {"call": CALL, "list": LIST, "cancel": CANCEL}
_SCALARS: Final = frozenset({int, str, bool, type(None)})
# A string token (skipped whole), a number token, or a bracket: enough to check what orjson lets pass.
_TOKEN: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[\[\]{}]', re.ASCII)
# Fewer characters than this cannot hide what the checks refuse: 65 brackets, or a 20-digit integer.
_SHORTEST_HIDDEN: Final = 19
_LONG_DIGITS: Final = re.compile(r"\d{19}", re.ASCII)  # ASCII: several times faster, and JSON digits are ASCII


@dataclass(slots=True, frozen=True)
class ErrorInfo:
    """An error object: ``code``, ``message`` and optional ``data`` (None means absent)."""

    code: int
    message: str
    data: Any = None
    verbatim: bool = False  # raised by a function: code, message and data pass through unchanged

    def to_dict(self) -> dict[str, Any]:
        """The error as the JSON object both dialects carry."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


@dataclass(slots=True)
class Request:
    """A well-formed request: a call, a ``list``, a ``cancel`` or ``rpc.discover``.

    ``notification`` is true for a JSON-RPC request without ``id``: it gets no reply at all.
    """

    kind: str
    id: Any
    dialect: Dialect
    func: str = ""
    args: list[Any] | dict[str, Any] = field(default_factory=list)
    notification: bool = False


@dataclass(slots=True)
class Invalid:
    """A message that cannot be run; it is answered with ``error`` (``id`` is None when not valid)."""

    id: Any
    dialect: Dialect
    error: ErrorInfo


@dataclass(slots=True)
class Frame:
    """What one text frame held: its items, and whether they came as a batch (array)."""

    items: list[Request | Invalid | Reply]  # a Reply: the peer answers a call this side sent
    batch: bool = False


@dataclass(slots=True)
class Reply:
    """A message as the client sees it: a reply (exactly one of ``result`` / ``error`` meaningful), or
    a stream's item or end (``kind``; JSON-RPC streams name their ``subscription`` instead of an id)."""

    id: Any
    result: Any = None
    error: ErrorInfo | None = None
    kind: str = "reply"  # "reply", "item" (``result`` is the item), "start", "end" (JSON-RPC), "invalid"
    subscription: str | None = None
    position: int | None = None  # an item's place in its topic (a start's: it follows), with a history


def _invalid(message: str, request_id: Any = None, dialect: Dialect = JSONRPC) -> Invalid:
    return Invalid(request_id, dialect, ErrorInfo(INVALID_REQUEST, message))


def _parse_error(message: str) -> Frame:
    return Frame([Invalid(None, JSONRPC, ErrorInfo(PARSE_ERROR, message))])


def _scan_error(text: str) -> str | None:
    """Find what orjson accepts but the spec refuses: nesting over MAX_DEPTH, integers past 64 bits."""
    depth = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return f"nesting deeper than {MAX_DEPTH}"
        elif first in "]}":
            depth -= 1
        elif first != '"' and "." not in token and "e" not in token and "E" not in token:
            if not INT64_MIN <= int(token) < UINT64_END:
                return "integer does not fit in 64 bits"
    return None


def _checked(text: str | bytes, value: Any) -> tuple[Any, str | None]:
    """``value`` as orjson parsed it from ``text``, or (None, reason) when the spec refuses it."""
    if not isinstance(text, str):
        text = text.decode()  # orjson accepted it: valid UTF-8
    # Cheap filters first: the exact scan only runs when the text could break a rule.
    if text.count("[") + text.count("{") > MAX_DEPTH or _LONG_DIGITS.search(text):
        reason = _scan_error(text)
        if reason:
            return None, f"parse error: {reason}"
    return value, None


def _nothing_hidden(text: str | bytes, value: Any) -> bool:
    """True when ``text`` holds no more than ``value`` shows, so the checks of ``_checked`` can be skipped.

    A key given twice keeps only its last value: the first one is in the text, not in ``value``. An ASCII
    text is never shorter than the compact encoding of what it parsed to, so what it may hide besides
    is at most the difference in length (whitespace included): below ``_SHORTEST_HIDDEN``, nothing
    the checks refuse fits. (``value`` holds only strings, integers, booleans and nulls here.)
    """
    if type(text) is str and not text.isascii():
        return False
    return len(text) - len(orjson.dumps(value)) < _SHORTEST_HIDDEN


def json_problem(text: str) -> str | None:
    """What this protocol refuses in JSON that orjson accepts (an integer past 64 bits, deep nesting), or None."""
    return _checked(text, None)[1]


def _valid_id(value: Any, dialect: Dialect) -> bool:
    kind = type(value)
    if kind is str:
        return len(value) <= MAX_ID_LENGTH
    if kind is int:
        return 0 <= value < MAX_NATIVE_ID if dialect == NATIVE else True
    return dialect == JSONRPC and (value is None or kind is float)


def _check_func(func: Any) -> str | None:
    if type(func) is not str:
        return "func must be a string"
    if len(func) > MAX_NAME_LENGTH:
        return f"func longer than {MAX_NAME_LENGTH} characters"
    return None


def _plain_call(obj: dict[str, Any]) -> Request | None:
    """The common request, checked in one go: a call with scalar arguments, in either dialect, or a cancel.

    Native ``{"id", "func", "args"}`` with an optional ``"op": "call"``, native ``{"id", "op": "cancel"}``
    (a client's timeout sends one per call), or JSON-RPC ``{"jsonrpc":
    "2.0", "id", "method", "params"}``; every key present, no other. Scalars only (no float, no
    nesting): nothing in it can be too deep or an integer past 64 bits (orjson reads those as floats).
    Anything else: None, the full path.
    """
    size = len(obj)
    if size == 4 and obj.get("jsonrpc") == "2.0":
        func: Any = obj.get("method")
        args: Any = obj.get("params")
        dialect: Dialect = JSONRPC
    elif size == 3 or (size == 4 and obj.get("op") == "call"):
        func = obj.get("func")
        args = obj.get("args")
        dialect = NATIVE
    elif size == 2 and obj.get("op") == "cancel":
        func = args = CANCEL
        dialect = NATIVE
    else:
        return None
    request_id: Any = obj.get("id")
    kind = type(request_id)
    if kind is int:
        if not 0 <= request_id < MAX_NATIVE_ID:
            return None
    elif kind is not str or len(request_id) > MAX_ID_LENGTH:
        return None
    if args is CANCEL:
        return Request(CANCEL, request_id, NATIVE)
    if type(func) is not str or len(func) > MAX_NAME_LENGTH or func == "rpc.discover":
        return None
    kind = type(args)
    values = args if kind is list else args.values() if kind is dict else None
    if values is None:
        return None
    for value in values:
        if type(value) not in _SCALARS:
            return None
    return Request(CALL, request_id, dialect, func, args)


def _decode_native(obj: dict[str, Any]) -> Request | Invalid:
    has_id = "id" in obj
    request_id = obj.get("id")
    if not has_id or not _valid_id(request_id, NATIVE):
        reason = "missing id" if not has_id else "id must be a string (<= 128 chars) or an integer 0 <= n < 2^53"
        return _invalid(reason, None, NATIVE)
    if not _NATIVE_KEYS.issuperset(obj):
        return _invalid(f"unknown field: {sorted(obj.keys() - _NATIVE_KEYS)[0]}", request_id, NATIVE)
    kind = _OPS.get(obj.get("op", "call")) if type(obj.get("op", "call")) is str else None
    if kind is None:
        return _invalid("op must be one of: call, list, cancel", request_id, NATIVE)
    if kind is not CALL:
        return Request(kind, request_id, NATIVE)
    if "func" not in obj:
        return _invalid("missing func", request_id, NATIVE)
    func = obj["func"]
    problem = _check_func(func)
    args = obj.get("args", [])
    if problem is None and type(args) not in (list, dict):
        problem = "args must be an array or an object"
    if problem:
        return _invalid(problem, request_id, NATIVE)
    return Request(DISCOVER if func == "rpc.discover" else CALL, request_id, NATIVE, func, args)


def _decode_jsonrpc(obj: dict[str, Any]) -> Request | Invalid:
    notification = "id" not in obj
    request_id = obj.get("id")
    if not _valid_id(request_id, JSONRPC):
        return _invalid("invalid id")
    if obj["jsonrpc"] != "2.0":
        return _invalid('jsonrpc must be "2.0"', request_id)
    if not _JSONRPC_KEYS.issuperset(obj):
        return _invalid(f"unknown member: {sorted(obj.keys() - _JSONRPC_KEYS)[0]}", request_id)
    method = obj.get("method")
    problem = "missing method" if "method" not in obj else _check_func(method)
    params = obj.get("params", [])
    if problem is None and type(params) not in (list, dict):
        problem = "params must be an array or an object"
    if problem:
        return _invalid(problem.replace("func", "method"), request_id)
    kind = DISCOVER if method == "rpc.discover" else CALL
    return Request(kind, request_id, JSONRPC, str(method), params, notification)


def _dialect_of(obj: Any) -> Dialect | None:
    if type(obj) is dict:
        if "jsonrpc" in obj:
            return JSONRPC
        if "op" in obj or "func" in obj:
            return NATIVE
    return None


def _decode_reply(obj: dict[str, Any]) -> Reply:
    """A peer's reply to a call this side sent (a server-to-client call); kind "invalid" when malformed.

    Native ``{"id", "result", "error"}``, JSON-RPC ``{"jsonrpc": "2.0", "result" | "error", "id"}``.
    """
    request_id = obj.get("id")
    error = obj.get("error")
    problem = None
    if not _REPLY_KEYS.issuperset(obj):
        problem = f"unknown member: {sorted(obj.keys() - _REPLY_KEYS)[0]}"
    elif "jsonrpc" in obj and (obj["jsonrpc"] != "2.0" or ("result" in obj) == ("error" in obj)):
        problem = 'a JSON-RPC reply has "jsonrpc": "2.0" and one of result or error'
    elif error is not None and not (
        type(error) is dict and type(error.get("code")) is int and type(error.get("message")) is str
    ):
        problem = "error must be null or an object with an integer code and a string message"
    if problem is not None:
        return Reply(request_id, None, ErrorInfo(INVALID_REQUEST, f"invalid reply: {problem}"), "invalid")
    if error is None:
        return Reply(request_id, obj.get("result"))
    return Reply(request_id, None, ErrorInfo(error["code"], error["message"], error.get("data"), verbatim=True))


def _is_reply(obj: Any) -> bool:
    """An object with ``result`` or ``error`` and nothing of a request: a reply, not a call."""
    return (
        type(obj) is dict
        and ("result" in obj or "error" in obj)
        and "method" not in obj
        and "func" not in obj
        and "op" not in obj
    )


def _decode_item(obj: Any, fallback: Dialect) -> Request | Invalid | Reply:
    if _is_reply(obj):
        return _decode_reply(obj)
    dialect = _dialect_of(obj)
    if dialect == JSONRPC:
        return _decode_jsonrpc(obj)
    if dialect == NATIVE:
        return _decode_native(obj)
    request_id = obj.get("id") if type(obj) is dict else None
    request_id = request_id if _valid_id(request_id, fallback) else None
    what = "an object" if type(obj) is dict else f"a JSON {type(obj).__name__}"
    return _invalid(f"not a request: {what} without func/method", request_id, fallback)


def decode_text(text: str | bytes, *, max_batch: int = 1000) -> Request | Frame:
    """Decode one text frame (SPEC §1): the common single request bare, anything else as a :class:`Frame`."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _parse_error(f"parse error: {exc}")
    if type(value) is dict:
        request = _plain_call(value)
        # The text is checked too when it is long enough to hide what the value no longer shows (a
        # duplicated key's first value, dropped by the parser): every request passes the same checks.
        if request is not None and (_nothing_hidden(text, value) or _checked(text, value)[1] is None):
            return request
    value, reason = _checked(text, value)
    if reason:
        return _parse_error(reason)
    if type(value) is not list:
        return Frame([_decode_item(value, JSONRPC)])
    if not value:
        return Frame([_invalid("empty batch")])
    dialect: Dialect = next((d for d in map(_dialect_of, value) if d is not None), JSONRPC)
    if len(value) > max_batch:
        return Frame([_invalid(f"batch of {len(value)} exceeds the limit of {max_batch}", None, dialect)])
    return Frame([_decode_item(item, dialect) for item in value], batch=True)


def decode_frame(text: str | bytes, *, max_batch: int = 1000) -> Frame:
    """Decode one text frame into requests and invalid items (SPEC §1)."""
    decoded = decode_text(text, max_batch=max_batch)
    return Frame([decoded]) if isinstance(decoded, Request) else decoded
