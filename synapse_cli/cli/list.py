"""``synapse list``: the server's functions, as a table or the ``list`` result's JSON."""

from typing import TYPE_CHECKING, Any

from synapse_cli.cli import render
from synapse_cli.cli.app import (
    CafileOption,
    InsecureTLSOption,
    JsonOption,
    JsonRpcOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    app,
    make_client,
    run_coroutine,
    wants_json,
)
from synapse_cli.core.settings import DEFAULT_TIMEOUT, DEFAULT_URL

if TYPE_CHECKING:  # imported where used: `synapse --help` starts without asyncio or websockets
    from synapse_cli.client.client import Client

__all__ = ["list_functions"]


@app.command("list")
def list_functions(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """List the server's functions with their signatures."""
    functions = run_coroutine(_list(make_client(url, token, timeout, jsonrpc, cafile, insecure)))
    if wants_json(json_output):
        render.write_json({"functions": functions})
    else:
        render.console().print(render.functions_table(functions))


async def _list(client: "Client") -> list[dict[str, Any]]:
    async with client:
        return await client.list()
