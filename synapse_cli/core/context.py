"""The call context: who calls a function, the way back to them, and the checks a call must pass.

A parameter annotated :class:`Context` is filled in by the server, never by the caller: it is left out of
the function's JSON Schema, and a caller who sends a value for it gets -32602 like for any unknown
argument. The context carries what the connection learned at its handshake (:class:`Caller`: connection
id, remote address, headers, the identity of the token it presented), what this call is (dialect, id,
function) and the way back to that caller only: :meth:`Context.notify` and :meth:`Context.call` (a
server-to-client call). Both go through a :class:`Channel` the connection's driver provides.

A registry (``Registry(requires=...)``) or one function (``@registry.function(requires=...)``) may name
checks: callables taking the context, sync or async, that run before the function. A check refuses a
call by returning ``False`` (error -32007 "forbidden: NAME") or by raising :class:`RPCError` (its own code,
message and data). Sync checks at the head of the list run as the call is accepted, so a refusal is
answered at once; from the first async check on, they run in the call's task, before the function body.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from synapse_cli.core.errors import RPCError
from synapse_cli.core.protocol import FORBIDDEN, MAX_NAME_LENGTH, Dialect
from synapse_cli.core.settings import DEFAULT_TIMEOUT

__all__ = [
    "Caller",
    "Channel",
    "Check",
    "Context",
    "Headers",
    "Requires",
    "checks_of",
    "is_async_check",
    "prepare_call",
]

Check = Callable[["Context"], Any]
Requires = Check | Sequence[Check] | None


class Headers(Mapping[str, str]):
    """The handshake's HTTP headers, read-only, looked up without regard to case.

    A header sent more than once reads as its values joined with ``", "`` (RFC 9110 §5.3);
    :meth:`getlist` gives them apart.
    """

    __slots__ = ("raw", "_joined")

    def __init__(self, raw: Sequence[tuple[str, str]] = ()) -> None:
        self.raw: tuple[tuple[str, str], ...] = tuple(raw)
        joined: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        self._joined = joined

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def getlist(self, name: str) -> list[str]:
        """Every value of header ``name``, in the order sent."""
        key = name.lower()
        return [value for header, value in self.raw if header.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({list(self._joined)!r})"  # names only: values may hold credentials


class Caller:
    """What a connection knows of its peer from the handshake; the same for every call on it.

    Attributes:
        connection_id: the connection's number in this server process (as in the logs).
        remote_address: ``host:port`` of the peer ("" when the server does not know it).
        headers: the handshake's HTTP headers.
        identity: the name given to the token the peer presented (``Settings.tokens``); None when the
            server takes no token, or takes only the single ``--token``.
    """

    __slots__ = ("connection_id", "remote_address", "headers", "identity")

    def __init__(
        self,
        connection_id: int = 0,
        remote_address: str = "",
        headers: Headers | None = None,
        identity: str | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.remote_address = remote_address
        self.headers = headers if headers is not None else Headers()
        self.identity = identity


class Channel(Protocol):
    """The way back to a connection's peer; the connection's driver implements it."""

    async def call(
        self, dialect: Dialect, func: str, args: list[Any] | dict[str, Any], timeout: float | None
    ) -> Any: ...

    async def notify(self, dialect: Dialect, method: str, params: list[Any] | dict[str, Any] | None) -> None: ...


class Context:
    """What a function learns about its call by taking a parameter annotated ``Context``.

    ::

        @registry.function
        async def whoami(ctx: Context) -> str | None:
            await ctx.notify("progress", {"step": 1})       # to this caller only
            answer = await ctx.call("confirm", "go on?", timeout=30)   # a function the caller exposes
            return ctx.identity

    Attributes:
        caller: what the connection knows of its peer (also read through the properties below).
        dialect: ``"native"`` or ``"jsonrpc"``, the dialect of this call.
        call_id: the id of this call (None for a JSON-RPC notification).
        function: the name the function was called by.
    """

    __slots__ = ("caller", "dialect", "call_id", "function", "_channel")

    def __init__(
        self, caller: Caller, dialect: Dialect, call_id: Any, function: str, channel: Channel | None = None
    ) -> None:
        self.caller = caller
        self.dialect = dialect
        self.call_id = call_id
        self.function = function
        self._channel = channel

    @property
    def connection_id(self) -> int:
        """The connection's number in this server process (as in the logs)."""
        return self.caller.connection_id

    @property
    def remote_address(self) -> str:
        """``host:port`` of the caller."""
        return self.caller.remote_address

    @property
    def headers(self) -> Headers:
        """The HTTP headers of the caller's handshake (case-insensitive)."""
        return self.caller.headers

    @property
    def identity(self) -> str | None:
        """The name of the token the caller presented, or None."""
        return self.caller.identity

    async def notify(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> None:
        """Send a notification to this caller only: ``{"jsonrpc": "2.0", "method", "params"}``, no reply.

        A client that exposes a function ``method`` runs it with ``params``. Waits while the caller
        reads slower than we write (backpressure).

        Raises:
            ConnectionLost: the caller's connection has closed.
            ValueError: ``method`` is not a valid name, or ``params`` cannot be sent as JSON.
        """
        _check_name(method)
        if params is not None and type(params) not in (list, dict):
            raise ValueError("notification params must be a list, a dict or None")
        await self._channel_or_fail().notify(self.dialect, method, params)

    async def call(self, func: str, *args: Any, timeout: float | None = DEFAULT_TIMEOUT, **kwargs: Any) -> Any:
        """Call ``func``, a function this caller exposes, and return its result (a server-to-client call).

        Positional or keyword arguments (not both), validated on the caller's side against the function's
        type hints. Cancelling the awaiting task sends ``cancel`` to the caller.

        Raises:
            RPCError: the caller answered with an error (-32601 when it exposes no ``func``).
            CallTimeout: no answer within ``timeout`` seconds (None waits forever); a ``cancel`` is sent.
            ConnectionLost: the caller's connection closed before the answer.
            InvalidReply: the caller's answer does not have the shape of a reply.
        """
        if args and kwargs:
            raise TypeError("pass arguments by position or by name, not both")
        _check_name(func)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        return await self._channel_or_fail().call(self.dialect, func, kwargs if kwargs else list(args), timeout)

    def _channel_or_fail(self) -> Channel:
        if self._channel is None:
            raise RuntimeError("this context has no connection to send on")
        return self._channel

    def __repr__(self) -> str:
        return f"Context(connection_id={self.connection_id}, function={self.function!r}, identity={self.identity!r})"


def _check_name(name: Any) -> None:
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a function name is a string of 1-{MAX_NAME_LENGTH} characters, not {name!r:.60}")


# -- checks --------------------------------------------------------------------------------------


def checks_of(requires: Requires) -> tuple[Check, ...]:
    """``requires`` as a tuple of checks; TypeError for anything that is not a callable (or a list of them)."""
    if requires is None:
        return ()
    found = (requires,) if callable(requires) else tuple(requires)
    for check in found:
        if not callable(check):
            raise TypeError(f"requires takes callables (a check of the Context), not {check!r:.60}")
    return found


def is_async_check(check: Check) -> bool:
    """True for ``async def`` checks (and objects whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(check) or inspect.iscoroutinefunction(type(check).__call__)


def _refusal(function: str) -> RPCError:
    return RPCError(f"forbidden: {function}", FORBIDDEN)


def _run_sync(check: Check, ctx: Context) -> None:
    outcome = check(ctx)
    if inspect.isawaitable(outcome):
        if inspect.iscoroutine(outcome):
            outcome.close()  # never awaited: close it, or Python warns
        raise TypeError(f"check {getattr(check, '__name__', check)!r} returned an awaitable: declare it async def")
    if outcome is False:
        raise _refusal(ctx.function)


async def _run_async(checks: tuple[Check, ...], ctx: Context) -> None:
    for check in checks:
        outcome = check(ctx)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome is False:
            raise _refusal(ctx.function)


def prepare_call(checks: tuple[Check, ...], sync_checks: int, ctx: Context) -> Callable[[], Awaitable[None]] | None:
    """Run the leading ``sync_checks`` checks now (raising what refuses the call); the rest, if any, as a
    coroutine function the call's task awaits before the function body."""
    for check in checks[:sync_checks]:
        _run_sync(check, ctx)
    rest = checks[sync_checks:]
    if not rest:
        return None

    async def guard() -> None:
        await _run_async(rest, ctx)

    return guard
