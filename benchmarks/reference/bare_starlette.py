"""Reference server: a bare Starlette WebSocket endpoint with orjson — no validation, no concurrency.

Each frame is parsed, add_numbers is computed inline and the reply written, one after another: the
floor any RPC layer on Starlette + uvicorn pays. Run: python bare_starlette.py PORT
"""

from __future__ import annotations

import sys

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            request = orjson.loads(await websocket.receive_text())
            a, b = request["args"]
            reply = {"id": request["id"], "result": a + b, "error": None}
            await websocket.send_text(orjson.dumps(reply).decode())
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ws="websockets-sansio", log_level="warning")
