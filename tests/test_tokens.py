"""tokens: which bearer tokens a server takes and the identity each gives, tested with headers in."""

from __future__ import annotations

import base64

import pytest

from synapse_cli.server.tokens import Tokens, read_token_file


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def test_no_token_configured_accepts_everyone_without_identity() -> None:
    """With no token, every handshake is accepted and has no identity."""
    assert Tokens().identify([]) == (True, None)
    assert Tokens().identify(bearer("anything")) == (True, None)


def test_each_token_gives_its_identity_and_the_shared_one_none() -> None:
    """A mapped token gives its identity; the single --token gives none; others are refused."""
    tokens = Tokens("shared", {"tok-a": "alice", "tok-b": "bob"})
    assert tokens.identify(bearer("tok-a")) == (True, "alice")
    assert tokens.identify(bearer("tok-b")) == (True, "bob")
    assert tokens.identify(bearer("shared")) == (True, None)
    assert tokens.identify(bearer("tok-c")) == (False, None)
    assert tokens.identify([]) == (False, None)


def test_the_token_may_come_in_the_subprotocol_list_but_only_once() -> None:
    """A browser's bearer.<base64url> subprotocol entry counts; two Authorization headers never do."""
    tokens = Tokens(None, {"tok-a": "alice"})
    encoded = base64.urlsafe_b64encode(b"tok-a").decode().rstrip("=")
    assert tokens.identify([("Sec-WebSocket-Protocol", f"synapse.v1, bearer.{encoded}")]) == (True, "alice")
    assert tokens.identify(bearer("tok-a") + bearer("tok-a")) == (False, None)
    assert tokens.identify([("authorization", "Basic tok-a")]) == (False, None)


def test_a_token_file_maps_tokens_to_identities() -> None:
    """TOKEN,IDENTITY per line; blank lines and # comments are skipped; spaces around the comma too."""
    text = "# who may call\n\ntok-a,alice\n  tok-b , bob  \ntok-c,alice\n"
    assert read_token_file(text) == {"tok-a": "alice", "tok-b": "bob", "tok-c": "alice"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("tok-a alice\n", "tokens.csv, line 1: expected TOKEN,IDENTITY"),
        ("tok-a,alice\n,bob\n", "tokens.csv, line 2: expected TOKEN,IDENTITY"),
        ("tok-a,\n", "tokens.csv, line 1: expected TOKEN,IDENTITY"),
        ("tok-a,alice\n#\ntok-a,bob\n", "tokens.csv, line 3: this token is already on line 1"),
    ],
)
def test_a_bad_token_file_names_the_line(text: str, message: str) -> None:
    """Anything but TOKEN,IDENTITY, or a token given twice, is a ValueError naming the line."""
    with pytest.raises(ValueError) as refused:
        read_token_file(text, "tokens.csv")
    assert str(refused.value) == message
