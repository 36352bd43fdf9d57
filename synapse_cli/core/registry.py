"""The registry: plain Python functions made callable, with arguments validated from type hints.

Each function is built once at registration into a :class:`~synapse_cli.core.functions.Function`
(argument validator, result encoder, JSON Schemas); the registry holds them by name, makes topics,
publishes ``list`` and ``rpc.discover`` descriptions, and :meth:`Registry.resolve` turns a call into a
bound invocation or an :class:`~synapse_cli.core.errors.RPCError`; running it is the server's business.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final, TypeVar, overload

import orjson

from synapse_cli.core.context import Requires, checks_of
from synapse_cli.core.errors import RPCError
from synapse_cli.core.functions import Function
from synapse_cli.core.loglines import RateLimitedLog, loggable
from synapse_cli.core.protocol import INTERNAL_ERROR, MAX_NAME_LENGTH, METHOD_NOT_FOUND, ErrorInfo
from synapse_cli.core.topics import Topic

__all__ = ["Function", "Registry", "error_from_exception"]

logger = logging.getLogger("synapse.calls")
F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A set of functions callable over synapse.

    ::

        registry = Registry()

        @registry.function
        def add_numbers(a: int | float, b: int | float) -> int | float:
            \"\"\"Add two numbers.\"\"\"
            return a + b

        @registry.function(name="now", inline=True)
        def current_time() -> float: ...

    Args:
        requires: checks every call of every function of this registry must pass before it runs: a
            callable taking the call's :class:`~synapse_cli.core.context.Context` (sync or async), or a
            list of them, run in order. A check refuses by returning ``False`` (-32007 "forbidden") or
            raising :class:`~synapse_cli.core.errors.RPCError`. A function's own ``requires`` run after.
    """

    def __init__(self, *, requires: Requires = None) -> None:
        self._functions: dict[str, Function] = {}
        self.topics: dict[str, Topic] = {}
        self.requires = checks_of(requires)

    def topic(
        self,
        name: str,
        *,
        description: str | None = None,
        history: int = 0,
        ttl: float | None = None,
        item: Any = Any,
    ) -> Topic:
        """Register a topic: a stream function ``name`` whose items are what ``topic.publish`` sends.

        ::

            prices = registry.topic("prices", history=1000)

            @registry.function
            async def set_price(symbol: str, price: float) -> None:
                await prices.publish({"symbol": symbol, "price": price})

        Args:
            description: what ``list`` and ``rpc.discover`` say of it.
            history: the last N items kept: each item then carries its ``position``, and a subscriber
                passing ``since=<position>`` first gets the kept items after it (-32006 when they are gone).
            ttl: seconds a kept item stays replayable (with ``history``).
            item: the type of the values published: each is encoded as that type declares (like a
                function's result), once per publish, and ``list`` shows its schema.
        """
        topic = Topic(name, history=history, ttl=ttl)  # ValueError for a history or ttl that cannot be
        subscribe = topic.stream_function()
        if history:
            kept = f"the last {history} items" + (f" of at most {ttl:g} s" if ttl is not None else "")
            default = (
                f"Every value published to the topic {name!r}, as it is published; since=N first sends the kept "
                f"ones after position N ({kept} are kept)."
            )
        else:
            default = f"Every value published to the topic {name!r}, as it is published."
        subscribe.__annotations__["return"] = AsyncIterator[item]  # the items' type: encoder and schema
        subscribe.__doc__ = description or default
        topic.encode = self.add(subscribe, name=name).encode_result
        self.topics[name] = topic
        return topic

    @overload
    def function(self, func: F, /) -> F: ...

    @overload
    def function(
        self, *, name: str | None = None, inline: bool = False, requires: Requires = None
    ) -> Callable[[F], F]: ...

    def function(
        self, func: Any = None, *, name: str | None = None, inline: bool = False, requires: Requires = None
    ) -> Any:
        """Register a function (a decorator, with or without arguments).

        Args:
            name: the name callers use (default: the function's ``__name__``).
            inline: run a cheap, non-blocking sync function on the event loop instead of a thread.
            requires: checks a call must pass before it runs (after the registry's), as for ``Registry``.
        """

        def register(target: F) -> F:
            self.add(target, name=name, inline=inline, requires=requires)
            return target

        return register(func) if func is not None else register

    def add(
        self, func: Callable[..., Any], *, name: str | None = None, inline: bool = False, requires: Requires = None
    ) -> Function:
        """Register ``func`` without the decorator syntax; returns its :class:`Function`."""
        name = name or func.__name__
        if not name or len(name) > MAX_NAME_LENGTH or name.startswith("rpc."):
            raise ValueError(f"invalid function name {name!r}: 1-{MAX_NAME_LENGTH} chars, not starting with 'rpc.'")
        if name in self._functions:
            raise ValueError(f"function {name!r} is already registered")
        checks = self.requires + checks_of(requires)
        entry = Function.build(func, name=name, inline=inline, checks=checks)
        self._functions[name] = entry
        return entry

    def get(self, name: str) -> Function | None:
        """The function registered under ``name``, or None."""
        return self._functions.get(name)

    def resolve(self, name: str, args: list[Any] | dict[str, Any]) -> tuple[Function, tuple[Any, ...], dict[str, Any]]:
        """Find and bind a call: (function, args, kwargs); RPCError -32601 / -32602 when it cannot run."""
        entry = self._functions.get(name)
        if entry is None:
            raise RPCError(f"function not found: {name}", METHOD_NOT_FOUND)
        positional, keywords = entry.bind(args)
        return entry, positional, keywords

    def describe(self) -> list[dict[str, Any]]:
        """Every function's description, as the ``list`` op returns them."""
        return [entry.describe() for entry in self._functions.values()]

    def openrpc(self, *, title: str = "synapse", version: str = "0") -> dict[str, Any]:
        """An OpenRPC 1.x document describing every function (the ``rpc.discover`` result).

        Models shared by parameters and results live once in ``components.schemas``.
        """
        methods = []
        components: dict[str, Any] = {}
        for entry in self._functions.values():
            params_schema = _lift_defs(entry.params_schema, components)
            props = params_schema.get("properties", {})
            required = set(params_schema.get("required", []))
            params = [{"name": key, "schema": schema, "required": key in required} for key, schema in props.items()]
            method: dict[str, Any] = {"name": entry.name, "params": params, "paramStructure": "either"}
            if entry.description:
                method["description"] = entry.description
            method["result"] = {"name": "result", "schema": _lift_defs(entry.result_schema, components)}
            if entry.stream:  # an OpenRPC extension: the result schema is one item's
                method["x-stream"] = True
            methods.append(method)
        document: dict[str, Any] = {"openrpc": "1.3.2", "info": {"title": title, "version": version}}
        document["methods"] = methods
        if components:
            document["components"] = {"schemas": components}
        return document

    def __len__(self) -> int:
        return len(self._functions)

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[Function]:
        return iter(list(self._functions.values()))


def _lift_defs(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move a JSON Schema's ``$defs`` into OpenRPC ``components.schemas`` and point its refs there."""
    if "$defs" not in schema and b"#/$defs/" not in orjson.dumps(schema):
        return schema
    moved = orjson.loads(orjson.dumps(schema).replace(b'"#/$defs/', b'"#/components/schemas/'))
    for name, definition in moved.pop("$defs", {}).items():
        components.setdefault(name, definition)
    return dict(moved)


def error_from_exception(exc: BaseException, *, debug: bool = False, function: str = "") -> ErrorInfo:
    """The error a caller sees for an exception raised by a function (SPEC §1.3).

    ``RPCError`` passes through unchanged. Anything else is -32603 "internal error" with only the
    exception's type, unless ``debug`` is set; the full traceback goes to the server log either way.
    """
    if isinstance(exc, RPCError):
        return ErrorInfo(exc.code, exc.message, exc.data, verbatim=True)
    _log_exception(function or "?", exc)
    data: dict[str, Any] = {"type": type(exc).__name__}
    if debug:
        data["message"] = str(exc)
        data["traceback"] = "".join(traceback.format_exception(exc))
    return ErrorInfo(INTERNAL_ERROR, "internal error", data)


MAX_LOGGED_TEXT: Final = 500  # characters of an exception's message that reach the log
_MAX_LOGGED_STACK: Final = 4000
_exception_logs: dict[str, RateLimitedLog] = {}


def _log_exception(function: str, exc: BaseException) -> None:
    """Log a function's exception: once a second per function (the rest counted), its message escaped
    and capped, so callers can neither flood the log nor forge lines in it."""
    log = _exception_logs.get(function)
    if log is None:
        log = _exception_logs.setdefault(function, RateLimitedLog())
    stack = "".join(traceback.format_tb(exc.__traceback__))[-_MAX_LOGGED_STACK:]
    text = loggable(str(exc), MAX_LOGGED_TEXT)
    log(logger, logging.ERROR, "function %s raised %s: %s\n%s", function, type(exc).__name__, text, stack)
