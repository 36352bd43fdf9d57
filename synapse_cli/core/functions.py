"""One registered function and what is built for it once: argument binding, result encoding, schemas.

:meth:`Function.build` reads a Python callable's signature and type hints and makes a pydantic-core
validator for its arguments (strict JSON semantics: strings are never numbers, ``true`` is not an
integer), an encoder for its results (as the return annotation declares them) and the JSON Schemas that
``list`` and ``rpc.discover`` publish. :class:`~synapse_cli.core.registry.Registry` holds them by name.
"""

from __future__ import annotations

import collections.abc
import inspect
import logging
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
import pydantic
from pydantic import TypeAdapter
from pydantic.experimental.arguments_schema import generate_arguments_schema
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import SchemaValidator

from synapse_cli.core.context import Check, Context, is_async_check
from synapse_cli.core.encoding import dump_json
from synapse_cli.core.errors import RPCError
from synapse_cli.core.protocol import INTERNAL_ERROR, INVALID_PARAMS

__all__ = ["Function"]

logger = logging.getLogger("synapse.calls")


def _first_paragraph(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


# Core schema types whose strict Python validation of parsed JSON equals strict JSON validation. Others
# (datetime, bytes, enums, models, tuples, custom validators...) read JSON strings their own way.
_JSON_NATIVE: Final = frozenset(
    {"arguments-v3", "int", "float", "str", "bool", "none", "any", "list", "dict", "nullable", "union", "default"}
)


# Return types whose values orjson writes as they are: results of these skip pydantic's serializer
# (the fast path: no cost per call; a value that does not fit is caught only when orjson refuses it).
_PLAIN_RESULT: Final = frozenset({"int", "float", "str", "bool", "none", "any", "list", "dict", "nullable", "union"})


def _schema_types(schema: Any) -> set[str]:
    """Every ``type`` named anywhere in a pydantic-core schema."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.add(node["type"])
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return found


@dataclass(slots=True)
class Function:
    """One registered function and everything built for it once.

    Attributes:
        name: the name callers use.
        func: the Python callable.
        inline: run on the event loop (cheap, non-blocking sync functions only).
        is_async: a coroutine function (always runs on the event loop).
        stream: a generator function (sync or async): a call sends its items, then ends.
        description: the first paragraph of the docstring.
        params_schema: JSON Schema of the arguments object.
        result_schema: JSON Schema of the return value, as it is sent.
        encode_result: the result as JSON text, or None (then :meth:`result_error`). Plain JSON
            return types (and none declared) take :func:`~synapse_cli.core.encoding.dump_json` itself, with
            no cost per call; others (bytes, sets, Decimal, datetime, dataclasses, models...) go through
            pydantic's serializer for the annotation.
        context: the parameter annotated :class:`~synapse_cli.core.context.Context` (None: there is none).
            It is not in the schema; the server fills it in (:meth:`with_context`).
        checks: what must allow a call before it runs (the registry's, then the function's own);
            the first ``sync_checks`` of them are sync.
    """

    name: str
    func: Callable[..., Any]
    inline: bool
    is_async: bool
    description: str
    params_schema: dict[str, Any]
    result_schema: dict[str, Any]
    _validator: SchemaValidator
    _positional: tuple[str, ...]
    _var_args: str | None
    _var_kwargs: str | None
    _named: frozenset[str]
    _json_native: bool
    encode_result: Callable[[Any], bytes | None]
    _result_adapter: TypeAdapter[Any]
    _declared: str
    stream: bool = False
    _scalars: tuple[frozenset[type], ...] | None = None  # the types each parameter takes, when all are plain
    _widen: tuple[bool, ...] | None = None  # which of them turn an int into a float (None: none does)
    context: str | None = None
    _context_index: int | None = None  # the context's place among the positional parameters (None: by name)
    checks: tuple[Check, ...] = ()
    sync_checks: int = 0
    contextual: bool = False  # a call needs its Context: for the parameter, or for the checks

    @classmethod
    def build(cls, func: Callable[..., Any], *, name: str, inline: bool, checks: tuple[Check, ...] = ()) -> Function:
        """Inspect ``func`` once: its validator, its schemas, how positional arguments map to names."""
        signature = inspect.signature(func)
        kinds = inspect.Parameter
        params = list(signature.parameters.values())
        context, context_index = _context_parameter(func, params, name)
        if context is None:
            core_schema = generate_arguments_schema(func)
        else:  # the Context is the server's to fill in: no schema, and callers cannot send it
            core_schema = generate_arguments_schema(func, parameters_callback=lambda _, p, __: _skip(p, context))
            params = [p for p in params if p.name != context]
        hint = _return_hint(func)
        stream = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
        if stream:
            hint = _item_hint(hint, name)
            if inline:
                raise ValueError(f"stream function {name!r} cannot be inline: its items are sent as they come")
        declared = hint is not inspect.Signature.empty
        try:
            adapter = TypeAdapter(hint if declared else Any)  # none declared: the value's own type decides
            result_schema = adapter.json_schema(mode="serialization") if declared else {}
        except pydantic.PydanticSchemaGenerationError as exc:
            raise ValueError(f"function {name!r}: no JSON Schema for its return annotation {hint!r}") from exc
        plain = _schema_types(adapter.core_schema) <= _PLAIN_RESULT
        scalar_types = _plain_parameters(func, params)
        entry = cls(
            name=name,
            func=func,
            inline=inline,
            is_async=inspect.iscoroutinefunction(func),
            description=_first_paragraph(func),
            params_schema=GenerateJsonSchema().generate(core_schema),
            result_schema=result_schema,
            _validator=SchemaValidator(core_schema, config={"strict": True}),
            _positional=tuple(p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)),
            _var_args=next((p.name for p in params if p.kind is kinds.VAR_POSITIONAL), None),
            _var_kwargs=next((p.name for p in params if p.kind is kinds.VAR_KEYWORD), None),
            _named=frozenset(p.name for p in params if p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)),
            _json_native=_schema_types(core_schema) <= _JSON_NATIVE,
            stream=stream,
            _scalars=None if scalar_types is None else tuple(_ACCEPTED[kind] for kind in scalar_types),
            _widen=tuple(kind is float for kind in scalar_types) if scalar_types and float in scalar_types else None,
            encode_result=dump_json,
            _result_adapter=adapter,
            _declared=_type_name(hint) if declared else "Any",
            context=context,
            _context_index=context_index,
            checks=checks,
            sync_checks=next((i for i, check in enumerate(checks) if is_async_check(check)), len(checks)),
            contextual=context is not None or bool(checks),
        )
        if not plain:
            entry.encode_result = entry._encode_declared
        return entry

    def with_context(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], ctx: Context
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A bound call (:meth:`bind`'s) with the call's context put in its parameter's place."""
        index = self._context_index
        if self.context is None:
            return args, kwargs
        if index is None:
            return args, {**kwargs, self.context: ctx}
        return (*args[:index], ctx, *args[index:]), kwargs

    def _encode_declared(self, result: Any) -> bytes | None:
        """The result serialized as the return annotation declares it (bytes, sets, models...), or None."""
        try:
            value = self._result_adapter.dump_python(result, mode="json", warnings="error")
        except Exception:  # does not fit the annotation (or a serializer of its own failed)
            return None
        return dump_json(value)  # NaN, Infinity, 64+ bit integers and deep nesting are still refused

    def result_error(self, result: Any) -> RPCError:
        """The error for a result :attr:`encode_result` refused, logged with the function and the types.

        -32603 "result not serializable", ``data`` naming the type returned and the type declared. A value
        of a plain JSON type's annotation (``Any`` included) is only ever written by orjson: a set returned
        as ``Any`` is refused, as JSON cannot carry it; pydantic's serializer only says why it does not fit.
        """
        try:
            self._result_adapter.dump_python(result, mode="json", warnings="error")
            problem = (
                "which JSON cannot carry (NaN, Infinity, an integer beyond 64 bits, nesting deeper than 64, a set?)"
            )
        except Exception as exc:  # does not fit the annotation (or a serializer of its own failed)
            problem = f"which does not fit its return annotation -> {self._declared}: {_one_line(exc)}"
        returned = type(result).__name__
        logger.error("function %s returned %s, %s", self.name, returned, problem, extra={"function": self.name})
        return RPCError("result not serializable", INTERNAL_ERROR, {"type": returned, "declared": self._declared})

    def bind(self, args: list[Any] | dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate ``args`` against the signature: (args, kwargs) to call with, or RPCError -32602."""
        if self._scalars is not None:
            bound_now = self._bind_scalars(args)
            if bound_now is not None:
                return bound_now, {}
        named = self._by_name(args) if type(args) is list else self._split_extra(args)  # type: ignore[arg-type]
        if self._json_native:  # the JSON path's result, without encoding the arguments again
            try:
                valid: tuple[tuple[Any, ...], dict[str, Any]] = self._validator.validate_python(named, strict=True)
                return valid
            except pydantic.ValidationError:
                pass  # the JSON path below words the errors for JSON ("array", not "list")
        try:
            bound: tuple[tuple[Any, ...], dict[str, Any]] = self._validator.validate_json(
                orjson.dumps(named), strict=True
            )
        except pydantic.ValidationError as exc:
            details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            raise RPCError(f"invalid arguments for {self.name}", INVALID_PARAMS, details) from None
        return bound

    def _bind_scalars(self, args: list[Any] | dict[str, Any]) -> tuple[Any, ...] | None:
        """Plain parameters (int, float, str, bool, int | float) checked by type, as pydantic's strict mode
        does (an int is a float, a bool is no number); None: anything else, which the full path words."""
        accepted = self._scalars
        assert accepted is not None
        if type(args) is dict:
            if len(args) != len(accepted) or args.keys() != self._named:
                return None
            args = [args[name] for name in self._positional]
        elif len(args) != len(accepted):
            return None
        for value, types_ in zip(args, accepted, strict=True):
            if type(value) not in types_:
                return None
        widen = self._widen
        if widen is None:
            return tuple(args)
        return tuple(float(v) if wide and type(v) is int else v for v, wide in zip(args, widen, strict=True))

    def _by_name(self, args: list[Any]) -> dict[str, Any]:
        named = dict(zip(self._positional, args, strict=False))
        extra = args[len(self._positional) :]
        if extra:
            if self._var_args is None:
                expected = len(self._positional)
                detail = {"loc": [expected], "msg": f"takes {expected} positional arguments", "type": "too_many"}
                raise RPCError(f"invalid arguments for {self.name}", INVALID_PARAMS, [detail])
            named[self._var_args] = extra
        return named

    def _split_extra(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._var_kwargs is None or args.keys() <= self._named:
            return args
        named = {k: v for k, v in args.items() if k in self._named}
        named[self._var_kwargs] = {k: v for k, v in args.items() if k not in self._named}
        return named

    def describe(self) -> dict[str, Any]:
        """The entry of this function in a ``list`` reply (a stream's ``result`` is one item's schema)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "params": self.params_schema,
            "result": self.result_schema,
        }
        if self.stream:
            entry["stream"] = True
        return entry


_ITERATORS: Final = frozenset(
    {
        collections.abc.Iterator,
        collections.abc.Iterable,
        collections.abc.Generator,
        collections.abc.AsyncIterator,
        collections.abc.AsyncIterable,
        collections.abc.AsyncGenerator,
    }
)


def _item_hint(hint: Any, name: str) -> Any:
    """The item type of a stream function's return annotation (``AsyncIterator[int]`` -> ``int``)."""
    if hint is inspect.Signature.empty:
        return hint
    if typing.get_origin(hint) in _ITERATORS:
        args = typing.get_args(hint)
        return args[0] if args else Any
    if hint in _ITERATORS:
        return Any
    raise ValueError(f"stream function {name!r} must be annotated as an iterator of items, not {hint!r}")


_NUMBER: Final = object()  # the type int | float
_PLAIN: Final = {int: int, float: float, str: str, bool: bool}
# What pydantic's strict mode takes for each plain type (a float parameter takes an int, made a float).
_ACCEPTED: Final = {
    int: frozenset({int}),
    float: frozenset({int, float}),
    str: frozenset({str}),
    bool: frozenset({bool}),
    _NUMBER: frozenset({int, float}),
}


def _plain_parameters(func: Callable[..., Any], params: list[inspect.Parameter]) -> tuple[Any, ...] | None:
    """Each parameter's type when every one is a required positional-or-keyword int, float, str, bool or
    int | float (the shapes most functions have; ``_NUMBER`` stands for int | float); None otherwise."""
    try:
        hints = inspect.get_annotations(func, eval_str=True)
    except Exception:
        return None
    kinds: list[Any] = []
    for param in params:
        if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or param.default is not param.empty:
            return None
        hint = hints.get(param.name)
        if hint in _PLAIN:
            kinds.append(_PLAIN[hint])
        elif set(typing.get_args(hint)) == {int, float} and typing.get_origin(hint) in (types.UnionType, typing.Union):
            kinds.append(_NUMBER)
        else:
            return None
    return tuple(kinds)


def _skip(parameter: str, context: str) -> typing.Literal["skip"] | None:
    return "skip" if parameter == context else None


def _context_parameter(
    func: Callable[..., Any], params: list[inspect.Parameter], name: str
) -> tuple[str | None, int | None]:
    """The parameter annotated ``Context`` and its place among the positional ones ((None, None): none)."""
    try:
        hints = inspect.get_annotations(func, eval_str=True)
    except Exception:  # an annotation that cannot be evaluated: pydantic words the problem
        return None, None
    found = [param for param in params if hints.get(param.name) is Context]
    if not found:
        return None, None
    if len(found) > 1:
        raise ValueError(f"function {name!r} takes more than one Context parameter")
    param = found[0]
    kinds = inspect.Parameter
    if param.kind in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD):
        raise ValueError(f"function {name!r}: the Context parameter cannot be *{param.name} or **{param.name}")
    positional = [p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    return param.name, positional.index(param.name) if param.name in positional else None


def _type_name(hint: Any) -> str:
    """An annotation as written in code: ``bytes``, ``set[int]``, ``Point | None`` (no module prefixes)."""
    text = hint.__name__ if isinstance(hint, type) and not getattr(hint, "__args__", None) else repr(hint)
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _return_hint(func: Callable[..., Any]) -> Any:
    try:
        hints = inspect.get_annotations(func, eval_str=True)
    except Exception:  # an annotation that cannot be evaluated: publish no result schema
        return inspect.Signature.empty
    return hints.get("return", inspect.Signature.empty)
