"""The wire protocol, sans I/O: strings in, Request/Invalid objects out, reply bytes back (SPEC §1)."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from synapse_cli.core import protocol
from synapse_cli.core.encoding import (
    decode_replies,
    dump_json,
    encode_call,
    encode_cancel,
    join_batch,
    reply_body,
    reply_error,
    reply_result,
)
from synapse_cli.core.protocol import (
    CALL,
    CANCEL,
    DISCOVER,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSONRPC,
    LIST,
    METHOD_NOT_FOUND,
    NATIVE,
    PARSE_ERROR,
    Dialect,
    ErrorInfo,
    Frame,
    Invalid,
    Reply,
    Request,
    decode_frame,
)

# Every code SPEC §1.3 defines; decoding a frame can only ever produce the first two.
SPEC_CODES = {-32700, -32600, -32601, -32602, -32603, -32000, -32001, -32002, -32003}
DECODE_CODES = {PARSE_ERROR, INVALID_REQUEST}


def nested_list(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep (depth 1 is ``[]``)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def invalid_request(message: str, request_id: Any = None, dialect: protocol.Dialect = JSONRPC) -> Frame:
    """The frame decode_frame returns for one -32600 message."""
    return Frame([Invalid(request_id, dialect, ErrorInfo(INVALID_REQUEST, message))])


def assert_parse_error(frame: Frame) -> None:
    """A -32700 frame: one JSON-RPC-form item, id null, not a batch."""
    assert len(frame.items) == 1
    item = frame.items[0]
    assert isinstance(item, Invalid)
    assert (item.id, item.dialect, item.error.code, item.error.data) == (None, JSONRPC, PARSE_ERROR, None)
    assert item.error.message.startswith("parse error")
    assert frame.batch is False


# -- the native dialect ----------------------------------------------------------------------------


def test_native_call_positional() -> None:
    """The SPEC's native example decodes to a call with positional args."""
    frame = decode_frame('{"id": "1234", "op": "call", "func": "add_numbers", "args": [5, 10]}')
    assert frame == Frame([Request(CALL, "1234", NATIVE, "add_numbers", [5, 10])])


def test_native_call_named_args_and_default_op() -> None:
    """Without ``op`` a native message is a call; an args object passes by name."""
    frame = decode_frame(b'{"id": 7, "func": "add_numbers", "args": {"a": 1, "b": 2}}')
    assert frame == Frame([Request(CALL, 7, NATIVE, "add_numbers", {"a": 1, "b": 2})])


def test_native_args_default_to_empty_list() -> None:
    """A native call without ``args`` gets ``[]``."""
    assert decode_frame('{"id": 1, "func": "f"}') == Frame([Request(CALL, 1, NATIVE, "f", [])])


def test_native_list_op() -> None:
    """``op: list`` decodes to a list request."""
    assert decode_frame('{"id": 1, "op": "list"}') == Frame([Request(LIST, 1, NATIVE)])


def test_native_cancel_op() -> None:
    """``op: cancel`` decodes to a cancel request carrying the id of the call to cancel."""
    assert decode_frame('{"op": "cancel", "id": "abc"}') == Frame([Request(CANCEL, "abc", NATIVE)])


def test_native_rpc_discover_by_func() -> None:
    """A native call of ``rpc.discover`` is the discover request."""
    frame = decode_frame('{"id": 1, "func": "rpc.discover"}')
    assert frame == Frame([Request(DISCOVER, 1, NATIVE, "rpc.discover", [])])


@pytest.mark.parametrize("request_id", [0, 2**53 - 1, "", "x" * 128, "é"])
def test_native_id_boundaries_accepted(request_id: Any) -> None:
    """Native ids: integers 0 <= n < 2^53 and strings up to 128 characters are valid."""
    text = json.dumps({"id": request_id, "func": "f"})
    assert decode_frame(text) == Frame([Request(CALL, request_id, NATIVE, "f", [])])


def test_func_of_128_characters_accepted() -> None:
    """A function name of exactly 128 characters is valid."""
    name = "f" * 128
    assert decode_frame(json.dumps({"id": 1, "func": name})) == Frame([Request(CALL, 1, NATIVE, name, [])])


BAD_NATIVE_IDS = {
    "missing": '{"func": "f"}',
    "null": '{"id": null, "func": "f"}',
    "true": '{"id": true, "func": "f"}',
    "false": '{"id": false, "func": "f"}',
    "float": '{"id": 1.5, "func": "f"}',
    "integral float": '{"id": 1.0, "func": "f"}',
    "object": '{"id": {}, "func": "f"}',
    "array": '{"id": [1], "op": "list"}',
    "2^53": '{"id": 9007199254740992, "func": "f"}',
    "negative": '{"id": -1, "func": "f"}',
    "129 chars": json.dumps({"id": "x" * 129, "func": "f"}),
}


@pytest.mark.parametrize("text", BAD_NATIVE_IDS.values(), ids=BAD_NATIVE_IDS.keys())
def test_native_bad_id(text: str) -> None:
    """A native message with a missing or invalid id is -32600 with id null, in the native dialect."""
    frame = decode_frame(text)
    assert len(frame.items) == 1
    item = frame.items[0]
    assert isinstance(item, Invalid)
    assert (item.id, item.dialect, item.error.code) == (None, NATIVE, INVALID_REQUEST)


NATIVE_INVALID = {
    "func not a string": ('{"id": 1, "func": 5}', "func must be a string"),
    "func null": ('{"id": 1, "func": null}', "func must be a string"),
    "func too long": (json.dumps({"id": 1, "func": "f" * 129}), "func longer than 128 characters"),
    "missing func": ('{"id": 1, "op": "call"}', "missing func"),
    "args a number": ('{"id": 1, "func": "f", "args": 5}', "args must be an array or an object"),
    "args a string": ('{"id": 1, "func": "f", "args": "x"}', "args must be an array or an object"),
    "args null": ('{"id": 1, "func": "f", "args": null}', "args must be an array or an object"),
    "unknown op": ('{"id": 1, "op": "nope"}', "op must be one of: call, list, cancel"),
    "op not a string": ('{"id": 1, "op": 3, "func": "f"}', "op must be one of: call, list, cancel"),
    "unknown field": ('{"id": 1, "func": "f", "extra": 1}', "unknown field: extra"),
}


@pytest.mark.parametrize(("text", "message"), NATIVE_INVALID.values(), ids=NATIVE_INVALID.keys())
def test_native_invalid_request_echoes_valid_id(text: str, message: str) -> None:
    """A malformed native message with a valid id is -32600 with that id echoed."""
    assert decode_frame(text) == invalid_request(message, 1, NATIVE)


def test_native_invalid_request_echoes_string_id() -> None:
    """A string id is echoed unchanged in a -32600."""
    assert decode_frame('{"id": "a", "func": []}') == invalid_request("func must be a string", "a", NATIVE)


# -- the JSON-RPC 2.0 dialect ----------------------------------------------------------------------


def test_jsonrpc_call_positional() -> None:
    """A JSON-RPC request maps method to func and params to args."""
    frame = decode_frame('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}')
    assert frame == Frame([Request(CALL, 1, JSONRPC, "subtract", [42, 23])])


def test_jsonrpc_call_named() -> None:
    """JSON-RPC params by name become an args object."""
    frame = decode_frame('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42}, "id": "x"}')
    assert frame == Frame([Request(CALL, "x", JSONRPC, "subtract", {"minuend": 42})])


def test_jsonrpc_notification() -> None:
    """A JSON-RPC request without id is a notification."""
    frame = decode_frame('{"jsonrpc": "2.0", "method": "update", "params": [1, 2]}')
    assert frame == Frame([Request(CALL, None, JSONRPC, "update", [1, 2], notification=True)])


def test_jsonrpc_null_id_is_not_a_notification() -> None:
    """An explicit ``"id": null`` is a request that gets a reply, not a notification."""
    frame = decode_frame('{"jsonrpc": "2.0", "method": "f", "id": null}')
    assert frame == Frame([Request(CALL, None, JSONRPC, "f", [], notification=False)])


@pytest.mark.parametrize("request_id", [2**53, -5, 1.5, "x"])
def test_jsonrpc_accepts_ids_the_native_dialect_refuses(request_id: Any) -> None:
    """JSON-RPC ids follow JSON-RPC (any number or string), not the native limits."""
    text = json.dumps({"jsonrpc": "2.0", "method": "f", "id": request_id})
    assert decode_frame(text) == Frame([Request(CALL, request_id, JSONRPC, "f", [])])


def test_jsonrpc_rpc_discover() -> None:
    """``rpc.discover`` is the discover request."""
    frame = decode_frame('{"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}')
    assert frame == Frame([Request(DISCOVER, 1, JSONRPC, "rpc.discover", [])])


JSONRPC_INVALID = {
    "method not a string": ('{"jsonrpc": "2.0", "method": 1, "params": "bar", "id": 7}', "method must be a string"),
    "missing method": ('{"jsonrpc": "2.0", "id": 7}', "missing method"),
    "method too long": (
        json.dumps({"jsonrpc": "2.0", "method": "m" * 129, "id": 7}),
        "method longer than 128 characters",
    ),
    "params a string": ('{"jsonrpc": "2.0", "method": "f", "params": "bar", "id": 7}', None),
    "wrong version": ('{"jsonrpc": "1.0", "method": "f", "id": 7}', 'jsonrpc must be "2.0"'),
    "unknown member": ('{"jsonrpc": "2.0", "method": "f", "id": 7, "extra": 1}', "unknown member: extra"),
    "native op member": ('{"jsonrpc": "2.0", "op": "list", "id": 7}', "unknown member: op"),
}


@pytest.mark.parametrize(("text", "message"), JSONRPC_INVALID.values(), ids=JSONRPC_INVALID.keys())
def test_jsonrpc_invalid_request_echoes_valid_id(text: str, message: str | None) -> None:
    """A malformed JSON-RPC request with a valid id is -32600 in JSON-RPC form with that id echoed."""
    frame = decode_frame(text)
    assert len(frame.items) == 1
    item = frame.items[0]
    assert isinstance(item, Invalid)
    assert (item.id, item.dialect, item.error.code) == (7, JSONRPC, INVALID_REQUEST)
    if message is not None:
        assert item.error.message == message


@pytest.mark.parametrize("bad_id", ["true", "{}", "[1]"])
def test_jsonrpc_bad_id_is_null(bad_id: str) -> None:
    """A JSON-RPC request with a bool/object/array id is -32600 with id null."""
    frame = decode_frame(f'{{"jsonrpc": "2.0", "method": "f", "id": {bad_id}}}')
    assert frame == invalid_request("invalid id")


def test_jsonrpc_invalid_notification_still_answered() -> None:
    """A malformed message without id is an error (id null), not a silent notification."""
    frame = decode_frame('{"jsonrpc": "2.0", "method": 1}')
    assert frame == invalid_request("method must be a string")


# -- dialect detection (SPEC §1.2) ------------------------------------------------------------------


def test_jsonrpc_member_wins_over_native_members() -> None:
    """An object with ``jsonrpc`` is JSON-RPC even when it also has ``func``."""
    frame = decode_frame('{"jsonrpc": "2.0", "func": "f", "id": 1}')
    assert frame == Frame([Invalid(1, JSONRPC, ErrorInfo(INVALID_REQUEST, "unknown member: func"))])


def test_op_alone_makes_native() -> None:
    """An object with ``op`` (and no ``jsonrpc``) is native."""
    assert decode_frame('{"op": "list"}').items[0].dialect == NATIVE


def test_func_alone_makes_native() -> None:
    """An object with ``func`` (and no ``jsonrpc``) is native."""
    assert decode_frame('{"func": "f"}').items[0].dialect == NATIVE


UNDETERMINABLE = {
    "number": ("1", "not a request: a JSON int without func/method", None),
    "float": ("2.5", "not a request: a JSON float without func/method", None),
    "string": ('"s"', "not a request: a JSON str without func/method", None),
    "null": ("null", "not a request: a JSON NoneType without func/method", None),
    "true": ("true", "not a request: a JSON bool without func/method", None),
    "empty object": ("{}", "not a request: an object without func/method", None),
    "object with an id": ('{"id": 5}', "not a request: an object without func/method", 5),
    "method without jsonrpc": ('{"method": "f", "id": "a"}', "not a request: an object without func/method", "a"),
    "object with a bad id": ('{"id": true}', "not a request: an object without func/method", None),
}


@pytest.mark.parametrize(("text", "message", "request_id"), UNDETERMINABLE.values(), ids=UNDETERMINABLE.keys())
def test_undeterminable_dialect_uses_jsonrpc_form(text: str, message: str, request_id: Any) -> None:
    """A non-object, or an object without jsonrpc/op/func, is -32600 in JSON-RPC form (valid id echoed)."""
    assert decode_frame(text) == invalid_request(message, request_id, JSONRPC)


def test_empty_batch() -> None:
    """An empty array is one -32600 in JSON-RPC form, not a batch reply."""
    assert decode_frame("[]") == invalid_request("empty batch")


def test_batch_takes_native_dialect_of_its_members() -> None:
    """Inside a native batch, an item whose dialect cannot be told is answered natively."""
    frame = decode_frame('[{"id": 1, "func": "f"}, 5, {"id": 2}]')
    assert frame == Frame(
        [
            Request(CALL, 1, NATIVE, "f", []),
            Invalid(None, NATIVE, ErrorInfo(INVALID_REQUEST, "not a request: a JSON int without func/method")),
            Invalid(2, NATIVE, ErrorInfo(INVALID_REQUEST, "not a request: an object without func/method")),
        ],
        batch=True,
    )


def test_batch_takes_jsonrpc_dialect_of_its_members() -> None:
    """Inside a JSON-RPC batch, an undeterminable item is answered in JSON-RPC form."""
    frame = decode_frame('[1, {"jsonrpc": "2.0", "method": "f", "id": 1}]')
    assert frame == Frame(
        [
            Invalid(None, JSONRPC, ErrorInfo(INVALID_REQUEST, "not a request: a JSON int without func/method")),
            Request(CALL, 1, JSONRPC, "f", []),
        ],
        batch=True,
    )


def test_batch_of_only_undeterminable_items() -> None:
    """A batch with no recognisable member answers each item in JSON-RPC form."""
    error = ErrorInfo(INVALID_REQUEST, "not a request: a JSON int without func/method")
    assert decode_frame("[1, 2]") == Frame([Invalid(None, JSONRPC, error), Invalid(None, JSONRPC, error)], batch=True)


def test_mixed_batch_keeps_each_objects_own_dialect() -> None:
    """A batch mixing both dialects decodes each object in its own dialect."""
    frame = decode_frame('[{"jsonrpc": "2.0", "method": "f", "id": 1}, {"id": 2, "func": "g"}]')
    assert frame == Frame([Request(CALL, 1, JSONRPC, "f", []), Request(CALL, 2, NATIVE, "g", [])], batch=True)


def test_batch_of_notifications() -> None:
    """A batch of JSON-RPC notifications decodes to notification requests only."""
    frame = decode_frame('[{"jsonrpc": "2.0", "method": "a"}, {"jsonrpc": "2.0", "method": "b", "params": [1]}]')
    assert frame == Frame(
        [Request(CALL, None, JSONRPC, "a", [], True), Request(CALL, None, JSONRPC, "b", [1], True)],
        batch=True,
    )


def test_nested_array_inside_batch_is_invalid() -> None:
    """An array inside a batch is not a request."""
    frame = decode_frame('[[{"id": 1, "func": "f"}]]')
    error = ErrorInfo(INVALID_REQUEST, "not a request: a JSON list without func/method")
    assert frame == Frame([Invalid(None, JSONRPC, error)], batch=True)


def test_batch_at_max_batch_accepted() -> None:
    """A batch of exactly max_batch items is decoded."""
    frame = decode_frame('[{"id": 1, "func": "f"}, {"id": 2, "func": "f"}]', max_batch=2)
    assert frame == Frame([Request(CALL, 1, NATIVE, "f", []), Request(CALL, 2, NATIVE, "f", [])], batch=True)


def test_batch_over_max_batch() -> None:
    """A batch over max_batch is one -32600 in the batch's dialect."""
    text = json.dumps([{"id": i, "func": "f"} for i in range(3)])
    assert decode_frame(text, max_batch=2) == invalid_request("batch of 3 exceeds the limit of 2", None, NATIVE)


def test_default_max_batch_is_1000() -> None:
    """Without max_batch, 1000 items pass and 1001 are refused."""
    ok = decode_frame(json.dumps([{"id": i, "func": "f"} for i in range(1000)]))
    assert ok.batch is True and len(ok.items) == 1000
    refused = decode_frame(json.dumps([{"jsonrpc": "2.0", "method": "f", "id": i} for i in range(1001)]))
    assert refused == invalid_request("batch of 1001 exceeds the limit of 1000", None, JSONRPC)


# -- -32700 ----------------------------------------------------------------------------------------


PARSE_ERRORS = {
    "not json": "hello",
    "empty text": "",
    "only whitespace": "   ",
    "single quotes": "{'id': 1, 'func': 'f'}",
    "trailing garbage": '{"id": 1, "func": "f"} x',
    "two values": '{"id": 1, "func": "f"}{"id": 2, "func": "f"}',
    "trailing comma": '{"id": 1, "func": "f",}',
    "truncated": '{"id": 1, "func": "f"',
    "bom": '\ufeff{"id": 1, "func": "f"}',
    "NaN": '{"id": 1, "func": "f", "args": [NaN]}',
    "bare NaN": "NaN",
    "Infinity": '{"id": 1, "func": "f", "args": [Infinity]}',
    "-Infinity": "[-Infinity]",
    "1e400": '{"id": 1, "func": "f", "args": [1e400]}',
    "-1e400": "-1e400",
    "lone high surrogate": '"\\ud800"',
    "lone surrogate in id": '{"id": "\\ud800", "func": "f"}',
    "lone low surrogate": '["\\udc00"]',
    "2^64": "18446744073709551616",
    "2^64 in args": '{"id": 1, "func": "f", "args": [18446744073709551616]}',
    "below -2^63": "-9223372036854775809",
    "below -2^63 in args": '{"id": 1, "func": "f", "args": [-9223372036854775809]}',
    "20 digits": '{"id": 1, "func": "f", "args": [99999999999999999999]}',
    "30 digits": "[123456789012345678901234567890]",
    "negative 25 digits": "-1234567890123456789012345",
    "huge id": '{"id": 100000000000000000000000, "func": "f"}',
    "65 deep": '{"id": 1, "func": "f", "args": ' + "[" * 64 + "]" * 64 + "}",
    "65 deep objects": '{"a":' * 65 + "1" + "}" * 65,
}


@pytest.mark.parametrize("text", PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
def test_parse_errors(text: str) -> None:
    """Text the spec refuses as JSON is a -32700 in JSON-RPC form with id null."""
    assert_parse_error(decode_frame(text))


@pytest.mark.parametrize("raw", [b"\xff", b'{"id": 1, "func": "\xc3"}', b'"\xed\xa0\x80"'], ids=["ff", "cut", "cesu"])
def test_invalid_utf8_is_parse_error(raw: bytes) -> None:
    """Bytes that are not valid UTF-8 are a -32700."""
    assert_parse_error(decode_frame(raw))


def test_lone_surrogate_in_python_str_is_parse_error() -> None:
    """A str holding an unpaired surrogate code point (not valid UTF-8) is a -32700."""
    assert_parse_error(decode_frame('{"id": 1, "func": "\ud800"}'))


def test_surrogate_pair_escape_accepted() -> None:
    """A properly paired surrogate escape is a valid string."""
    frame = decode_frame('{"id": "\\ud83d\\ude00", "func": "f"}')
    assert frame == Frame([Request(CALL, "\U0001f600", NATIVE, "f", [])])


@pytest.mark.parametrize("number", [2**64 - 1, -(2**63), 2**63, 10**19])
def test_integers_that_fit_in_64_bits_accepted(number: int) -> None:
    """Integers within 64 bits (signed or unsigned) pass the parser."""
    frame = decode_frame(json.dumps({"id": 1, "func": "f", "args": [number]}))
    assert frame == Frame([Request(CALL, 1, NATIVE, "f", [number])])


def test_long_digit_strings_are_not_integers() -> None:
    """Twenty digits inside a string are text, not an integer past 64 bits."""
    frame = decode_frame('{"id": "99999999999999999999", "func": "f", "args": ["123456789012345678901234"]}')
    assert frame == Frame([Request(CALL, "99999999999999999999", NATIVE, "f", ["123456789012345678901234"])])


def test_big_floats_accepted() -> None:
    """Floats with many digits or a large finite exponent are not integers past 64 bits."""
    frame = decode_frame('{"id": 1, "func": "f", "args": [12345678901234567890.5, 1.5e300, 1e-400]}')
    assert frame == Frame([Request(CALL, 1, NATIVE, "f", [12345678901234567890.5, 1.5e300, 0.0])])


def test_exactly_64_deep_accepted() -> None:
    """Nesting of exactly 64 levels (object, args and 62 inner arrays) is accepted."""
    args = nested_list(63)
    text = '{"id": 1, "func": "f", "args": ' + "[" * 63 + "]" * 63 + "}"
    assert decode_frame(text) == Frame([Request(CALL, 1, NATIVE, "f", args)])


def test_64_deep_batch_is_not_a_parse_error() -> None:
    """A top-level array 64 deep is parsed (then refused as a request, not as JSON)."""
    frame = decode_frame("[" * 64 + "]" * 64)
    error = ErrorInfo(INVALID_REQUEST, "not a request: a JSON list without func/method")
    assert frame == Frame([Invalid(None, JSONRPC, error)], batch=True)


def test_many_shallow_brackets_are_not_deep() -> None:
    """Many sibling arrays are not nesting: only depth counts."""
    args = [[] for _ in range(200)]
    assert decode_frame(json.dumps({"id": 1, "func": "f", "args": args})) == Frame(
        [Request(CALL, 1, NATIVE, "f", args)]
    )


def test_brackets_inside_strings_are_not_nesting() -> None:
    """Brackets inside strings (even with escaped quotes) do not count as nesting."""
    value = '\\"' + "[{" * 100
    text = json.dumps({"id": 1, "func": "f", "args": [value]})
    assert decode_frame(text) == Frame([Request(CALL, 1, NATIVE, "f", [value])])


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, "[" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000],
    ids=["balanced", "unclosed", "objects"],
)
def test_100000_deep_nesting_refused_quickly(text: str) -> None:
    """100,000 levels of nesting are a -32700 in well under a second, without RecursionError."""
    start = time.perf_counter()
    frame = decode_frame(text)
    assert time.perf_counter() - start < 1.0
    assert_parse_error(frame)


# -- replies ---------------------------------------------------------------------------------------


def test_native_result_reply() -> None:
    """A native success reply carries id, result and error null (SPEC §1.1)."""
    assert reply_result("1234", NATIVE, 15) == b'{"id":"1234","result":15,"error":null}'


def test_native_null_result_reply_keeps_all_keys() -> None:
    """A native reply whose result is null still has all three keys."""
    assert reply_result(1, NATIVE, None) == b'{"id":1,"result":null,"error":null}'


def test_native_error_reply() -> None:
    """A native error reply matches the SPEC example byte for byte."""
    error = ErrorInfo(METHOD_NOT_FOUND, "function not found: add_numberz")
    assert reply_error("1234", NATIVE, error) == (
        b'{"id":"1234","result":null,"error":{"code":-32601,"message":"function not found: add_numberz"}}'
    )


def test_native_error_reply_with_data() -> None:
    """A native error reply carries ``data`` when present, even a falsy one."""
    assert reply_error(1, NATIVE, ErrorInfo(-32000, "boom", {"a": 1})) == (
        b'{"id":1,"result":null,"error":{"code":-32000,"message":"boom","data":{"a":1}}}'
    )
    assert reply_error(1, NATIVE, ErrorInfo(-32000, "boom", 0)) == (
        b'{"id":1,"result":null,"error":{"code":-32000,"message":"boom","data":0}}'
    )


def test_native_parse_error_reply_id_null() -> None:
    """A native error with no valid id writes ``"id": null``."""
    assert reply_error(None, NATIVE, ErrorInfo(INVALID_REQUEST, "missing id")) == (
        b'{"id":null,"result":null,"error":{"code":-32600,"message":"missing id"}}'
    )


def test_jsonrpc_result_reply() -> None:
    """A JSON-RPC success reply has jsonrpc, result and id, and no error member."""
    assert reply_result(1, JSONRPC, 19) == b'{"jsonrpc":"2.0","result":19,"id":1}'


def test_jsonrpc_result_reply_with_null_result() -> None:
    """A JSON-RPC reply with a null result still has no error member."""
    assert reply_result("a", JSONRPC, None) == b'{"jsonrpc":"2.0","result":null,"id":"a"}'


STANDARD_MESSAGES = {
    PARSE_ERROR: ("parse error: unexpected character", "Parse error"),
    INVALID_REQUEST: ("missing method", "Invalid Request"),
    METHOD_NOT_FOUND: ("function not found: foo", "Method not found"),
    INVALID_PARAMS: ("invalid arguments for f", "Invalid params"),
}


@pytest.mark.parametrize(("code", "messages"), STANDARD_MESSAGES.items(), ids=[str(c) for c in STANDARD_MESSAGES])
def test_jsonrpc_error_reply_uses_spec_messages(code: int, messages: tuple[str, str]) -> None:
    """JSON-RPC error replies use the JSON-RPC spec's exact messages and have no result member."""
    ours, standard = messages
    reply = reply_error(None, JSONRPC, ErrorInfo(code, ours))
    assert reply == b'{"jsonrpc":"2.0","error":{"code":%d,"message":"%s"},"id":null}' % (code, standard.encode())
    assert json.loads(reply) == {"jsonrpc": "2.0", "error": {"code": code, "message": standard}, "id": None}


def test_jsonrpc_invalid_params_keeps_data() -> None:
    """-32602 in JSON-RPC keeps the list of {loc, msg, type} in ``data``."""
    details = [{"loc": ["a"], "msg": "Input should be a valid integer", "type": "int_type"}]
    reply = reply_error(3, JSONRPC, ErrorInfo(INVALID_PARAMS, "invalid arguments for f", details))
    assert json.loads(reply) == {
        "jsonrpc": "2.0",
        "error": {"code": -32602, "message": "Invalid params", "data": details},
        "id": 3,
    }


@pytest.mark.parametrize("detail", ["duplicate id", "batch of 3 exceeds the limit of 2"])
def test_jsonrpc_invalid_request_detail_goes_in_data(detail: str) -> None:
    """A -32600 detail the client needs (duplicate id, batch size) moves to ``data`` in JSON-RPC."""
    reply = reply_error(3, JSONRPC, ErrorInfo(INVALID_REQUEST, detail))
    assert json.loads(reply) == {
        "jsonrpc": "2.0",
        "error": {"code": -32600, "message": "Invalid Request", "data": detail},
        "id": 3,
    }


@pytest.mark.parametrize(
    "error",
    [
        ErrorInfo(INTERNAL_ERROR, "internal error", {"type": "ValueError"}),
        ErrorInfo(INTERNAL_ERROR, "result not serializable"),
        ErrorInfo(-32000, "division by zero", {"a": 1}),
        ErrorInfo(-32001, "call timed out"),
        ErrorInfo(-32002, "cancelled"),
        ErrorInfo(-32003, "server shutting down"),
        ErrorInfo(4002, "insufficient funds", {"balance": 3}),
    ],
    ids=lambda error: str(error.code),
)
def test_jsonrpc_other_errors_pass_through(error: ErrorInfo) -> None:
    """Codes outside JSON-RPC's reserved four keep their own message and data."""
    assert json.loads(reply_error(1, JSONRPC, error)) == {"jsonrpc": "2.0", "error": error.to_dict(), "id": 1}


def test_jsonrpc_custom_error_reply_bytes() -> None:
    """A custom error in JSON-RPC is ``{"jsonrpc", "error", "id"}`` exactly."""
    reply = reply_error(1, JSONRPC, ErrorInfo(4002, "insufficient funds", {"balance": 3}))
    assert (
        reply == b'{"jsonrpc":"2.0","error":{"code":4002,"message":"insufficient funds","data":{"balance":3}},"id":1}'
    )


@pytest.mark.parametrize("dialect", [NATIVE, JSONRPC])
def test_error_data_json_cannot_carry_is_dropped(dialect: protocol.Dialect) -> None:
    """An error whose data JSON cannot carry keeps its code and message and loses only ``data``."""
    reply = json.loads(reply_error(1, dialect, ErrorInfo(-32000, "boom", {"x": float("nan")})))
    assert reply["error"] == {"code": -32000, "message": "boom"}


@pytest.mark.parametrize("dialect", [NATIVE, JSONRPC])
def test_reply_shapes(dialect: protocol.Dialect) -> None:
    """Native replies always have id/result/error; JSON-RPC replies have result or error, never both."""
    ok = json.loads(reply_result(1, dialect, [1]))
    failed = json.loads(reply_error(1, dialect, ErrorInfo(-32000, "boom")))
    if dialect == NATIVE:
        assert ok == {"id": 1, "result": [1], "error": None}
        assert failed == {"id": 1, "result": None, "error": {"code": -32000, "message": "boom"}}
    else:
        assert ok == {"jsonrpc": "2.0", "result": [1], "id": 1}
        assert failed == {"jsonrpc": "2.0", "error": {"code": -32000, "message": "boom"}, "id": 1}


def test_reply_id_is_json_escaped() -> None:
    """A string id with quotes and non-ASCII is written as valid JSON."""
    reply = reply_result('a"b\\é', NATIVE, 1)
    assert reply == '{"id":"a\\"b\\\\é","result":1,"error":null}'.encode()
    assert json.loads(reply) == {"id": 'a"b\\é', "result": 1, "error": None}


def test_join_batch() -> None:
    """Replies join into one JSON array."""
    replies = [reply_result(1, JSONRPC, 7), reply_error(None, JSONRPC, ErrorInfo(INVALID_REQUEST, "x"))]
    joined = join_batch(replies)
    assert joined == (
        b'[{"jsonrpc":"2.0","result":7,"id":1},'
        b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}]'
    )
    assert len(json.loads(joined)) == 2


def test_join_batch_single_and_empty() -> None:
    """A one-reply batch is still an array."""
    assert join_batch([b"1"]) == b"[1]"
    assert join_batch([]) == b"[]"


# -- results JSON cannot carry -----------------------------------------------------------------------


UNCARRIABLE = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "-infinity in dict": {"a": float("-inf")},
    "nan in list": [1, float("nan")],
    "set": {1, 2},
    "2^64": 2**64,
    "below -2^63": -(2**63) - 1,
    "huge int": 10**30,
    "300 deep": nested_list(300),
    "65 deep": nested_list(65),
    "65 deep dicts": {"a": nested_list(64)},
    "object": object(),
    "bytes": b"x",
    "non-str key": {1: 2},
}


@pytest.mark.parametrize("value", UNCARRIABLE.values(), ids=UNCARRIABLE.keys())
def test_dump_json_refuses_what_json_cannot_carry(value: Any) -> None:
    """dump_json returns None for a value JSON cannot carry exactly."""
    assert dump_json(value) is None


@pytest.mark.parametrize("value", UNCARRIABLE.values(), ids=UNCARRIABLE.keys())
def test_uncarriable_result_is_internal_error(value: Any) -> None:
    """A result JSON cannot carry is answered -32603 "result not serializable" in both dialects."""
    assert reply_result(1, NATIVE, value) == (
        b'{"id":1,"result":null,"error":{"code":-32603,"message":"result not serializable"}}'
    )
    assert reply_result(1, JSONRPC, value) == (
        b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"result not serializable"},"id":1}'
    )


class Reading(pydantic.BaseModel):
    """A pydantic model returned by a function."""

    name: str
    value: float
    tags: set[str] = set()


class RecordDict(dict[str, Any]):
    """A dict subclass (orjson serializes subclasses of dict)."""


class RecordList(list[Any]):
    """A list subclass (orjson serializes subclasses of list)."""


@dataclasses.dataclass
class Point:
    """A dataclass (orjson serializes dataclasses natively)."""

    x: float


def deep_ordered_dict(depth: int) -> collections.OrderedDict[str, Any]:
    """OrderedDicts nested ``depth`` levels deep."""
    value: collections.OrderedDict[str, Any] = collections.OrderedDict()
    for _ in range(depth - 1):
        value = collections.OrderedDict(a=value)
    return value


HIDDEN_UNCARRIABLE = {
    "nan in OrderedDict": collections.OrderedDict(a=float("nan")),
    "nan in defaultdict": collections.defaultdict(int, a=float("nan")),
    "inf in dict subclass": RecordDict(a=float("inf")),
    "inf in list subclass": RecordList([float("inf")]),
    "nan in dataclass": Point(float("nan")),
    "nan in pydantic model": Reading(name="t", value=float("nan")),
    "70 deep OrderedDict": deep_ordered_dict(70),
}


@pytest.mark.parametrize("value", HIDDEN_UNCARRIABLE.values(), ids=HIDDEN_UNCARRIABLE.keys())
def test_uncarriable_hidden_in_subclasses_and_models_is_refused(value: Any) -> None:
    """NaN/Infinity/deep nesting hidden in dict/list subclasses, dataclasses or models is still refused."""
    assert dump_json(value) is None
    assert json.loads(reply_result(1, NATIVE, value))["error"] == {
        "code": -32603,
        "message": "result not serializable",
    }


CARRIABLE = {
    "int": (3, b"3"),
    "float": (8.0, b"8.0"),
    "negative zero": (-0.0, b"-0.0"),
    "2^64 - 1": (2**64 - 1, b"18446744073709551615"),
    "-2^63": (-(2**63), b"-9223372036854775808"),
    "string null": ("null", b'"null"'),
    "strings with null": (["null", "nullable", {"null": "null"}], b'["null","nullable",{"null":"null"}]'),
    "real null": ({"a": None}, b'{"a":null}'),
    "tuple": ((1, 2), b"[1,2]"),
    "unicode": ("é\U0001f600", '"é\U0001f600"'.encode()),
    "64 deep": (nested_list(64), b"[" * 64 + b"]" * 64),
    "pydantic model": (Reading(name="t", value=1.5), b'{"name":"t","value":1.5,"tags":[]}'),
    "models in a list": ([Reading(name="a", value=1)], b'[{"name":"a","value":1.0,"tags":[]}]'),
}


@pytest.mark.parametrize(("value", "expected"), CARRIABLE.values(), ids=CARRIABLE.keys())
def test_dump_json_exact(value: Any, expected: bytes) -> None:
    """dump_json serializes carriable values (including "null" strings and pydantic models) exactly."""
    assert dump_json(value) == expected


def test_result_with_null_strings_is_not_refused() -> None:
    """A result containing the text "null" is sent, not mistaken for a hidden NaN."""
    assert reply_result(1, NATIVE, ["null", None]) == b'{"id":1,"result":["null",null],"error":null}'


def test_pydantic_model_result_reply() -> None:
    """A pydantic model returned by a function is serialized in the reply."""
    assert reply_result(1, JSONRPC, Reading(name="t", value=2.5, tags={"x"})) == (
        b'{"jsonrpc":"2.0","result":{"name":"t","value":2.5,"tags":["x"]},"id":1}'
    )


# -- the client half -------------------------------------------------------------------------------


def test_encode_call_native() -> None:
    """A native call is ``{id, func, args}``."""
    assert encode_call(1, "add_numbers", [1, 2], NATIVE) == b'{"id":1,"func":"add_numbers","args":[1,2]}'


def test_encode_call_jsonrpc() -> None:
    """A JSON-RPC call is ``{jsonrpc, method, params, id}``."""
    assert encode_call("x", "f", {"a": 1}, JSONRPC) == b'{"jsonrpc":"2.0","method":"f","params":{"a":1},"id":"x"}'


def test_encode_call_serializes_pydantic_args() -> None:
    """Pydantic models in call arguments are serialized."""
    assert encode_call(2, "f", [Reading(name="n", value=1.0)], NATIVE) == (
        b'{"id":2,"func":"f","args":[{"name":"n","value":1.0,"tags":[]}]}'
    )


@pytest.mark.parametrize("dialect", [NATIVE, JSONRPC])
def test_encoded_call_decodes_back(dialect: protocol.Dialect) -> None:
    """What the client encodes, the server decodes to the same call."""
    frame = decode_frame(encode_call(5, "echo", {"value": [1, "two"]}, dialect))
    assert frame == Frame([Request(CALL, 5, dialect, "echo", {"value": [1, "two"]})])


def test_encode_cancel() -> None:
    """A cancel is a native ``op: cancel`` that the server decodes as such."""
    assert encode_cancel(9) == b'{"op":"cancel","id":9}'
    assert decode_frame(encode_cancel(9)) == Frame([Request(CANCEL, 9, NATIVE)])


def test_decode_native_replies() -> None:
    """Native success and error replies decode to Reply objects."""
    assert decode_replies(b'{"id":1,"result":3,"error":null}') == [Reply(1, 3)]
    assert decode_replies('{"id":"a","result":null,"error":{"code":-32000,"message":"m","data":[1]}}') == [
        Reply("a", None, ErrorInfo(-32000, "m", [1]))
    ]


def test_decode_jsonrpc_batch_replies() -> None:
    """A JSON-RPC batch reply decodes to one Reply per item, in order."""
    text = (
        '[{"jsonrpc":"2.0","result":3,"id":1},'
        '{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":2}]'
    )
    assert decode_replies(text) == [Reply(1, 3), Reply(2, None, ErrorInfo(METHOD_NOT_FOUND, "Method not found"))]


def test_decode_reply_with_non_int_code() -> None:
    """An error with a non-integer code from a foreign server becomes -32603, keeping message and data."""
    text = '{"id":1,"result":null,"error":{"code":"x","message":"m","data":[1]}}'
    assert decode_replies(text) == [Reply(1, None, ErrorInfo(INTERNAL_ERROR, "m", [1]))]


@pytest.mark.parametrize(
    "text",
    ["x", "", "5", '{"id":1}', '{"id":1,"error":5}', "[1]", '{"id":1,"error":"boom"}'],
    ids=["not json", "empty", "number", "no result", "error a number", "batch of number", "error a string"],
)
def test_decode_malformed_replies(text: str) -> None:
    """A malformed reply raises ValueError."""
    with pytest.raises(ValueError):
        decode_replies(text)


@pytest.mark.parametrize("dialect", [NATIVE, JSONRPC])
def test_replies_round_trip(dialect: protocol.Dialect) -> None:
    """What the server replies, the client decodes to the same outcome."""
    error = ErrorInfo(-32000, "division by zero", {"a": 1})
    assert decode_replies(reply_result(4, dialect, {"x": [1.5]})) == [Reply(4, {"x": [1.5]})]
    assert decode_replies(reply_error(4, dialect, error)) == [Reply(4, None, error)]


# -- properties --------------------------------------------------------------------------------------


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters() | st.characters(categories=["Cs"]))
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=30,
)
member_names = st.sampled_from(["id", "op", "func", "args", "jsonrpc", "method", "params", "extra"])
member_values = (
    json_values
    | st.sampled_from(["call", "list", "cancel", "2.0", "rpc.discover", "f", "x" * 129])
    | st.integers(min_value=-1, max_value=2**53 + 1)
)
request_like = st.dictionaries(member_names, member_values, max_size=5)
messages = json_values | request_like | st.lists(request_like | json_values, max_size=5)


def check_items(frame: Frame) -> None:
    """Every item is a Request, a peer's Reply (to a server-to-client call: matched by its id, never
    answered), or an Invalid with a spec code whose reply encodes to valid JSON."""
    assert len(frame.items) >= 1
    for item in frame.items:
        if isinstance(item, Request):
            assert item.kind in (CALL, LIST, CANCEL, DISCOVER)
            assert item.dialect in (NATIVE, JSONRPC)
            continue
        if isinstance(item, Reply):  # {"result" | "error", ...} and nothing of a request
            malformed = item.kind == "invalid" and item.error is not None and item.error.code == INVALID_REQUEST
            assert item.kind == "reply" or malformed
            continue
        assert isinstance(item, Invalid)
        assert type(item.error.code) is int
        assert item.error.code in SPEC_CODES and item.error.code in DECODE_CODES
        reply = json.loads(reply_error(item.id, item.dialect, item.error))
        expected_keys = {"id", "result", "error"} if item.dialect == NATIVE else {"jsonrpc", "error", "id"}
        assert reply.keys() == expected_keys
        assert reply["id"] == item.id


@settings(max_examples=400, deadline=None)
@given(messages)
@example([{"error": None}])  # reply-shaped: a Reply (id None, matched to no call), found by hypothesis
def test_any_json_value_decodes_without_raising(value: Any) -> None:
    """Any JSON value yields at least one Request, Reply or Invalid; every Invalid encodes to a JSON reply."""
    check_items(decode_frame(json.dumps(value)))


@settings(max_examples=300, deadline=None)
@given(messages)
def test_request_args_round_trip_as_results(value: Any) -> None:
    """The args of any accepted call can be echoed back as a result exactly."""
    frame = decode_frame(json.dumps(value))
    for item in frame.items:
        if isinstance(item, Request) and item.kind == CALL:
            reply = json.loads(reply_result(item.id, item.dialect, item.args))
            assert reply["result"] == item.args


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters() | st.characters(categories=["Cs"])) | st.text(alphabet='[]{}",:0123456789.eE-tfnul\\ '))
def test_any_text_decodes_without_raising(text: str) -> None:
    """Any text, including lone surrogates and JSON-like noise, yields items and never raises."""
    check_items(decode_frame(text))


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_any_bytes_decode_without_raising(raw: bytes) -> None:
    """Any bytes, including invalid UTF-8, yield items and never raise."""
    check_items(decode_frame(raw))


@pytest.mark.parametrize(
    "text",
    [
        '{"id": "17", "op": "call", "func": "add_numbers", "args": [5, 10]}',
        '{"jsonrpc": "2.0", "id": 17, "method": "add_numbers", "params": [1, 2]}',
        '{"jsonrpc": "2.0", "id": "a", "method": "echo", "params": {"value": "x"}}',
        '{"func": "add_numbers", "args": [1, 2], "id": 3}',
    ],
)
def test_common_requests_take_the_one_check_path_with_the_full_paths_result(text: str) -> None:
    """The seed's request and JSON-RPC calls decode exactly as the full path decodes them."""
    value = orjson.loads(text)
    fast = protocol._plain_call(value)
    assert fast is not None
    assert decode_frame(text).items == [fast] == [protocol._decode_item(value, protocol.JSONRPC)]


@pytest.mark.parametrize(
    "text",
    [
        '{"id": 1, "func": "echo", "args": [1], "args": ' + "[" * 65 + "]" * 65 + "}",
        '{"id": 1, "func": "echo", "args": [123456789012345678901], "args": [1]}',
    ],
)
def test_a_duplicated_key_does_not_skip_the_checks(text: str) -> None:
    """A key given twice (the parser keeps the last) still gets the nesting and 64-bit checks."""
    [item] = decode_frame(text).items
    assert isinstance(item, Invalid) and item.error.code == protocol.PARSE_ERROR


@pytest.mark.parametrize("dialect", [NATIVE, JSONRPC])
def test_reply_body_wraps_an_encoded_result_as_reply_result_does(dialect: Dialect) -> None:
    """reply_body around dump_json's text is byte for byte the reply reply_result writes."""
    for request_id, result in [(1, 3), ("a", {"x": [1.5, None]}), (7, "text")]:
        body = dump_json(result)
        assert body is not None
        assert reply_body(request_id, dialect, body) == reply_result(request_id, dialect, result)


REPLIES = {
    "native": ('{"id": "s:1", "result": 3, "error": null}', protocol.Reply("s:1", 3)),
    "native error": (
        '{"id": "s:2", "result": null, "error": {"code": 7, "message": "m", "data": [1]}}',
        protocol.Reply("s:2", None, ErrorInfo(7, "m", [1], verbatim=True)),
    ),
    "jsonrpc": ('{"jsonrpc": "2.0", "result": [1], "id": "s:3"}', protocol.Reply("s:3", [1])),
    "unknown member": (
        '{"id": "s:4", "result": 1, "extra": 2}',
        protocol.Reply("s:4", None, ErrorInfo(INVALID_REQUEST, "invalid reply: unknown member: extra"), "invalid"),
    ),
}


@pytest.mark.parametrize("text, expected", REPLIES.values(), ids=REPLIES.keys())
def test_a_reply_shaped_message_decodes_as_a_reply(text: str, expected: protocol.Reply) -> None:
    """result or error and nothing of a request: a reply to a call this side sent (kind "invalid" if malformed)."""
    assert decode_frame(text).items == [expected]
