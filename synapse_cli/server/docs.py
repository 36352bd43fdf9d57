"""The ``/docs`` page (SPEC §6): one self-contained HTML page to try every function from a browser.

It holds no data of its own: the page calls ``rpc.discover`` over the WebSocket it opens (the token, if
any, travels in the subprotocol list, the one place a browser can put it) and builds a form per function
from its JSON Schema. Everything it needs is inline in ``docs.html``, next to this module: no script,
style or font from anywhere else, and no server-provided text ever parsed as HTML (only ``textContent``).
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["page"]


@functools.cache
def page() -> bytes:
    """The page's HTML (read once)."""
    return resources.files("synapse_cli.server").joinpath("docs.html").read_bytes()
