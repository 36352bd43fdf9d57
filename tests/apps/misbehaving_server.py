"""A server that completes the handshake, then misbehaves: `close` closes every connection after 0.2 s;
`junk` answers every call with text that is not JSON. Usage: python misbehaving_server.py PORT MODE"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve

mode = sys.argv[2]


async def handler(ws):
    if mode == "close":
        await asyncio.sleep(0.2)
        await ws.close(1011, "bye")
        return
    async for m in ws:
        r = json.loads(m)
        await ws.send("not json at all" if mode == "junk" else json.dumps({"id": r["id"], "result": 3, "error": None}))


async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1])):
        await asyncio.Future()


asyncio.run(main())
