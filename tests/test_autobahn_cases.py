"""The Autobahn TestSuite's cases of sections 1-7 and 9, by name, against our server and our client.

Each case is the byte stream the Autobahn fuzzing client (to test a server) or fuzzing server (to test a
client) writes, a frame of ours for each frame of theirs; its timed waits become frames we can see the
answer to (a ping after the fragment that should fail fast). Each runs through the differential harness of
tests/test_codec_differential.py (a real server on 127.0.0.1, or our client against a raw server: what they
do must be what websockets does, save for the differences stated in frame_streams.Reference), and then its
outcome is asserted as Autobahn states it: the messages delivered, the pongs, the close code. Section 9's
sizes are scaled to the harness's limit (LIMIT bytes for the default --max-message-size of 1 MiB).
CONTRIBUTING.md ("The frame codec against the Autobahn cases") maps every case group to these tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RunningServer
from frame_streams import BINARY, CLOSE, CONT, LIMIT, PING, PONG, TEXT, Spec
from test_codec_differential import assert_client_agrees, assert_server_agrees, outcome
from test_codec_differential import limited_server as limited_server  # the module's server fixture, shared

KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"  # κόσμε, its ό U+1F79 (Autobahn's)
NORMAL = (1000).to_bytes(2, "big")


def close(code: int, reason: bytes = b"") -> Spec:
    return Spec(CLOSE, code.to_bytes(2, "big") + reason)


@dataclasses.dataclass(frozen=True)
class Case:
    """One Autobahn case: our frames for it, and what the endpoint under test does (the same on both sides
    unless ``client`` says otherwise)."""

    name: str
    frames: Callable[[], list[Spec]]
    messages: int  # messages handed on (answered, on the server)
    pongs: int
    close: int | None  # the code of the endpoint's close frame (None: a close frame without a code)
    chop: int | None = None  # bytes per write (Autobahn's "in chops of", "octet-wise")
    client: tuple[int, int | None] | None = None  # (messages, close) where the client differs (binary is fine there)


def text(payload: bytes | str, *, fin: bool = True, rsv: int = 0) -> Spec:
    return Spec(TEXT, payload.encode() if isinstance(payload, str) else payload, fin=fin, rsv=rsv)


def cont(payload: bytes | str, *, fin: bool = True) -> Spec:
    return Spec(CONT, payload.encode() if isinstance(payload, str) else payload, fin=fin)


def ping(payload: bytes = b"", **options: Any) -> Spec:
    return Spec(PING, payload, **options)


def octetwise(opcode: int, payload: bytes) -> list[Spec]:
    """One fragment per byte (Autobahn 6.2.3, 6.2.4, 6.3.2)."""
    pieces = [payload[n : n + 1] for n in range(len(payload))] or [b""]
    return [Spec(opcode if n == 0 else CONT, piece, fin=n == len(pieces) - 1) for n, piece in enumerate(pieces)]


def fragments(opcode: int, payload: bytes, size: int) -> list[Spec]:
    pieces = [payload[n : n + size] for n in range(0, len(payload), size)]
    return [Spec(opcode if n == 0 else CONT, piece, fin=n == len(pieces) - 1) for n, piece in enumerate(pieces)]


SIZES_1 = {"1": 0, "2": 125, "3": 126, "4": 127, "5": 128, "6": 65535, "7": 65536}

CASES = [
    # 1 Framing: text (1.1.x) and binary (1.2.x) messages of every length encoding; 1.x.8 in chops of 997 bytes
    *[Case(f"1.1.{n}", lambda size=size: [text(b"*" * size)], 1, 0, 1000) for n, size in SIZES_1.items()],
    Case("1.1.8", lambda: [text(b"*" * 65536)], 1, 0, 1000, chop=997),
    *[
        Case(f"1.2.{n}", lambda size=size: [Spec(BINARY, b"\xfe" * size)], 0, 0, 1003, client=(1, 1000))
        for n, size in SIZES_1.items()
    ],
    Case("1.2.8", lambda: [Spec(BINARY, b"\xfe" * 65536)], 0, 0, 1003, chop=997, client=(1, 1000)),
    # 2 Pings and pongs
    Case("2.1", lambda: [ping()], 0, 1, 1000),
    Case("2.2", lambda: [ping(b"Hello, world!")], 0, 1, 1000),
    Case("2.3", lambda: [ping(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")], 0, 1, 1000),
    Case("2.4", lambda: [ping(b"\xfe" * 125)], 0, 1, 1000),
    Case("2.5", lambda: [ping(b"\xfe" * 126)], 0, 0, 1002),
    Case("2.6", lambda: [ping(b"\xfe" * 125)], 0, 1, 1000, chop=1),
    Case("2.7", lambda: [Spec(PONG)], 0, 0, 1000),
    Case("2.8", lambda: [Spec(PONG, b"unsolicited pong payload")], 0, 0, 1000),
    Case("2.9", lambda: [Spec(PONG, b"unsolicited pong payload"), ping(b"ping payload")], 0, 1, 1000),
    Case("2.10", lambda: [ping(b"payload-%d" % n) for n in range(10)], 0, 10, 1000),
    Case("2.11", lambda: [ping(b"payload-%d" % n) for n in range(10)], 0, 10, 1000, chop=1),
    # 3 Reserved bits: the frames before the bad one are answered first
    Case("3.1", lambda: [text("Hello, world!", rsv=1)], 0, 0, 1002),
    Case("3.2", lambda: [text("small text"), text("small text", rsv=2)], 1, 0, 1002),
    Case("3.3", lambda: [text("small text"), text("small text", rsv=3), ping()], 1, 0, 1002),
    Case("3.4", lambda: [text("small text"), text("small text", rsv=4), ping()], 1, 0, 1002, chop=1),
    Case("3.5", lambda: [Spec(BINARY, b"\xff" * 8, rsv=5)], 0, 0, 1002),
    Case("3.6", lambda: [ping(b"ping payload", rsv=6)], 0, 0, 1002),
    Case("3.7", lambda: [Spec(CLOSE, NORMAL, rsv=7)], 0, 0, 1002),
    # 4 Opcodes: reserved non-control (4.1.x: 3-7) and control (4.2.x: 11-15) opcodes
    *[Case(f"4.{group}.1", lambda op=first: [Spec(op)], 0, 0, 1002) for group, first in ((1, 3), (2, 11))],
    *[
        Case(f"4.{group}.2", lambda op=first + 1: [Spec(op, b"reserved opcode payload")], 0, 0, 1002)
        for group, first in ((1, 3), (2, 11))
    ],
    *[
        Case(f"4.{group}.3", lambda op=first + 2: [text("Hello, world!"), Spec(op), ping()], 1, 0, 1002)
        for group, first in ((1, 3), (2, 11))
    ],
    *[
        Case(f"4.{group}.4", lambda op=first + 3: [text("Hello, world!"), Spec(op, b"x"), ping()], 1, 0, 1002)
        for group, first in ((1, 3), (2, 11))
    ],
    *[
        Case(f"4.{group}.5", lambda op=first + 4: [text("Hello, world!"), Spec(op, b"x"), ping()], 1, 0, 1002, chop=1)
        for group, first in ((1, 3), (2, 11))
    ],
    # 5 Fragmentation
    Case("5.1", lambda: [ping(b"fragment1", fin=False), cont("fragment2")], 0, 0, 1002),
    Case("5.2", lambda: [Spec(PONG, b"fragment1", fin=False), cont("fragment2")], 0, 0, 1002),
    Case("5.3", lambda: [text("fragment1", fin=False), cont("fragment2")], 1, 0, 1000),
    Case("5.4", lambda: [text("fragment1", fin=False), cont("fragment2")], 1, 0, 1000, chop=7),
    Case("5.5", lambda: [text("fragment1", fin=False), cont("fragment2")], 1, 0, 1000, chop=1),
    Case("5.6", lambda: [text("fragment1", fin=False), ping(b"ping"), cont("fragment2")], 1, 1, 1000),
    Case("5.7", lambda: [text("fragment1", fin=False), ping(b"ping"), cont("fragment2")], 1, 1, 1000, chop=7),
    Case("5.8", lambda: [text("fragment1", fin=False), ping(b"ping"), cont("fragment2")], 1, 1, 1000, chop=1),
    Case("5.9", lambda: [cont("non-continuation payload"), text("Hello, world!")], 0, 0, 1002),
    Case("5.10", lambda: [cont("non-continuation payload"), text("Hello, world!")], 0, 0, 1002, chop=7),
    Case("5.11", lambda: [cont("non-continuation payload"), text("Hello, world!")], 0, 0, 1002, chop=1),
    Case("5.12", lambda: [cont("non-continuation payload", fin=False), text("Hello, world!")], 0, 0, 1002),
    Case("5.13", lambda: [cont("non-continuation payload", fin=False), text("Hello, world!")], 0, 0, 1002, chop=7),
    Case("5.14", lambda: [cont("non-continuation payload", fin=False), text("Hello, world!")], 0, 0, 1002, chop=1),
    Case(
        "5.15",
        lambda: [text("fragment1", fin=False), cont("fragment2"), cont("fragment3", fin=False), text("fragment4")],
        1,
        0,
        1002,
    ),
    Case("5.16", lambda: [cont("fragment1", fin=False), cont("fragment2"), text("fragment3")] * 2, 0, 0, 1002),
    Case("5.17", lambda: [cont("fragment1"), cont("fragment2"), text("fragment3")] * 2, 0, 0, 1002),
    Case("5.18", lambda: [text("fragment1", fin=False), text("fragment2")], 0, 0, 1002),
    *[
        Case(
            name,
            lambda: [
                text("fragment1", fin=False),
                cont("fragment2", fin=False),
                ping(b"pongme 1!"),
                cont("fragment3", fin=False),
                cont("fragment4", fin=False),
                ping(b"pongme 2!"),
                cont("fragment5"),
            ],
            1,
            2,
            1000,
            chop=chop,
        )
        for name, chop in (("5.19", None), ("5.20", 1))
    ],
    # 6.1-6.4 UTF-8 in fragments (6.5-6.23: test_autobahn_utf8_sequences below)
    Case("6.1.1", lambda: [text(b"")], 1, 0, 1000),
    Case("6.1.2", lambda: [text(b"", fin=False), cont(b"", fin=False), cont(b"")], 1, 0, 1000),
    Case("6.1.3", lambda: [text(b"", fin=False), cont("middle frame payload", fin=False), cont(b"")], 1, 0, 1000),
    Case("6.2.1", lambda: [text("Hello-µ@ßöäüàá-UTF-8!!")], 1, 0, 1000),
    Case("6.2.2", lambda: [text("Hello-µ@ßöäüàá-", fin=False), cont("UTF-8!!")], 1, 0, 1000),
    Case("6.2.3", lambda: octetwise(TEXT, "Hello-µ@ßöäüàá-UTF-8!!".encode()), 1, 0, 1000),
    Case("6.2.4", lambda: octetwise(TEXT, KOSME), 1, 0, 1000),
    # the client hands a whole unfragmented text frame to on_text before checking it (on_text refuses it: its
    # JSON decoder checks UTF-8), so on_text has seen one message when the client fails with 1007
    Case("6.3.1", lambda: [text(KOSME + b"\xed\xa0\x80edited")], 0, 0, 1007, client=(1, 1007)),
    Case("6.3.2", lambda: octetwise(TEXT, KOSME + b"\xed\xa0\x80edited"), 0, 0, 1007),
    # 6.4.x fail fast: a ping after each fragment shows when the connection failed (no pong after the bad one)
    Case(
        "6.4.1",
        lambda: [text(KOSME, fin=False), ping(b"A"), cont(b"\xf4\x90\x80\x80", fin=False), ping(b"B"), cont("edited")],
        0,
        1,
        1007,
    ),
    Case(
        "6.4.2",
        lambda: [
            text(KOSME + b"\xf4", fin=False),
            ping(b"A"),
            cont(b"\x90", fin=False),
            ping(b"B"),
            cont(b"\x80\x80edited"),
        ],
        0,
        1,
        1007,
    ),
    # 6.4.3 and 6.4.4: one frame whose bad bytes arrive first, in chops: refused once the frame is complete
    Case("6.4.3", lambda: [text(KOSME + b"\xf4\x90\x80\x80edited"), ping(b"B")], 0, 0, 1007, chop=4, client=(1, 1007)),
    Case("6.4.4", lambda: [text(KOSME + b"\xf4\x90\x80\x80edited"), ping(b"B")], 0, 0, 1007, chop=1, client=(1, 1007)),
    # 7 Close handling
    Case("7.1.1", lambda: [text("Hello World!"), close(1000)], 1, 0, 1000),
    Case("7.1.2", lambda: [close(1000), close(1000)], 0, 0, 1000),
    Case("7.1.3", lambda: [close(1000), ping(b"Hello World!")], 0, 0, 1000),
    Case("7.1.4", lambda: [close(1000), text("Hello World!")], 0, 0, 1000),
    # websockets' rule, which both our endpoints follow: a close frame inside a fragmented message is a
    # protocol error (Autobahn expects the echoed 1000; RFC 6455 only says endpoints "typically" echo)
    Case("7.1.5", lambda: [text("fragment1", fin=False), close(1000), cont("fragment2")], 0, 0, 1002),
    Case("7.1.6", lambda: [text(b"BAsd7&jh23" * 6_500), close(1000), ping(b"Hello World!")], 1, 0, 1000),
    Case("7.3.1", lambda: [Spec(CLOSE)], 0, 0, None),
    Case("7.3.2", lambda: [Spec(CLOSE, b"\x03")], 0, 0, 1002),
    Case("7.3.3", lambda: [close(1000)], 0, 0, 1000),
    Case("7.3.4", lambda: [close(1000, b"Hello World!")], 0, 0, 1000),
    Case("7.3.5", lambda: [close(1000, b"*" * 123)], 0, 0, 1000),
    Case("7.3.6", lambda: [close(1000, b"*" * 124)], 0, 0, 1002),
    Case("7.5.1", lambda: [close(1000, KOSME + b"\xed\xa0\x80edited")], 0, 0, 1007),
    *[
        Case(f"7.7.{n}", lambda code=code: [close(code)], 0, 0, code)
        for n, code in enumerate((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999), 1)
    ],
    *[
        Case(f"7.9.{n}", lambda code=code: [close(code)], 0, 0, 1002)
        for n, code in enumerate((0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999), 1)
    ],
    Case("7.13.1", lambda: [close(5000)], 0, 0, 1002),
    Case("7.13.2", lambda: [close(65535)], 0, 0, 1002),
    # 9 Limits and performance, scaled: LIMIT stands for --max-message-size (default 1 MiB; Autobahn goes to 16 MiB)
    Case("9.1.x-at-limit", lambda: [text(b"*" * LIMIT)], 1, 0, 1000),
    Case("9.1.x-over-limit", lambda: [Spec(TEXT, announced=LIMIT + 1)], 0, 0, 1009),  # refused on the header alone
    Case("9.2.x-at-limit", lambda: [Spec(BINARY, b"\xfe" * LIMIT)], 0, 0, 1003, client=(1, 1000)),
    Case("9.2.x-over-limit", lambda: [Spec(BINARY, announced=2**24)], 0, 0, 1009),
    # 9.3.x: fragments of 64 bytes make more than MAX_FRAGMENTS (1,024) of them: the server refuses with 1009
    # (bounded work per message); the client, like websockets, takes any number within max_size
    Case("9.3.x-64-byte-fragments", lambda: fragments(TEXT, b"*" * LIMIT, 64), 0, 0, 1009, client=(1, 1000)),
    Case("9.3.x-4-KiB-fragments", lambda: fragments(TEXT, b"*" * LIMIT, 4096), 1, 0, 1000),
    Case("9.3.x-over-limit", lambda: fragments(TEXT, b"*" * (LIMIT + 1), 40_000), 0, 0, 1009),
    Case("9.4.x", lambda: fragments(BINARY, b"\xfe" * LIMIT, 4096), 0, 0, 1003, client=(1, 1000)),
    Case("9.5.x", lambda: [text(b"*" * LIMIT)], 1, 0, 1000, chop=2048),
    Case("9.6.x", lambda: [Spec(BINARY, b"\xfe" * LIMIT)], 0, 0, 1003, chop=2048, client=(1, 1000)),
    Case("9.7.x", lambda: [text(b"*" * size) for size in range(1000)], 1000, 0, 1000),
    Case("9.8.x", lambda: [Spec(BINARY, b"\xfe" * size) for size in range(1000)], 0, 0, 1003, client=(1000, 1000)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_autobahn_case_on_the_server(limited_server: RunningServer, case: Case) -> None:
    """Each Autobahn case of sections 1-7 and 9 written to a real server: websockets' outcome (save for our
    documented differences), and Autobahn's: messages answered, pongs, close code."""
    output = assert_server_agrees(limited_server, case.frames(), chop=case.chop)
    assert outcome(output) == (case.messages, case.pongs, case.close)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_autobahn_case_on_the_client(case: Case) -> None:
    """Each case written by a raw server to our client: websockets' outcome, and Autobahn's: messages handed
    to on_text, pongs, close code."""
    frames = [dataclasses.replace(spec, masked=False) for spec in case.frames()]
    seen, sent = assert_client_agrees(frames, chop=case.chop)
    messages, code = case.client or (case.messages, case.close)
    _, pongs, close = outcome(sent)
    assert (len(seen), pongs, close) == (messages, case.pongs, code)


# 6.5-6.23: the UTF-8 decoder stress test (Markus Kuhn's UTF-8-test.txt, as Autobahn groups it): each
# sequence (True: valid UTF-8) sent as one text frame and as one fragment per byte.
KOSME_PREFIXES = [(size in (2, 5, 7, 9, 11), KOSME[:size]) for size in range(1, len(KOSME) + 1)]
MISSING_LAST = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80", b"\xfc\x80\x80\x80\x80"]
MISSING_LAST += [b"\xdf", b"\xef\xbf", b"\xf7\xbf\xbf", b"\xfb\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf"]
HIGH, LOW = [b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf"], [b"\xed\xb0\x80", b"\xed\xbf\xbf"]
NONCHARACTERS = [b"\xef\xbf\xbe", b"\xef\xbf\xbf"] + [
    first + second + b"\xbf" + last
    for first in (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
    for second in (b"\x8f", b"\x9f", b"\xaf", b"\xbf")
    for last in (b"\xbe", b"\xbf")
    if (first != b"\xf4" or second == b"\x8f") and not (first == b"\xf0" and second == b"\x8f")  # > U+10FFFF, overlong
]
UTF8_GROUPS: dict[str, list[tuple[bool, bytes]]] = {
    "6.5 valid sequences": [
        (True, b"hello\x24world"),
        (True, b"hello\xc2\xa2world"),
        (True, b"hello\xe2\x82\xacworld"),
        (True, b"hello\xf0\xa4\xad\xa2world"),
        (True, KOSME),
    ],
    "6.6 prefixes of a valid string": KOSME_PREFIXES,
    "6.7 first sequence of each length": [
        (True, s) for s in (b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80")
    ],
    "6.8 first 5- and 6-byte sequences": [(False, b"\xf8\x88\x80\x80\x80"), (False, b"\xfc\x84\x80\x80\x80\x80")],
    "6.9 last sequence of each length": [
        (True, s) for s in (b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf")
    ],
    "6.10 last 4-, 5- and 6-byte sequences": [
        (False, s) for s in (b"\xf7\xbf\xbf\xbf", b"\xfb\xbf\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf\xbf")
    ],
    "6.11 other boundaries": [
        *[(True, s) for s in (b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd", b"\xf4\x8f\xbf\xbf")],
        (False, b"\xf4\x90\x80\x80"),
    ],
    "6.12 unexpected continuation bytes": [
        *[(False, (b"\x80\xbf" * 3)[:size]) for size in range(1, 7)],
        (False, b"\xbf"),
        (False, bytes(range(0x80, 0xBF))),
    ],
    "6.13 lonely start bytes": [
        (False, b"".join(bytes((byte, 0x20)) for byte in range(low, high)))
        for low, high in ((0xC0, 0xDF), (0xE0, 0xEF), (0xF0, 0xF7), (0xF8, 0xFB), (0xFC, 0xFD))
    ],
    "6.14 last continuation byte missing": [(False, s) for s in MISSING_LAST],
    "6.15 incomplete sequences one after another": [(False, b"".join(MISSING_LAST))],
    "6.16 impossible bytes": [(False, s) for s in (b"\xfe", b"\xff", b"\xfe\xfe\xff\xff")],
    "6.17 overlong slash": [
        (False, s)
        for s in (
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xf8\x80\x80\x80\xaf",
            b"\xfc\x80\x80\x80\x80\xaf",
        )
    ],
    "6.18 maximum overlong sequences": [
        (False, s)
        for s in (
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xf8\x87\xbf\xbf\xbf",
            b"\xfc\x83\xbf\xbf\xbf\xbf",
        )
    ],
    "6.19 overlong NUL": [
        (False, s)
        for s in (
            b"\xc0\x80",
            b"\xe0\x80\x80",
            b"\xf0\x80\x80\x80",
            b"\xf8\x80\x80\x80\x80",
            b"\xfc\x80\x80\x80\x80\x80",
        )
    ],
    "6.20 single surrogates": [(False, s) for s in [*HIGH, b"\xed\xb0\x80", b"\xed\xbe\x80", b"\xed\xbf\xbf"]],
    "6.21 paired surrogates": [(False, high + low) for high in HIGH for low in LOW],
    "6.22 noncharacters (valid)": [(True, s) for s in NONCHARACTERS],
    "6.23 specials (valid)": [(True, bytes((0xEF, 0xBF, last))) for last in range(0xB9, 0xC0)],
}


@pytest.mark.parametrize("group", UTF8_GROUPS, ids=[name.split()[0] for name in UTF8_GROUPS])
def test_autobahn_utf8_sequences(limited_server: RunningServer, group: str) -> None:
    """Autobahn 6.5-6.23 on the server, each sequence whole and byte by byte: valid ones are answered (both
    ways on one connection), each invalid one closes its connection with 1007, as websockets would."""
    sequences = UTF8_GROUPS[group]
    valid = [payload for ok, payload in sequences if ok]
    if valid:
        frames = [spec for payload in valid for spec in [text(payload), *octetwise(TEXT, payload)]]
        assert outcome(assert_server_agrees(limited_server, frames)) == (2 * len(valid), 0, 1000)
    for payload in (payload for ok, payload in sequences if not ok):
        for frames in ([text(payload)], octetwise(TEXT, payload)):
            assert outcome(assert_server_agrees(limited_server, frames)) == (0, 0, 1007)
