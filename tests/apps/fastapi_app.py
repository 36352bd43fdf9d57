"""A FastAPI app with synapse mounted at /rpc, for tests/test_mount.py and benchmarks/mounted.py.

Run it as users do: ``uvicorn fastapi_app:app`` or ``hypercorn fastapi_app:app`` (from tests/apps). Its
synapse ``Settings`` come from ``MOUNTED_<FIELD>`` environment variables holding JSON
(``MOUNTED_TOKEN='"s3cret"'``, ``MOUNTED_MAX_CONNECTIONS=2``). Its own lifespan says when it starts and
stops on stderr, around synapse's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI

from synapse_cli import Registry, Settings, asgi

registry = Registry()


@registry.function(inline=True)
def add_numbers(a: int | float, b: int | float) -> int | float:
    """Add two numbers."""
    return a + b


@registry.function
async def sleep(seconds: float) -> float:
    """Wait, then answer how long."""
    await asyncio.sleep(seconds)
    return seconds


@registry.function
async def ticks(n: int) -> AsyncIterator[int]:
    """Count from 0 to n-1."""
    for i in range(n):
        yield i


options = {name[8:].lower(): json.loads(value) for name, value in os.environ.items() if name.startswith("MOUNTED_")}
if "allow_origins" in options:
    options["allow_origins"] = tuple(options["allow_origins"])
rpc = asgi(registry, Settings(**options))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print("host: startup", file=sys.stderr, flush=True)
    async with rpc.lifespan(app):
        yield
    print("host: shutdown", file=sys.stderr, flush=True)


app = FastAPI(lifespan=lifespan)
app.mount("/rpc", rpc)


@app.get("/hello")
def hello() -> dict[str, str]:
    """A route of the host app: it keeps working beside synapse."""
    return {"hello": "world"}
