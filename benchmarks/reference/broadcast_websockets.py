"""Reference fan-out server: the websockets library's own asyncio server and its ``broadcast()``, nothing else.

The convention of benchmarks/fanout.py's bare broadcast servers (this one and node/broadcast_server.js):
every connection is a subscriber until it sends a text frame; that connection is then the publisher, and
each text frame it sends is broadcast as is (one prepared frame, websockets' ``broadcast()``) to every
connection that never sent one.

Run: python broadcast_websockets.py PORT
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

SUBSCRIBERS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    SUBSCRIBERS.add(websocket)
    try:
        async for message in websocket:
            SUBSCRIBERS.discard(websocket)  # it publishes: it is not a subscriber
            broadcast(SUBSCRIBERS, message)
    finally:
        SUBSCRIBERS.discard(websocket)


async def main(port: int) -> None:
    # backlog: 10,000 subscribers connect 100 at a time per generator process (asyncio's default is 100)
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=2048):
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
