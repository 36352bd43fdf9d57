"""The registry: registration, argument validation from type hints, schemas, errors (SPEC §1.3, §2)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from typing import Any

import pydantic
import pytest

from synapse_cli.core.encoding import dump_json, reply_error
from synapse_cli.core.errors import RPCError
from synapse_cli.core.functions import Function
from synapse_cli.core.protocol import ErrorInfo
from synapse_cli.core.registry import Registry, error_from_exception
from synapse_cli.server.builtins import MAX_SLEEP_SECONDS, default_registry


class Point(pydantic.BaseModel):
    """A pydantic model used as a parameter."""

    x: int
    label: str = "origin"


def make_registry() -> Registry:
    """A registry with one function of each shape the tests need."""
    registry = Registry()

    @registry.function
    def scale(value: int, factor: float = 1.5) -> float:
        """Scale a value.

        The second paragraph is not part of the description.
        """
        return value * factor

    @registry.function(name="gather", inline=True)
    def gather_all(first: int, *rest: int, **options: str) -> list[Any]:
        """Collect arguments
        over two lines."""
        return [first, list(rest), options]

    @registry.function
    def move(point: Point, dx: int = 0) -> Point:
        return Point(x=point.x + dx, label=point.label)

    @registry.function
    async def wait(seconds: float) -> None:
        await asyncio.sleep(seconds)

    return registry


def invalid_params(name: str, *details: dict[str, Any]) -> tuple[int, str, list[dict[str, Any]]]:
    """What a -32602 for ``name`` carries: code, message and the list of {loc, msg, type}."""
    return -32602, f"invalid arguments for {name}", list(details)


def resolve_error(registry: Registry, name: str, args: list[Any] | dict[str, Any]) -> tuple[int, str, Any]:
    """The (code, message, data) of the RPCError that resolving this call raises."""
    with pytest.raises(RPCError) as caught:
        registry.resolve(name, args)
    return caught.value.code, caught.value.message, caught.value.data


def call(registry: Registry, name: str, args: list[Any] | dict[str, Any]) -> Any:
    """Resolve and run a sync function the way the server does."""
    entry, positional, keywords = registry.resolve(name, args)
    return entry.func(*positional, **keywords)


async def call_async(registry: Registry, name: str, args: list[Any] | dict[str, Any]) -> Any:
    """Resolve and await an async function the way the server does."""
    entry, positional, keywords = registry.resolve(name, args)
    return await entry.func(*positional, **keywords)


# -- registration ------------------------------------------------------------------------------------


def test_decorator_without_arguments() -> None:
    """``@registry.function`` registers under ``__name__`` and returns the function unchanged."""
    registry = Registry()

    def double(x: int) -> int:
        return 2 * x

    assert registry.function(double) is double
    entry = registry.get("double")
    assert entry is not None
    assert (entry.name, entry.func, entry.inline, entry.is_async) == ("double", double, False, False)


def test_decorator_with_arguments() -> None:
    """``@registry.function(name=..., inline=True)`` registers under the given name, inline."""
    registry = Registry()

    @registry.function(name="now", inline=True)
    def current_time() -> float:
        return 0.0

    assert current_time() == 0.0
    entry = registry.get("now")
    assert entry is not None
    assert (entry.name, entry.func, entry.inline) == ("now", current_time, True)
    assert "current_time" not in registry


def test_add_returns_function() -> None:
    """``add`` registers without decorator syntax and returns the Function it built."""
    registry = Registry()

    def echo(value: Any) -> Any:
        return value

    entry = registry.add(echo, name="repeat")
    assert isinstance(entry, Function)
    assert registry.get("repeat") is entry
    assert (entry.name, entry.func, entry.inline, entry.is_async) == ("repeat", echo, False, False)


def test_async_function_is_marked() -> None:
    """A coroutine function is registered with ``is_async``."""
    entry = make_registry().get("wait")
    assert entry is not None and entry.is_async is True


def test_description_is_first_docstring_paragraph() -> None:
    """The description is the docstring's first paragraph, on one line; none without a docstring."""
    registry = make_registry()
    assert [entry.description for entry in registry] == [
        "Scale a value.",
        "Collect arguments over two lines.",
        "",
        "",
    ]


def test_container_protocol() -> None:
    """A registry has a length, membership by name, and iterates in registration order."""
    registry = make_registry()
    assert len(registry) == 4
    assert "scale" in registry and "nope" not in registry
    assert [entry.name for entry in registry] == ["scale", "gather", "move", "wait"]
    assert registry.get("nope") is None


def test_duplicate_name_refused() -> None:
    """Registering a second function under a taken name is a ValueError and keeps the first."""
    registry = make_registry()
    original = registry.get("scale")
    with pytest.raises(ValueError, match="already registered"):
        registry.add(lambda: 1, name="scale")
    assert registry.get("scale") is original and len(registry) == 4


@pytest.mark.parametrize("name", ["f" * 129, "rpc.discover", "rpc.mine"])
def test_invalid_names_refused(name: str) -> None:
    """Names over 128 characters or starting with ``rpc.`` are refused."""
    registry = Registry()
    with pytest.raises(ValueError, match="invalid function name"):
        registry.add(lambda: 1, name=name)
    assert len(registry) == 0


def test_name_of_128_characters_accepted() -> None:
    """A name of exactly 128 characters is valid."""
    registry = Registry()
    registry.add(lambda: 1, name="f" * 128)
    assert "f" * 128 in registry


# -- resolving calls ----------------------------------------------------------------------------------


def test_resolve_positional() -> None:
    """Positional args bind in order and the Function comes back with them."""
    registry = make_registry()
    assert registry.resolve("scale", [2, 3.0]) == (registry.get("scale"), (2, 3.0), {})


def test_resolve_named() -> None:
    """Args by name bind to the same parameters."""
    registry = make_registry()
    entry, positional, keywords = registry.resolve("scale", {"factor": 3.0, "value": 2})
    assert (entry, positional, keywords) == (registry.get("scale"), (2, 3.0), {})


def test_defaults_fill_missing_optional_args() -> None:
    """An omitted parameter with a default gets it, by position or by name."""
    registry = make_registry()
    assert call(registry, "scale", [2]) == 3.0
    assert call(registry, "scale", {"value": 2}) == 3.0


def test_int_accepted_for_float() -> None:
    """An integer is a valid float argument."""
    registry = make_registry()
    assert call(registry, "scale", [2, 2]) == 4.0


@pytest.mark.parametrize(
    ("args", "detail"),
    [
        (["1"], {"loc": ["value"], "msg": "Input should be a valid integer", "type": "int_type"}),
        ([True], {"loc": ["value"], "msg": "Input should be a valid integer", "type": "int_type"}),
        ([1.5], {"loc": ["value"], "msg": "Input should be a valid integer", "type": "int_type"}),
        ([None], {"loc": ["value"], "msg": "Input should be a valid integer", "type": "int_type"}),
        ([1, "2.5"], {"loc": ["factor"], "msg": "Input should be a valid number", "type": "float_type"}),
        ([1, True], {"loc": ["factor"], "msg": "Input should be a valid number", "type": "float_type"}),
        ({"value": "1"}, {"loc": ["value"], "msg": "Input should be a valid integer", "type": "int_type"}),
    ],
    ids=["str for int", "true for int", "float for int", "null for int", "str for float", "true for float", "named"],
)
def test_strict_types(args: list[Any] | dict[str, Any], detail: dict[str, Any]) -> None:
    """Strings are never numbers, ``true`` is not a number, 1.5 is not an int: -32602 with {loc, msg, type}."""
    assert resolve_error(make_registry(), "scale", args) == invalid_params("scale", detail)


def test_unknown_function() -> None:
    """Resolving a name nobody registered is -32601 "function not found"."""
    assert resolve_error(make_registry(), "nope", [1]) == (-32601, "function not found: nope", None)


def test_too_many_positional_args() -> None:
    """More positional args than the signature takes is -32602 located at the first extra one."""
    detail = {"loc": [2], "msg": "takes 2 positional arguments", "type": "too_many"}
    assert resolve_error(make_registry(), "scale", [1, 2.0, 3]) == invalid_params("scale", detail)


@pytest.mark.parametrize("args", [[], {}, {"factor": 2.0}], ids=["positional", "named", "only optional"])
def test_missing_args(args: list[Any] | dict[str, Any]) -> None:
    """A required parameter without a value is -32602 "missing_argument"."""
    detail = {"loc": ["value"], "msg": "Missing required argument", "type": "missing_argument"}
    assert resolve_error(make_registry(), "scale", args) == invalid_params("scale", detail)


def test_unknown_keyword() -> None:
    """A keyword the signature does not have is -32602 "extra_forbidden"."""
    detail = {"loc": ["scal"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    assert resolve_error(make_registry(), "scale", {"value": 1, "scal": 2}) == invalid_params("scale", detail)


def test_several_errors_reported_together() -> None:
    """Every bad argument is listed in ``data``, not only the first."""
    details = (
        {"loc": ["value"], "msg": "Input should be a valid integer", "type": "int_type"},
        {"loc": ["factor"], "msg": "Input should be a valid number", "type": "float_type"},
    )
    assert resolve_error(make_registry(), "scale", ["a", "b"]) == invalid_params("scale", *details)


def test_var_positional() -> None:
    """Extra positional args go to ``*args``, validated against its hint."""
    registry = make_registry()
    assert registry.resolve("gather", [1, 2, 3])[1:] == ((1, 2, 3), {})
    assert call(registry, "gather", [1, 2, 3]) == [1, [2, 3], {}]
    detail = {"loc": ["rest", 0], "msg": "Input should be a valid integer", "type": "int_type"}
    assert resolve_error(registry, "gather", [1, "2"]) == invalid_params("gather", detail)


def test_var_keyword() -> None:
    """Unknown names go to ``**kwargs``, validated against its hint."""
    registry = make_registry()
    assert registry.resolve("gather", {"first": 1, "mode": "fast"})[1:] == ((1,), {"mode": "fast"})
    assert call(registry, "gather", {"first": 1, "mode": "fast"}) == [1, [], {"mode": "fast"}]
    detail = {"loc": ["options", "mode"], "msg": "Input should be a valid string", "type": "string_type"}
    assert resolve_error(registry, "gather", {"first": 1, "mode": 1}) == invalid_params("gather", detail)


def test_pydantic_model_param_from_dict() -> None:
    """A pydantic model parameter is built from a JSON object, by position or by name."""
    registry = make_registry()
    assert call(registry, "move", [{"x": 1}, 2]) == Point(x=3, label="origin")
    assert call(registry, "move", {"point": {"x": 1, "label": "a"}}) == Point(x=1, label="a")


def test_pydantic_model_param_invalid() -> None:
    """A model parameter missing a field is -32602 located inside the model."""
    detail = {"loc": ["point", "x"], "msg": "Field required", "type": "missing"}
    assert resolve_error(make_registry(), "move", [{"label": "a"}]) == invalid_params("move", detail)


def test_pydantic_model_fields_are_strict() -> None:
    """Strings are never coerced to numbers, not even inside a model parameter."""
    code, message, data = resolve_error(make_registry(), "move", [{"x": "1"}])
    assert (code, message) == (-32602, "invalid arguments for move")
    assert [(detail["loc"], detail["type"]) for detail in data] == [(["point", "x"], "int_type")]


def test_function_without_hints_accepts_anything() -> None:
    """Parameters without hints accept any JSON value."""
    registry = Registry()

    def pair(a, b=2):  # type: ignore[no-untyped-def]
        return [a, b]

    registry.add(pair)
    assert call(registry, "pair", [{"k": [1]}]) == [{"k": [1]}, 2]


# -- schemas --------------------------------------------------------------------------------------------


def test_describe() -> None:
    """``describe`` gives name, description and JSON Schemas of the arguments object and the result."""
    registry = make_registry()
    assert registry.describe()[0] == {
        "name": "scale",
        "description": "Scale a value.",
        "params": {
            "type": "object",
            "properties": {
                "value": {"title": "Value", "type": "integer"},
                "factor": {"default": 1.5, "title": "Factor", "type": "number"},
            },
            "required": ["value"],
        },
        "result": {"type": "number"},
    }


def test_describe_every_function() -> None:
    """``describe`` lists every function with the four keys of the ``list`` op."""
    descriptions = make_registry().describe()
    assert [d["name"] for d in descriptions] == ["scale", "gather", "move", "wait"]
    assert all(d.keys() == {"name", "description", "params", "result"} for d in descriptions)
    assert descriptions[3]["params"] == {
        "type": "object",
        "properties": {"seconds": {"title": "Seconds", "type": "number"}},
        "required": ["seconds"],
    }
    assert descriptions[3]["result"] == {"type": "null"}


def test_describe_without_return_hint() -> None:
    """A function without a return annotation publishes an empty (any) result schema."""
    registry = Registry()
    registry.add(lambda value: value, name="anything")
    assert registry.describe()[0]["result"] == {}


def test_describe_model_param_is_self_contained() -> None:
    """A model parameter's schema keeps its ``$defs`` next to the ``$ref`` that points at them."""
    params = make_registry().describe()[2]["params"]
    assert params["properties"]["point"]["$ref"] == "#/$defs/Point"
    assert params["$defs"]["Point"]["properties"] == {
        "x": {"title": "X", "type": "integer"},
        "label": {"default": "origin", "title": "Label", "type": "string"},
    }


def test_openrpc_document() -> None:
    """``openrpc()`` is an OpenRPC 1.x document with each method's params and result."""
    registry = Registry()

    @registry.function
    def scale(value: int, factor: float = 1.5) -> float:
        """Scale a value."""
        return value * factor

    document = registry.openrpc(title="demo", version="1.2")
    assert document == {
        "openrpc": document["openrpc"],
        "info": {"title": "demo", "version": "1.2"},
        "methods": [
            {
                "name": "scale",
                "description": "Scale a value.",
                "params": [
                    {"name": "value", "schema": {"title": "Value", "type": "integer"}, "required": True},
                    {
                        "name": "factor",
                        "schema": {"default": 1.5, "title": "Factor", "type": "number"},
                        "required": False,
                    },
                ],
                "paramStructure": "either",
                "result": {"name": "result", "schema": {"type": "number"}},
            }
        ],
    }
    assert document["openrpc"].startswith("1.")


def test_openrpc_lists_every_function() -> None:
    """Every registered function is a method, in registration order, with params and result."""
    methods = make_registry().openrpc()["methods"]
    assert [m["name"] for m in methods] == ["scale", "gather", "move", "wait"]
    assert all({"name", "params", "result"} <= m.keys() for m in methods)
    assert [p["name"] for p in methods[1]["params"]] == ["first", "rest", "options"]


def resolve_pointer(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (``#/a/b``) inside ``document``."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def find_refs(node: Any) -> list[str]:
    """Every ``$ref`` value anywhere in ``node``."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in find_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in find_refs(value)]
    return []


def test_openrpc_refs_resolve() -> None:
    """Every ``$ref`` in the OpenRPC document (e.g. to a model parameter) resolves inside the document."""
    document = make_registry().openrpc()
    refs = find_refs(document)
    assert refs, "a model parameter should be described by reference"
    for ref in refs:
        resolve_pointer(document, ref)


# -- errors from functions ------------------------------------------------------------------------------


def test_function_errors_pass_through_verbatim_in_jsonrpc() -> None:
    """A function's RPCError with a standard code keeps its own message in JSON-RPC replies (not "Invalid params")."""
    error = error_from_exception(RPCError("seconds must be between 0 and 60", code=-32602))
    assert reply_error(1, "jsonrpc", error) == (
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"seconds must be between 0 and 60"},"id":1}'
    )


def test_rpc_error_passes_through() -> None:
    """An RPCError without a code is -32000 with its message and data."""
    assert error_from_exception(RPCError("no such account", data={"id": 3})) == ErrorInfo(
        -32000, "no such account", {"id": 3}, verbatim=True
    )


def test_rpc_error_custom_code_passes_through() -> None:
    """An RPCError's own code, message and data pass through unchanged."""
    assert error_from_exception(RPCError("insufficient funds", code=4002, data={"balance": 3})) == ErrorInfo(
        4002, "insufficient funds", {"balance": 3}, verbatim=True
    )


def test_unexpected_exception_is_internal_error() -> None:
    """Any other exception is -32603 "internal error" with only its type: no message, no traceback."""
    exc = KeyError("secret-api-key")
    assert error_from_exception(exc) == ErrorInfo(-32603, "internal error", {"type": "KeyError"})


def test_unexpected_exception_logs_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The traceback of an unexpected exception goes to the server log."""
    raised = ValueError("bad state")
    try:
        raise raised
    except ValueError as exc:
        with caplog.at_level(logging.ERROR, logger="synapse.calls"):
            error_from_exception(exc, function="transfer")
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("function transfer raised ValueError: bad state\n")
    assert "raise raised" in message  # the stack, from the frames' source lines


def test_debug_adds_message_and_traceback() -> None:
    """With debug, the -32603 data also carries the exception text and its traceback."""
    try:
        raise ValueError("bad state")
    except ValueError as exc:
        error = error_from_exception(exc, debug=True)
    assert (error.code, error.message) == (-32603, "internal error")
    assert error.data["type"] == "ValueError"
    assert error.data["message"] == "bad state"
    assert error.data["traceback"].startswith("Traceback (most recent call last):")
    assert error.data["traceback"].endswith("ValueError: bad state\n")


# -- the built-in functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [([1, 2], 3), ([3.5, 4.5], 8.0), ([-1, 10], 9), ({"a": 1, "b": 2}, 3), ([1, 0.5], 1.5)],
    ids=["ints", "floats", "negative", "named", "mixed"],
)
def test_add_numbers(args: list[Any] | dict[str, Any], expected: int | float) -> None:
    """add_numbers: int + int is an int, anything with a float is a float (SPEC §2)."""
    result = call(default_registry(), "add_numbers", args)
    assert (result, type(result)) == (expected, type(expected))


@pytest.mark.parametrize("args", [["1", 2], [True, 1], [1, None], [1]], ids=["string", "true", "null", "missing"])
def test_add_numbers_refuses_non_numbers(args: list[Any]) -> None:
    """add_numbers refuses strings, booleans, null and missing args with -32602."""
    code, message, data = resolve_error(default_registry(), "add_numbers", args)
    assert (code, message) == (-32602, "invalid arguments for add_numbers")
    assert data and all(detail.keys() == {"loc", "msg", "type"} for detail in data)


@pytest.mark.parametrize("value", [None, 0, "text", [1, [2, {"a": None}]], {"k": 1.5}])
def test_echo(value: Any) -> None:
    """echo returns its argument unchanged."""
    assert call(default_registry(), "echo", [value]) == value


def test_divide() -> None:
    """divide divides."""
    assert call(default_registry(), "divide", [1, 4]) == 0.25


def test_divide_by_zero() -> None:
    """divide by zero answers -32000 "division by zero"."""
    with pytest.raises(RPCError) as caught:
        call(default_registry(), "divide", [1, 0])
    assert error_from_exception(caught.value) == ErrorInfo(-32000, "division by zero", {"a": 1}, verbatim=True)


def test_fail_is_internal_error() -> None:
    """fail raises an unexpected exception, answered -32603 with only its type."""
    with pytest.raises(RuntimeError) as caught:
        call(default_registry(), "fail", [])
    assert error_from_exception(caught.value) == ErrorInfo(-32603, "internal error", {"type": "RuntimeError"})


async def test_sleep_zero() -> None:
    """sleep(0) returns at once with its argument."""
    assert await call_async(default_registry(), "sleep", [0]) == 0


@pytest.mark.parametrize("seconds", [-1, -0.001, MAX_SLEEP_SECONDS + 0.001, 1e9])
async def test_sleep_bounds(seconds: float) -> None:
    """sleep refuses a negative or over-long duration with -32602 instead of sleeping."""
    with pytest.raises(RPCError) as caught:
        await asyncio.wait_for(call_async(default_registry(), "sleep", [seconds]), timeout=5)
    assert caught.value.code == -32602


def test_sleep_refuses_string() -> None:
    """sleep("1") is -32602: strings are never coerced to numbers."""
    detail = {"loc": ["seconds"], "msg": "Input should be a valid number", "type": "float_type"}
    assert resolve_error(default_registry(), "sleep", ["1"]) == invalid_params("sleep", detail)


def test_sleep_is_bounded_by_a_minute() -> None:
    """The sleep bound is 60 seconds."""
    assert MAX_SLEEP_SECONDS == 60.0


def test_default_registry_is_fresh() -> None:
    """default_registry has the spec's built-ins and gives a new registry each time."""
    first, second = default_registry(), default_registry()
    assert {"add_numbers", "echo", "sleep"} <= {entry.name for entry in first}
    assert first is not second
    first.add(lambda: 1, name="extra")
    assert "extra" not in second


def test_builtins_are_described() -> None:
    """Each built-in has a description and an arguments schema."""
    for entry in default_registry().describe():
        assert entry["description"], entry["name"]
        assert entry["params"]["type"] == "object"


def _bind_outcome(function: Function, args: Any) -> Any:
    try:
        return ("ok", function.bind(args))
    except RPCError as exc:
        return ("error", exc.code, exc.message, exc.data)


def _json_native_sample(
    a: int | float, b: str = "x", c: list[int] | None = None, d: dict[str, float] | None = None, e: bool = False
) -> None:
    """Parameters whose arguments are validated without a JSON round trip."""


def _json_values() -> Any:
    from hypothesis import strategies as st

    numbers = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)  # what JSON carries
    scalars = st.none() | st.booleans() | numbers | st.text(max_size=5)
    keys = st.text(max_size=3)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner))


def test_json_native_signatures_skip_the_json_round_trip_with_the_same_outcome() -> None:
    """For plain JSON types, validating the parsed arguments gives exactly what the JSON path gives."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    native = Function.build(_json_native_sample, name="sample", inline=True)
    assert native._json_native
    reference = dataclasses.replace(native, _json_native=False)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(_json_values(), max_size=6)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "zz"]), _json_values(), max_size=5)
    )
    def same(args: Any) -> None:
        assert _bind_outcome(native, args) == _bind_outcome(reference, args)

    same()


def test_signatures_with_json_strings_read_their_own_way_keep_the_json_path() -> None:
    """datetime, models, tuples...: JSON strings and arrays mean something else; no shortcut for them."""

    def when(at: datetime.datetime) -> None:
        """A datetime parameter."""

    def point(p: Point) -> None:
        """A model parameter."""

    def pair(t: tuple[int, int]) -> None:
        """A tuple parameter."""

    for func in (when, point, pair):
        assert not Function.build(func, name=func.__name__, inline=True)._json_native
    bound = Function.build(when, name="when", inline=True).bind(["2026-11-26T01:02:03Z"])
    assert bound[0][0] == datetime.datetime(2026, 11, 26, 1, 2, 3, tzinfo=datetime.timezone.utc)


def _plain_sample(a: int, b: float, c: str, d: bool, e: int | float) -> None:
    """Every plain parameter type."""


def test_plain_parameters_are_bound_by_type_with_pydantics_outcome() -> None:
    """For int/float/str/bool/int|float signatures, the type check gives exactly pydantic's outcome."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    plain = Function.build(_plain_sample, name="plain", inline=True)
    assert plain._scalars is not None
    reference = dataclasses.replace(plain, _scalars=None)
    assert plain.bind([1, 2, "x", True, 3]) == ((1, 2.0, "x", True, 3), {})
    assert plain.bind({"e": 1.5, "d": False, "c": "", "b": 0.5, "a": -1}) == ((-1, 0.5, "", False, 1.5), {})

    scalars = (
        st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text() | st.booleans()
    )

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(scalars, min_size=5, max_size=5)
        | st.lists(_json_values(), min_size=4, max_size=6)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "zz"]), _json_values(), min_size=4, max_size=6)
    )
    def same(args: Any) -> None:
        outcome, expected = _bind_outcome(plain, args), _bind_outcome(reference, args)
        assert outcome == expected
        if outcome[0] == "ok":  # 1 == 1.0: the types must agree too
            assert [type(value) for value in outcome[1][0]] == [type(value) for value in expected[1][0]]

    same()
    assert Function.build(lambda a, b=1: None, name="defaults", inline=True)._scalars is None


# -- results --------------------------------------------------------------------------------------------


def results_registry() -> Registry:
    from conftest import load_app

    return load_app("results")


def encoded(registry: Registry, name: str) -> bytes | None:
    """The reply body the server sends for this function's result (None: it answers result_error)."""
    entry = registry.get(name)
    assert entry is not None
    return entry.encode_result(entry.func())


def test_results_are_serialized_as_their_declared_type() -> None:
    """bytes, sets, Decimal, datetime, dataclasses and models come out as their annotation declares."""
    registry = results_registry()
    assert encoded(registry, "abytes") == b'"ab"'
    assert encoded(registry, "aset") == b"[1,2,3]"
    assert encoded(registry, "adecimal") == b'"1.50"'
    assert encoded(registry, "adatetime") == b'"2026-12-01T04:05:06Z"'
    assert encoded(registry, "areading") == b'{"name":"t","tags":["x"]}'


def test_list_advertises_what_is_sent() -> None:
    """The result schemas describe the serialized form (a Decimal is a string, a set a unique array)."""
    results = {d["name"]: d["result"] for d in results_registry().describe()}
    assert results["abytes"] == {"type": "string", "format": "binary"}
    assert results["aset"] == {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert results["adecimal"] == {"type": "string"}


def test_plain_json_results_take_the_fast_path() -> None:
    """Plain JSON return types (and none declared) are encoded by orjson directly: no serializer per call."""
    registry = Registry()

    def number() -> int | float: ...
    def numbers() -> list[int]: ...
    def mapping() -> dict[str, Any]: ...
    def text() -> str | None: ...
    def anything() -> Any: ...
    def nothing() -> None: ...

    for func in (number, numbers, mapping, text, anything, nothing):
        registry.add(func)
    registry.add(lambda: 1, name="unannotated")
    assert all(entry.encode_result is dump_json for entry in registry)
    declared = [entry.name for entry in results_registry() if entry.encode_result is not dump_json]
    assert declared == ["abytes", "aset", "adecimal", "adatetime", "areading", "apoint", "wrong_bytes"]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        (
            "wrong_bytes",
            {"type": "set", "declared": "bytes"},
            "set, which does not fit its return annotation -> bytes: ",
        ),
        (
            "wrong_list",
            {"type": "set", "declared": "list[int]"},
            "set, which does not fit its return annotation -> list",
        ),
        ("not_a_number", {"type": "float", "declared": "float"}, "float, which JSON cannot carry (NaN, Infinity"),
        ("anything", {"type": "set", "declared": "Any"}, "set, which JSON cannot carry"),  # SPEC 1.3: a set
    ],
)
def test_a_result_that_cannot_be_sent_is_an_error_naming_the_types(
    caplog: pytest.LogCaptureFixture, name: str, data: dict[str, str], reason: str
) -> None:
    """-32603 "result not serializable" naming the type returned and declared; logged with the function."""
    entry = results_registry().get(name)
    assert entry is not None
    assert entry.encode_result(entry.func()) is None
    with caplog.at_level(logging.ERROR, logger="synapse.calls"):
        error = entry.result_error(entry.func())
    assert (error.code, error.message, error.data) == (-32603, "result not serializable", data)
    (record,) = caplog.records
    assert record.getMessage().startswith(f"function {name} returned {reason}")
