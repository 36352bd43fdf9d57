"""frames: the RFC 6455 frame codec, bytes in and frames out (no socket)."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from synapse_cli.core.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
    encode_frame,
    frame_header,
    mask_payload,
    text_header,
)


def test_masking_round_trips_for_every_length() -> None:
    """mask_payload is its own inverse, for lengths that are and are not multiples of 4."""
    key = b"\x01\x02\x03\xff"
    for size in range(0, 70):
        data = os.urandom(size)
        assert mask_payload(mask_payload(data, key), key) == data
    assert mask_payload(b"\x00\x00\x00\x00\x00", key) == b"\x01\x02\x03\xff\x01"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_client_frames_read_back_on_the_server_side(size: int) -> None:
    """A masked client frame of any length-encoding reads back whole, with its payload unmasked."""
    payload = os.urandom(size)
    reader = FrameReader(masked=True, max_size=2**20)
    [frame] = reader.feed(encode_frame(OP_TEXT, payload, mask=True))
    assert (frame.fin, frame.opcode, frame.payload, frame.size) == (True, OP_TEXT, payload, size)


def test_websockets_parses_our_frames_exactly() -> None:
    """An independent implementation (websockets' sans-I/O protocols) reads the frames we build."""
    for mask, peer in (
        (True, ServerProtocol(state=State.OPEN)),
        (False, ClientProtocol(parse_uri("ws://x/"), state=State.OPEN)),
    ):
        peer.receive_data(encode_frame(OP_TEXT, "héllo ✓".encode(), mask=mask) + encode_frame(OP_PING, b"p", mask=mask))
        frames = peer.events_received()
        assert [(f.opcode, f.data) for f in frames] == [(Opcode.TEXT, "héllo ✓".encode()), (Opcode.PING, b"p")]  # type: ignore[union-attr]


def test_frames_split_anywhere_are_reassembled() -> None:
    """Fed one byte at a time, three frames come out whole and in order; nothing is held after."""
    data = b"".join(
        encode_frame(op, body, mask=True) for op, body in [(OP_TEXT, b"a" * 300), (OP_PING, b""), (1, b"z")]
    )
    reader = FrameReader(masked=True, max_size=1000)
    frames = [frame for byte in data for frame in reader.feed(bytes([byte]))]
    assert [(f.opcode, f.payload) for f in frames] == [(OP_TEXT, b"a" * 300), (OP_PING, b""), (OP_TEXT, b"z")]
    assert reader.buffered == 0


def test_raw_is_the_frame_as_received() -> None:
    """raw holds the whole frame (header, key, masked payload) to hand on unchanged."""
    data = encode_frame(OP_CONTINUATION, b"xyz", fin=False, mask=True)
    [frame] = FrameReader(masked=True, max_size=10).feed(data + data[:3])
    assert frame.raw == data and not frame.fin and frame.opcode == OP_CONTINUATION


def test_oversized_frame_fails_before_its_payload_arrives() -> None:
    """A header announcing 2^63 bytes fails with 1009 at once: nothing is buffered for it."""
    header = bytes((0x81, 0xFF)) + (2**63 - 1).to_bytes(8, "big") + b"mask"
    with pytest.raises(FrameError) as caught:
        FrameReader(masked=True, max_size=2**20).feed(header)
    assert caught.value.code == 1009


@pytest.mark.parametrize(
    ("data", "masked", "code"),
    [
        (encode_frame(OP_TEXT, b"x"), True, 1002),  # a client frame without a mask
        (encode_frame(OP_TEXT, b"x", mask=True), False, 1002),  # a server frame with one
        (bytes((0xC1, 0x80)) + b"mask", True, 1002),  # RSV1 with no extension
        (bytes((0x83, 0x80)) + b"mask", True, 1002),  # reserved opcode 3
        (encode_frame(OP_PING, b"p" * 126, mask=True), True, 1002),  # control frame over 125 bytes
        (encode_frame(OP_CLOSE, b"", fin=False, mask=True), True, 1002),  # fragmented control frame
    ],
    # names, not the bytes: masked frames hold a random key, and pytest-xdist's workers must collect the same ids
    ids=["unmasked", "masked-to-a-client", "rsv1", "opcode-3", "long-ping", "fragmented-close"],
)
def test_framing_violations_fail_with_their_close_code(data: bytes, masked: bool, code: int) -> None:
    """Each violation of RFC 6455 §5 raises FrameError with the code to close with."""
    with pytest.raises(FrameError) as caught:
        FrameReader(masked=masked, max_size=2**20).feed(data)
    assert caught.value.code == code


def test_binary_frames_are_framed_like_any_other() -> None:
    """The codec frames binary data; refusing it is the connection's decision, not the codec's."""
    [frame] = FrameReader(masked=False, max_size=10).feed(encode_frame(OP_BINARY, b"\x00\x01"))
    assert (frame.opcode, frame.payload) == (OP_BINARY, b"\x00\x01")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_text_header_is_the_general_header_of_a_text_frame(size: int) -> None:
    """The precomputed headers of short replies are exactly what frame_header builds."""
    assert text_header(size) == frame_header(OP_TEXT, size)


def test_a_read_of_many_frames_unmasks_each_with_its_own_key() -> None:
    """One read holding frames of every length encoding, each masked with its own key, reads back exactly."""
    payloads = [os.urandom(size) for size in (0, 1, 3, 4, 5, 125, 126, 127, 1000, 65536, 2)]
    data = b"".join(encode_frame(OP_TEXT, payload, mask=True) for payload in payloads)
    frames = FrameReader(masked=True, max_size=2**20).feed(data)
    assert [frame.payload for frame in frames] == payloads
    assert b"".join(frame.raw for frame in frames) == data


@settings(max_examples=100, deadline=None)
@given(
    bodies=st.lists(
        st.tuples(
            st.sampled_from([OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_PING, OP_CLOSE]),
            st.binary(max_size=300) | st.binary(min_size=65_536, max_size=66_000),
            st.booleans(),
        ),
        max_size=12,
    ),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=8),
)
def test_any_frames_cut_anywhere_read_back_exactly(
    bodies: list[tuple[int, bytes, bool]], masked: bool, cuts: list[int]
) -> None:
    """Frames of every opcode and length encoding, in reads cut at arbitrary points, come out as sent."""
    sent = [(op, body[:125] if op >= OP_CLOSE else body, fin or op >= OP_CLOSE) for op, body, fin in bodies]
    data = b"".join(encode_frame(op, body, fin=fin, mask=masked) for op, body, fin in sent)
    reader = FrameReader(masked=masked, max_size=2**20)
    points = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    frames = [frame for a, b in itertools.pairwise(points) for frame in reader.feed(data[a:b])]
    assert [(f.opcode, f.payload, f.fin) for f in frames] == sent
    assert b"".join(f.raw for f in frames) == data
    assert reader.buffered == 0


def test_frames_before_a_violation_come_with_its_error() -> None:
    """A bad frame after good ones in the same read: the error carries the good ones, to be handled first."""
    good = [encode_frame(OP_TEXT, b"%d" % n, mask=True) for n in range(3)]
    reader = FrameReader(masked=True, max_size=2**20)
    assert reader.feed(good[0][:3]) == []  # the first frame arrives in two reads
    with pytest.raises(FrameError) as caught:
        reader.feed(good[0][3:] + good[1] + good[2] + bytes((0x83, 0x80)) + b"mask" + good[0])
    assert caught.value.code == 1002
    assert [frame.payload for frame in caught.value.frames] == [b"0", b"1", b"2"]
    assert reader.buffered == 0


def test_missing_says_how_much_of_a_large_frame_is_still_to_come() -> None:
    """Once a frame's header is in, ``missing`` is what its payload still needs; 0 between frames."""
    data = encode_frame(OP_TEXT, b"x" * 100_000, mask=True)
    reader = FrameReader(masked=True, max_size=2**20)
    reader.feed(data[:1])
    assert reader.missing == 0  # not even the length yet
    reader.feed(data[1:5000])
    assert reader.missing == len(data) - 5000
    [frame] = reader.feed(data[5000:])
    assert (reader.missing, frame.size) == (0, 100_000)
