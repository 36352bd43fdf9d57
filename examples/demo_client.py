"""Call the built-in add_numbers over one connection, as the seed's demo did.

Start a server first (``make serve``), then: ``python examples/demo_client.py [URL]``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from synapse_cli import Client, SynapseError


async def main(url: str) -> None:
    async with Client(url, token=os.environ.get("SYNAPSE_TOKEN")) as client:
        pairs = [(1, 2), (3.5, 4.5), (-1, 10)]
        results = await asyncio.gather(*(client.call("add_numbers", a, b) for a, b in pairs))
        for (a, b), result in zip(pairs, results, strict=True):
            print(f"add_numbers({a}, {b}) -> {result}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SYNAPSE_URL", "ws://127.0.0.1:8000/ws")
    try:
        asyncio.run(main(target))
    except SynapseError as exc:
        sys.exit(f"demo_client: {exc}")
