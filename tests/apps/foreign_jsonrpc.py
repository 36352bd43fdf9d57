"""A JSON-RPC 2.0 server synapse did not write, for ``synapse stubs``: ``python foreign_jsonrpc.py PORT MODE``.

``nodiscover``: every method, rpc.discover included, is -32601 (most JSON-RPC servers). ``baddoc``:
rpc.discover answers a result that is no OpenRPC document (``{"methods": 7}``).
"""

import asyncio
import json
import sys

from websockets.asyncio.server import serve

mode = sys.argv[2]


async def handler(ws):
    async for message in ws:
        request = json.loads(message)
        reply = {"jsonrpc": "2.0", "id": request.get("id")}
        if mode == "baddoc" and request.get("method") == "rpc.discover":
            reply["result"] = {"methods": 7}
        else:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        await ws.send(json.dumps(reply))


async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1])):
        print("ready", flush=True)
        await asyncio.Future()


asyncio.run(main())
