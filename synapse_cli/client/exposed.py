"""What a :class:`~synapse_cli.client.client.Client` exposes to its server, which calls it with ``ctx.call``.

:class:`ExposedFunctions` is the part of the client that holds the exposed functions (a
:class:`~synapse_cli.core.registry.Registry`) and hands each request the server sends to the
connection's :class:`~synapse_cli.client.callee.Callee`, made when the server first calls. Both are
imported only when used: a client that exposes nothing never loads pydantic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from synapse_cli.client.callee import Callee
    from synapse_cli.client.wire import WebSocket
    from synapse_cli.core.registry import Registry

__all__ = ["ExposedFunctions"]

F = TypeVar("F", bound=Callable[..., Any])


class ExposedFunctions:
    """The functions a client exposes, and the server's calls to them on the current connection."""

    _ws: WebSocket | None
    _functions: Registry | None
    _callee: Callee | None

    def _init_exposed(self, functions: Registry | None) -> None:
        if functions is not None:
            from synapse_cli.client.callee import check_exposable

            check_exposable(functions)
        self._functions = functions
        self._callee = None

    @property
    def functions(self) -> Registry:
        """The functions this client exposes to its server (a Registry; empty until something is exposed)."""
        if self._functions is None:
            from synapse_cli.core.registry import Registry

            self._functions = Registry()
        return self._functions

    @overload
    def expose(self, func: F, /) -> F: ...

    @overload
    def expose(self, *, name: str | None = None, inline: bool = False) -> Callable[[F], F]: ...

    def expose(self, func: Any = None, *, name: str | None = None, inline: bool = False) -> Any:
        """Expose a function to the server (a decorator, with or without arguments), which calls it with
        ``await ctx.call(name, ...)``; its arguments are validated from its type hints, as on a server.

        ::

            @client.expose
            def confirm(question: str) -> bool:
                return input(question + " [y/N] ") == "y"

        Args:
            name: the name the server calls (default: the function's ``__name__``).
            inline: run a cheap, non-blocking sync function on the event loop instead of a thread.

        ValueError for a stream function, one taking a Context or checks, or a name already exposed.
        """

        def register(target: F) -> F:
            from synapse_cli.client.callee import check_exposable
            from synapse_cli.core.registry import Registry

            alone = Registry()
            alone.add(target, name=name, inline=inline)
            check_exposable(alone)
            self.functions.add(target, name=name, inline=inline)
            return target

        return register(func) if func is not None else register

    def _serve(self, payload: bytes) -> bool:
        """A message that is no reply: a request from the server (a call, a cancel, a notification) is
        answered, True; anything else is not for us, False."""
        from synapse_cli.client.callee import Callee, is_request

        if self._ws is None or not is_request(payload):
            return False
        if self._callee is None:
            self._callee = Callee(self.functions, self._ws.write)
        self._callee.receive(payload)
        return True

    def _end_exposed(self) -> None:
        """The connection is gone: the server's calls to us end with it (cancelled, unanswered)."""
        callee, self._callee = self._callee, None
        if callee is not None:
            callee.abandon()
