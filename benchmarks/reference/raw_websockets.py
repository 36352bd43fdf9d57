"""Reference server: the websockets library's own asyncio server with orjson, nothing else.

Run: python raw_websockets.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from websockets.asyncio.server import ServerConnection, serve


async def handler(websocket: ServerConnection) -> None:
    async for message in websocket:
        request = orjson.loads(message)
        a, b = request["args"]
        await websocket.send(orjson.dumps({"id": request["id"], "result": a + b, "error": None}).decode())


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None):
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
