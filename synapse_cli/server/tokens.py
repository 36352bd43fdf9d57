"""Bearer tokens: which ones a server takes, and the identity each one gives its connections.

``--token`` (``Settings.token``) is one shared secret: a connection that presents it has no identity.
``Settings.tokens`` maps more tokens to identities (``--token-file``): a connection that presents one
of them has that identity, which its calls read as ``ctx.identity``. A handshake presents its token in
one ``Authorization: Bearer <token>`` header or, from a browser, which cannot set that header on a
WebSocket, in one ``bearer.<base64url(token)>`` entry of ``Sec-WebSocket-Protocol``. Every configured
token is compared, in constant time, whichever matches: the time taken tells nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence

__all__ = ["BEARER_PREFIX", "Tokens", "offered_subprotocols", "presented_token", "read_token_file"]

BEARER_PREFIX = "bearer."


class Tokens:
    """The tokens one server takes.

    Args:
        token: the single shared token (no identity), or None.
        tokens: more tokens, each mapped to the identity it gives.
    """

    def __init__(self, token: str | None = None, tokens: Mapping[str, str] | None = None) -> None:
        entries: list[tuple[bytes, str | None]] = [] if token is None else [(token.encode(), None)]
        entries += [(secret.encode(), identity) for secret, identity in (tokens or {}).items()]
        self._entries = entries

    @property
    def required(self) -> bool:
        """True when a handshake must present a token."""
        return bool(self._entries)

    def identify(self, headers: Sequence[tuple[str, str]]) -> tuple[bool, str | None]:
        """(accepted, identity) for a handshake's headers: accepted when no token is required, or it
        presents one of them; the identity is that token's (None for the shared ``--token``)."""
        if not self._entries:
            return True, None
        presented = presented_token(headers)
        if presented is None:
            return False, None
        accepted, identity = False, None
        for secret, name in self._entries:
            if hmac.compare_digest(presented, secret) and not accepted:  # compared first: every time
                accepted, identity = True, name
        return accepted, identity


def presented_token(headers: Sequence[tuple[str, str]]) -> bytes | None:
    """The token a handshake presents, or None (none, two, or an ``Authorization`` that is not Bearer)."""
    values = [value for name, value in headers if name.lower() == "authorization"]
    if len(values) > 1:
        return None
    if values:
        scheme, _, token = values[0].strip().partition(" ")  # the scheme is case-insensitive (RFC 7235)
        return token.strip().encode() if scheme.lower() == "bearer" else None
    offered = offered_subprotocols(headers)
    tokens = [_unbase64(item[len(BEARER_PREFIX) :]) for item in offered if item.startswith(BEARER_PREFIX)]
    return tokens[0] if len(tokens) == 1 else None


def offered_subprotocols(headers: Sequence[tuple[str, str]]) -> list[str]:
    """The subprotocols a handshake offers (``Sec-WebSocket-Protocol``, comma-separated, repeatable)."""
    return [
        item.strip()
        for name, value in headers
        if name.lower() == "sec-websocket-protocol"
        for item in value.split(",")
        if item.strip()
    ]


def _unbase64(text: str) -> bytes:
    """base64url without padding, as browsers' ``btoa`` users write it; b"" when malformed."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        return b""


def read_token_file(text: str, origin: str = "the token file") -> dict[str, str]:
    """``--token-file``: one ``TOKEN,IDENTITY`` per line (blank lines and ``#`` comments skipped).

    ValueError naming the line for anything else: no comma, an empty token or identity, a token twice.
    """
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, comma, identity = (part.strip() for part in line.partition(","))
        if not comma or not token or not identity:
            raise ValueError(f"{origin}, line {number}: expected TOKEN,IDENTITY")
        if token in tokens:
            raise ValueError(f"{origin}, line {number}: this token is already on line {_line_of(text, token)}")
        tokens[token] = identity
    return tokens


def _line_of(text: str, token: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.strip().partition(",")[0].strip() == token)
