"""An OpenRPC document (``rpc.discover``) read into what a typed client needs: methods and named types.

Pure: a document in, an :class:`Interface` out, for ``python_stub.py`` and ``typescript_stub.py`` to
render. JSON Schemas become a small tree of :class:`Type` expressions; every object schema with
properties becomes a named :class:`Model` (``components.schemas`` by their keys, inline ones by their
``title`` or their place, the same schema once), every other component an :class:`Alias`. ``$ref``s
point at those names, so recursive models stay finite. What the tree cannot say (``allOf`` of several,
``not``, patterns) widens to :data:`ANY`: a stub may be looser than the server, never stricter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ANY", "Alias", "Field", "Interface", "Method", "Model", "Param", "Type", "identifier", "read_openrpc"]

_SCALARS = {"null": "null", "boolean": "bool", "integer": "int", "number": "float", "string": "str"}
_REF_PREFIXES = ("#/components/schemas/", "#/$defs/", "#/definitions/")


@dataclass(frozen=True, slots=True)
class Type:
    """A type expression.

    ``kind`` is one of ``any``, ``null``, ``bool``, ``int``, ``float``, ``str``, ``literal`` (``values``),
    ``list`` (``of[0]`` each), ``tuple`` (``of``, one per position), ``map`` (string keys, ``of[0]``
    values), ``union`` (``of``) or ``ref`` (``name``: a :class:`Model` or :class:`Alias`).
    """

    kind: str
    of: tuple[Type, ...] = ()
    values: tuple[Any, ...] = ()
    name: str = ""


ANY = Type("any")


@dataclass(frozen=True, slots=True)
class Field:
    """One property of a :class:`Model`: its JSON key, type, whether it is always there."""

    key: str
    type: Type
    required: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class Model:
    """An object with named properties (a pydantic model, a dataclass, a TypedDict on the server)."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Alias:
    """A named type that is not an object with properties: an enum, a union, a list..."""

    name: str
    type: Type
    description: str = ""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a method, by its name on the wire; ``default`` is the schema's (JSON), if any."""

    key: str
    type: Type
    required: bool
    description: str = ""
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True, slots=True)
class Method:
    """One function of the server: its name, parameters and result (one item's, for a stream)."""

    name: str
    params: tuple[Param, ...]
    result: Type
    stream: bool = False
    description: str = ""


@dataclass(slots=True)
class Interface:
    """Everything a typed client of one server declares."""

    title: str
    version: str
    methods: list[Method] = field(default_factory=list)
    types: dict[str, Model | Alias] = field(default_factory=dict)  # by name, in the order they were met


def read_openrpc(document: Any, *, reserved: frozenset[str] = frozenset()) -> Interface:
    """The methods and named types of an OpenRPC document; no type is named after a ``reserved`` word.

    Raises:
        ValueError: the document is not an OpenRPC document we can read (no ``methods`` list, a method
            without a name, a ``$ref`` that points nowhere), with what is wrong in one line.
    """
    if not isinstance(document, Mapping):
        raise ValueError("the document is not a JSON object")
    methods = document.get("methods")
    if not isinstance(methods, list):
        raise ValueError('the document has no "methods" list')
    info = _mapping(document.get("info"))
    reader = _Reader(_mapping(_mapping(document.get("components")).get("schemas")), reserved)
    interface = Interface(str(info.get("title", "")), str(info.get("version", "")))
    seen: set[str] = set()
    for index, method in enumerate(methods):
        read = reader.method(method, index)
        if read.name in seen:
            raise ValueError(f"method {read.name!r} is described twice")
        seen.add(read.name)
        interface.methods.append(read)
    interface.types = reader.types
    return interface


def identifier(text: str, *, reserved: frozenset[str] = frozenset(), taken: set[str] | None = None) -> str:
    """``text`` as an ASCII identifier: other characters become ``_``; a reserved word gets a ``_`` after it.

    With ``taken``, the name is also made unique among those (``name2``, ``name3``...) and added to it.
    """
    name = re.sub(r"[^0-9A-Za-z_]", "_", text)
    if not name or name[0].isdigit():
        name = f"_{name}"
    while name in reserved:
        name += "_"
    if taken is not None:
        base, number = name, 2
        while name in taken or name in reserved:
            name, number = f"{base}{number}", number + 1
        taken.add(name)
    return name


def _camel(text: str) -> str:
    """``add_numbers`` → ``AddNumbers``: a type name made from a method or field name."""
    words = re.split(r"[^0-9A-Za-z]+", text)
    return "".join(word[:1].upper() + word[1:] for word in words if word) or "Type"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class _Reader:
    """Turns schemas into types, naming each object model once."""

    def __init__(self, schemas: Mapping[str, Any], reserved: frozenset[str]) -> None:
        self.reserved = reserved
        self.types: dict[str, Model | Alias] = {}
        self._components = dict(schemas)
        self._names: dict[str, str] = {}  # component key -> its type name
        self._by_content: dict[str, str] = {}  # canonical JSON of an object schema -> its model's name
        self._taken: set[str] = set()
        for key, schema in self._components.items():
            self._names[key] = identifier(
                key if key.isidentifier() else _camel(key), reserved=reserved, taken=self._taken
            )
            if isinstance(schema, Mapping):
                self._by_content.setdefault(_canonical(schema), self._names[key])
        for key, schema in self._components.items():
            self._define(self._names[key], schema if isinstance(schema, Mapping) else {})

    def method(self, method: Any, index: int) -> Method:
        if not isinstance(method, Mapping) or not isinstance(method.get("name"), str) or not method["name"]:
            raise ValueError(f"method #{index + 1} has no name")
        name = method["name"]
        params = method.get("params", [])
        if not isinstance(params, list):
            raise ValueError(f"method {name!r}: params is not a list")
        read: list[Param] = []
        for param in params:
            if not isinstance(param, Mapping) or not isinstance(param.get("name"), str):
                raise ValueError(f"method {name!r}: a parameter has no name")
            schema = _mapping(param.get("schema"))
            hint = _camel(name) + _camel(param["name"])
            read.append(
                Param(
                    key=param["name"],
                    type=self.type(schema, hint),
                    required=param.get("required") is True,
                    description=_text(param.get("description")) or _text(schema.get("description")),
                    default=schema.get("default"),
                    has_default="default" in schema,
                )
            )
        stream = method.get("x-stream") is True
        schema = _mapping(_mapping(method.get("result")).get("schema"))
        returned = self.type(schema, _camel(name) + ("Item" if stream else "Result"))
        return Method(name, tuple(read), returned, stream, _text(method.get("description")))

    def type(self, schema: Any, hint: str) -> Type:
        """The type a schema describes; ``hint`` names an inline object model that has no title."""
        if not isinstance(schema, Mapping):
            return ANY  # true, false (boolean schemas)
        if "$ref" in schema:
            return Type("ref", name=self._resolve(schema["$ref"]))
        if "const" in schema:
            return _literal([schema["const"]])
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return _literal(schema["enum"])
        for keyword in ("anyOf", "oneOf"):
            if isinstance(schema.get(keyword), list) and schema[keyword]:
                return _union([self.type(option, f"{hint}{n + 1}") for n, option in enumerate(schema[keyword])])
        if isinstance(schema.get("allOf"), list):
            parts = schema["allOf"]
            return self.type(parts[0], hint) if len(parts) == 1 else ANY
        kinds = schema.get("type")
        if isinstance(kinds, list):
            return _union([self.type({**schema, "type": kind}, hint) for kind in kinds if isinstance(kind, str)])
        if kinds in _SCALARS:
            return Type(_SCALARS[kinds])
        if kinds == "array" or "items" in schema or "prefixItems" in schema:
            return self._array(schema, hint)
        if kinds == "object" or "properties" in schema or "additionalProperties" in schema:
            return self._object(schema, hint)
        return ANY

    def _array(self, schema: Mapping[str, Any], hint: str) -> Type:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            items = tuple(self.type(item, f"{hint}{n + 1}") for n, item in enumerate(prefix))
            if schema.get("maxItems") == len(prefix) and schema.get("minItems") == len(prefix):
                return Type("tuple", items)
            rest = self.type(schema["items"], f"{hint}Item") if "items" in schema else ANY
            return Type("list", (_union([*items, rest]),))
        return Type("list", (self.type(schema.get("items", {}), f"{hint}Item"),))

    def _object(self, schema: Mapping[str, Any], hint: str) -> Type:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            extra = schema.get("additionalProperties", True)
            return Type("map", (self.type(extra, f"{hint}Value"),))
        known = self._by_content.get(_canonical(schema))
        if known is not None:
            return Type("ref", name=known)
        title = _text(schema.get("title"))
        name = identifier(title if title.isidentifier() else hint, reserved=self.reserved, taken=self._taken)
        self._by_content[_canonical(schema)] = name
        self._define(name, schema)
        return Type("ref", name=name)

    def _define(self, name: str, schema: Mapping[str, Any]) -> None:
        """Declare the named type ``name`` (a component, or an inline object met for the first time)."""
        description = _text(schema.get("description"))
        properties = schema.get("properties")
        if isinstance(properties, Mapping) and properties and "$ref" not in schema:
            self.types[name] = Model(name, (), description)  # declared before its fields: recursion ends here
            required = schema["required"] if isinstance(schema.get("required"), list) else []
            fields = tuple(
                Field(
                    str(key),
                    self.type(value, name + _camel(str(key))),
                    key in required,
                    _text(value.get("description")) if isinstance(value, Mapping) else "",
                )
                for key, value in properties.items()
            )
            self.types[name] = Model(name, fields, description)
        else:
            self.types[name] = Alias(name, ANY, description)
            self.types[name] = Alias(name, self.type(schema, name + "Value"), description)

    def _resolve(self, ref: Any) -> str:
        if isinstance(ref, str):
            for prefix in _REF_PREFIXES:
                key = ref[len(prefix) :].replace("~1", "/").replace("~0", "~")
                if ref.startswith(prefix) and key in self._names:
                    return self._names[key]
        raise ValueError(f"$ref {ref!r} points to no schema of the document's components")


def _canonical(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, default=str)


def _literal(values: list[Any]) -> Type:
    """An enum or const: a literal when every value is a string, integer, boolean or null."""
    if all(value is None or isinstance(value, (str, bool, int)) for value in values):
        plain = tuple(dict.fromkeys((type(v), v) for v in values))  # 1 and True are different literals
        return Type("literal", values=tuple(value for _, value in plain))
    return _union([_json_type(value) for value in values])


def _json_type(value: Any) -> Type:
    if isinstance(value, float):
        return Type("float")
    if isinstance(value, list):
        return Type("list", (ANY,))
    if isinstance(value, dict):
        return Type("map", (ANY,))
    return _literal([value])


def _union(options: list[Type]) -> Type:
    """One type for several: nested unions flattened, duplicates dropped, anything absorbs the rest."""
    flat: list[Type] = []
    for option in options:
        for member in option.of if option.kind == "union" else (option,):
            if member.kind == "any":
                return ANY
            if member not in flat:
                flat.append(member)
    if not flat:
        return ANY
    return flat[0] if len(flat) == 1 else Type("union", tuple(flat))
