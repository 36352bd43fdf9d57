"""A program using the Python stub of tests/apps/typed.py: tests/test_stubs.py type-checks it and runs it.

``python stub_usage.py URL native|jsonrpc [TOKEN]`` (with ``typed_stub.py``, the stub, beside it or on the
path) calls every function through the stub and prints one JSON object of what came back.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from typed_stub import API, Point, Shape  # written by `synapse stubs --python typed_stub.py`

import synapse_cli


async def main(url: str, dialect: str, token: str | None) -> dict[str, Any]:
    shape: Shape = {"points": [{"x": 1.0, "y": 2.0}, {"x": 3.0}], "color": "green", "children": [{"points": []}]}
    client = synapse_cli.Client(url, dialect="jsonrpc" if dialect == "jsonrpc" else "native", token=token)
    async with API(client) as api:
        centre: Point = await api.centroid(shape, scale=2.0)
        walked: list[Point] = [point async for point in api.walk(shape, limit=1)]
        every: list[float] = [point["x"] async for point in api.walk(shape)]
        repeated = [text async for text in api.repeat("ab", times=3)]
        try:
            await api.count_shapes({"points": [{"x": "far"}]})  # type: ignore[typeddict-item]
            refused: int | None = None
        except synapse_cli.RPCError as exc:
            refused = exc.code
        await api.nothing()
        return {
            "centroid": centre,
            "count": await api.count_shapes(shape),
            "walk": walked,
            "xs": every,
            "join": await api.text_join(["a", "b"], sep="-"),
            "join_default": await api.text_join(["a", "b"]),
            "tagged": await api.tagged(1, "two"),
            "repeat": repeated,
            "pair": await api.pair(1, "x"),
            "refused": refused,
        }


if __name__ == "__main__":
    url, dialect, *rest = sys.argv[1:]
    print(json.dumps(asyncio.run(main(url, dialect, rest[0] if rest else None)), sort_keys=True))
