"""Byte links and the record channel (host/transport.py).

What these tests stop:

* a link that loses, reorders or merges bytes, over memory, ``loop://`` and
  a pty pair (the three links testers use);
* garbage on the line reaching the caller as an exception instead of being
  dropped and reported (``RecordChannel`` never raises ``FramingError``);
* a garbage flood holding ``receive`` past its timeout (S9);
* pyserial's exception types leaking to the CLI instead of one ``LinkError``;
* a reader thread that cannot be stopped, or a flood that grows memory.
"""

from __future__ import annotations

import doctest
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pumpguard.host.transport
from pumpguard.host.transport import (
    MEMORY_LINK_BUFFER,
    RECEIVE,
    SEND,
    LinkError,
    MemoryLink,
    RecordChannel,
    SerialLink,
    create_vnull,
)
from pumpguard.protocol import LocalProtocolError, encode_frame
from pumpguard.protocol.wire import MAX_RECORD_LEN

RECORDS = [b"\x03" + bytes(range(40)), b"\x01" + b"\x00" * 40, b"\x02\xff", bytes(MAX_RECORD_LEN)]

FrameLog = list[tuple[str, bytes | None, str]]


def read_exactly(link: SerialLink | MemoryLink, count: int, timeout: float = 5.0) -> bytes:
    """Read until ``count`` bytes arrived; fail (not hang) after ``timeout`` of silence."""
    data = b""
    while len(data) < count:
        chunk = link.read(timeout)
        assert chunk, f"link went silent after {len(data)} of {count} bytes"
        data += chunk
    return data


# --- MemoryLink -------------------------------------------------------------


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(pumpguard.host.transport, report=False).failed == 0


def test_memory_link_is_full_duplex() -> None:
    a, b = MemoryLink.pair()
    a.write(b"to b")
    b.write(b"to a")
    assert b.read(1.0) == b"to b"
    assert a.read(1.0) == b"to a"


def test_memory_link_read_times_out_empty() -> None:
    a, b = MemoryLink.pair()
    assert b.read(0.0) == b""
    assert b.read(0.01) == b""
    a.write(b"x")
    assert b.read(0.0) == b"x"


def test_memory_link_read_returns_everything_buffered_in_order() -> None:
    a, b = MemoryLink.pair()
    for index in range(100):
        a.write(bytes([index]))
    assert b.read(1.0) == bytes(range(100))


def test_memory_link_read_wakes_when_data_arrives() -> None:
    a, b = MemoryLink.pair()
    timer = threading.Timer(0.05, a.write, args=(b"late",))
    timer.start()
    try:
        assert b.read(10.0) == b"late"
    finally:
        timer.join()


def test_memory_link_close_wakes_a_blocked_reader() -> None:
    _, b = MemoryLink.pair()
    errors: list[str] = []

    def reader() -> None:
        try:
            b.read(30.0)
        except LinkError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    b.close()
    thread.join(10.0)
    assert not thread.is_alive()
    assert errors == ["memory link is closed"]


def test_memory_link_closed_end_refuses_io_and_peer_write_is_discarded() -> None:
    a, b = MemoryLink.pair()
    b.close()
    b.close()  # idempotent
    with pytest.raises(LinkError):
        b.write(b"x")
    with pytest.raises(LinkError):
        b.read(0.0)
    a.write(b"nobody listens")  # a cable with nobody at the other end
    assert a.read(0.0) == b""


def test_memory_link_fault_hooks_drop_duplicate_and_corrupt() -> None:
    seen: list[bytes] = []

    def record_and_duplicate(data: bytes) -> list[bytes]:
        seen.append(data)
        return [data, data]

    a, b = MemoryLink.pair(a_to_b=record_and_duplicate, b_to_a=lambda data: [])
    a.write(b"bolus")
    assert b.read(1.0) == b"bolusbolus"
    assert seen == [b"bolus"]
    b.write(b"dropped")
    assert a.read(0.0) == b""
    # Hooks can be swapped per direction at any time.
    a.on_transfer = lambda data: [bytes([data[0] ^ 0x01]) + data[1:]]
    a.write(b"\x02abc")
    assert b.read(1.0) == b"\x03abc"


def test_memory_link_buffer_is_bounded() -> None:
    a, b = MemoryLink.pair()
    a.write(bytes(MEMORY_LINK_BUFFER + 10))
    assert b.bytes_lost == 10
    assert len(b.read(0.0)) == MEMORY_LINK_BUFFER


# --- RecordChannel ----------------------------------------------------------


def channel_pair(log: FrameLog | None = None) -> tuple[RecordChannel, RecordChannel, MemoryLink]:
    a, b = MemoryLink.pair()

    def on_frame(direction: str, record: bytes | None, verdict: str) -> None:
        if log is not None:
            log.append((direction, record, verdict))

    return RecordChannel(a), RecordChannel(b, on_frame=on_frame), a


def test_records_round_trip_both_ways() -> None:
    a, b = MemoryLink.pair()
    left, right = RecordChannel(a), RecordChannel(b)
    for record in RECORDS:
        left.send(record)
        right.send(record[::-1])
    assert [right.receive(1.0) for _ in RECORDS] == RECORDS
    assert [left.receive(1.0) for _ in RECORDS] == [record[::-1] for record in RECORDS]
    assert right.receive(0.0) is None


def test_receive_times_out_with_none() -> None:
    _, right, _ = channel_pair()
    assert right.receive(0.0) is None
    assert right.receive(0.02) is None


def test_garbage_is_dropped_reported_and_never_raised() -> None:
    log: FrameLog = []
    _, right, raw = channel_pair(log)
    good = encode_frame(RECORDS[0])
    corrupted = bytearray(encode_frame(RECORDS[1]))
    corrupted[3] ^= 0x40
    raw.write(b"line noise\x00" + bytes(corrupted) + good + b"\x00\x00" + good[:5])
    assert right.receive(1.0) == RECORDS[0]
    assert right.receive(0.0) is None  # the trailing partial frame waits
    raw.write(good[5:])
    assert right.receive(1.0) == RECORDS[0]
    assert right.frames_dropped == 2
    drops = [entry for entry in log if entry[1] is None]
    assert [(direction, verdict.startswith("dropped: ")) for direction, _, verdict in drops] == [
        (RECEIVE, True),
        (RECEIVE, True),
    ]
    assert (RECEIVE, RECORDS[0], "received") in log


def test_records_survive_byte_by_byte_delivery() -> None:
    _, right, raw = channel_pair()
    for byte in encode_frame(RECORDS[0]) + encode_frame(RECORDS[3]):
        raw.write(bytes([byte]))
    assert right.receive(1.0) == RECORDS[0]
    assert right.receive(1.0) == RECORDS[3]


def test_send_reports_to_on_frame_and_refuses_bad_records() -> None:
    log: FrameLog = []
    a, _ = MemoryLink.pair()
    channel = RecordChannel(a, on_frame=lambda *entry: log.append(entry))
    channel.send(b"\x03abc")
    assert log == [(SEND, b"\x03abc", "sent")]
    with pytest.raises(LocalProtocolError):
        channel.send(b"")
    with pytest.raises(LocalProtocolError):
        channel.send(bytes(MAX_RECORD_LEN + 1))


def test_corrupting_link_drops_only_the_damaged_record() -> None:
    frames = 0

    def corrupt_second(data: bytes) -> list[bytes]:
        nonlocal frames
        frames += 1
        return [data[:2] + bytes([data[2] ^ 0xFF]) + data[3:]] if frames == 2 else [data]

    a, b = MemoryLink.pair(a_to_b=corrupt_second)
    left, right = RecordChannel(a), RecordChannel(b)
    for record in RECORDS[:3]:
        left.send(record)
    assert right.receive(1.0) == RECORDS[0]
    assert right.receive(1.0) == RECORDS[2]
    assert right.frames_dropped == 1


class GarbageFlood:
    """A link that never stops delivering bytes without a delimiter."""

    def __init__(self) -> None:
        self.reads = 0

    def write(self, data: bytes) -> None:
        raise AssertionError("not used")

    def read(self, timeout: float) -> bytes:
        self.reads += 1
        if self.reads > 1_000_000:
            raise AssertionError("receive() ignored its timeout")
        return b"\xaa" * 300  # longer than any frame: dropped at once

    def close(self) -> None:
        raise AssertionError("not used")


def test_garbage_flood_cannot_hold_receive_past_its_timeout() -> None:
    flood = GarbageFlood()
    channel = RecordChannel(flood)
    assert channel.receive(0.05) is None
    assert flood.reads >= 1
    assert channel.frames_dropped >= 1  # the oversized non-frame was refused


@settings(max_examples=100, deadline=None)
@given(
    noise=st.lists(st.binary(max_size=300), max_size=4),
    records=st.lists(st.binary(min_size=1, max_size=MAX_RECORD_LEN), min_size=1, max_size=4),
    cut=st.integers(min_value=1, max_value=64),
)
def test_records_after_noise_and_a_delimiter_always_arrive(
    noise: list[bytes], records: list[bytes], cut: int
) -> None:
    # Noise, then an idle delimiter to resynchronise, then frames, in
    # arbitrary chunks: every record arrives intact and nothing is raised.
    a, b = MemoryLink.pair()
    channel = RecordChannel(b)
    stream = b"".join(noise) + b"\x00" + b"".join(encode_frame(record) for record in records)
    for start in range(0, len(stream), cut):
        a.write(stream[start : start + cut])
    received = []
    while (record := channel.receive(0.0)) is not None:
        received.append(record)
    assert received[-len(records) :] == records


# --- SerialLink -------------------------------------------------------------


def test_serial_loop_url_round_trip_and_timeout() -> None:
    with SerialLink.open("loop://") as link:
        assert link.read(0.0) == b""
        assert link.read(0.01) == b""
        link.write(b"\x00abc\xff")
        assert read_exactly(link, 5) == b"\x00abc\xff"
        assert link.name == "loop://"


def test_record_channel_over_serial_loop() -> None:
    channel = RecordChannel(SerialLink.open("loop://"))
    try:
        for record in RECORDS:
            channel.send(record)
        assert [channel.receive(2.0) for _ in RECORDS] == RECORDS
    finally:
        channel.close()


def test_closed_serial_link_raises_link_error() -> None:
    link = SerialLink.open("loop://")
    link.close()
    link.close()  # idempotent
    with pytest.raises(LinkError, match="closed"):
        link.read(0.0)
    with pytest.raises(LinkError, match="closed"):
        link.write(b"x")


@pytest.mark.parametrize(
    ("port", "reason"),
    [
        ("nosuchscheme://x", "not known"),
        ("/nonexistent/pumpguard-port", "no such device"),
        ("socket://127.0.0.1:1", ""),
    ],
)
def test_unopenable_port_is_one_link_error(port: str, reason: str) -> None:
    with pytest.raises(LinkError) as caught:
        SerialLink.open(port)
    message = str(caught.value)
    assert message.startswith(f"cannot open port {port}: ")
    assert reason in message
    assert "\n" not in message
    assert caught.value.__cause__ is None  # no pyserial type chained to the CLI


# --- Virtual null-modem (pty pair) ------------------------------------------

needs_pty = pytest.mark.skipif(not hasattr(os, "openpty"), reason="platform has no ptys")


@pytest.fixture
def vnull() -> Iterator[tuple[str, str]]:
    path_a, path_b, closer = create_vnull()
    try:
        yield path_a, path_b
    finally:
        closer.close()


@needs_pty
def test_vnull_passes_bytes_both_ways_unchanged(vnull: tuple[str, str]) -> None:
    path_a, path_b = vnull
    assert path_a != path_b
    every_byte = bytes(range(256)) * 4  # raw: no echo, no CR/LF or ^C translation
    with SerialLink.open(path_a) as end_a, SerialLink.open(path_b) as end_b:
        end_a.write(every_byte)
        assert read_exactly(end_b, len(every_byte)) == every_byte
        end_b.write(b"\r\n\x03\x04\x00")
        assert read_exactly(end_a, 5) == b"\r\n\x03\x04\x00"


@needs_pty
def test_vnull_carries_records_and_bulk_without_loss(vnull: tuple[str, str]) -> None:
    path_a, path_b = vnull
    bulk = os.urandom(200_000)  # far more than a pty buffers: back-pressure, not loss
    with SerialLink.open(path_a) as end_a, SerialLink.open(path_b) as end_b:
        writer = threading.Thread(target=end_a.write, args=(bulk,))
        writer.start()
        assert read_exactly(end_b, len(bulk)) == bulk
        writer.join(10.0)
        left, right = RecordChannel(end_a), RecordChannel(end_b)
        for record in RECORDS:
            right.send(record)
        assert [left.receive(5.0) for _ in RECORDS] == RECORDS


@needs_pty
def test_vnull_port_is_exclusive(vnull: tuple[str, str]) -> None:
    path_a, _ = vnull
    with SerialLink.open(path_a), pytest.raises(LinkError, match="in use"):
        SerialLink.open(path_a)


@needs_pty
def test_port_vanishing_is_a_link_error() -> None:
    path_a, _, closer = create_vnull()
    link = SerialLink.open(path_a)
    try:
        closer.close()
        with pytest.raises(LinkError, match=f"port {path_a} vanished"):
            link.read(0.5)
    finally:
        link.close()
