"""The capture format of ``pumpctl link tap`` (host/capture.py).

A capture is a classic little-endian libpcap file, link type 147
(LINKTYPE_USER0), one packet per link frame (SPEC §3: the encoded frame with
its 0x00 delimiter), preceded by a one-byte direction pseudo-header.

What these tests stop:

* a file that only our own reader understands: :func:`parse_pcap` below is a
  second, independent reader written from the libpcap file-format
  description (tcpdump.org "pcap-savefile"), and the bytes of a small
  capture are pinned exactly;
* silent acceptance of a damaged or foreign file: every truncation point of
  a real capture, every header field out of range, and other pcap flavours
  are refused with :class:`CaptureError` naming what is wrong -- never a
  partial capture, never another exception type;
* lost or interleaved packets when both tap threads write at once.
"""

from __future__ import annotations

import doctest
import io
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pumpguard.host.capture
import pumpguard.host.tap
from pumpguard.host.capture import (
    LINKTYPE_USER0,
    MAX_CAPTURED_FRAME,
    CapturedFrame,
    CaptureError,
    CaptureWriter,
    Direction,
    iter_capture,
    read_capture,
    write_capture,
)
from pumpguard.protocol import encode_frame

# --- an independent reader ----------------------------------------------------------


def parse_pcap(data: bytes) -> tuple[dict[str, int], list[tuple[int, int, bytes]]]:
    """Minimal classic-pcap reader from the file-format description, not from our module.

    Returns the global header fields and ``(ts_sec, ts_usec, data)`` per packet.
    """
    magic, major, minor, zone, sigfigs, snaplen, network = struct.unpack_from("<IHHiIII", data, 0)
    header = {
        "magic": magic,
        "major": major,
        "minor": minor,
        "zone": zone,
        "sigfigs": sigfigs,
        "snaplen": snaplen,
        "network": network,
    }
    packets = []
    offset = 24
    while offset < len(data):
        ts_sec, ts_usec, incl, orig = struct.unpack_from("<IIII", data, offset)
        assert incl == orig
        offset += 16
        packets.append((ts_sec, ts_usec, data[offset : offset + incl]))
        offset += incl
    assert offset == len(data)
    return header, packets


FRAMES = [
    CapturedFrame(1_700_000_000.25, Direction.A_TO_B, encode_frame(b"\x01" + bytes(40))),
    CapturedFrame(1_700_000_000.5, Direction.B_TO_A, encode_frame(b"\x02" + bytes(range(40)))),
    CapturedFrame(1_700_000_001.000001, Direction.A_TO_B, b"\x00"),  # idle delimiter
    CapturedFrame(1_700_000_002.0, Direction.B_TO_A, b"garbage without delimiter"),
    CapturedFrame(1_700_000_003.0, Direction.A_TO_B, encode_frame(bytes(256))),
    CapturedFrame(1_700_000_004.0, Direction.A_TO_B, bytes([7]) * MAX_CAPTURED_FRAME),
]


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(pumpguard.host.capture, report=False).failed == 0
    assert doctest.testmod(pumpguard.host.tap, report=False).failed == 0


def test_round_trip_keeps_every_frame_direction_and_microsecond_time(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    assert write_capture(path, FRAMES) == len(FRAMES)
    read = read_capture(path)
    assert [(f.direction, f.frame) for f in read] == [(f.direction, f.frame) for f in FRAMES]
    for got, sent in zip(read, FRAMES, strict=True):
        assert got.time == pytest.approx(sent.time, abs=1e-6)


def test_an_independent_reader_sees_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_capture(path, FRAMES)
    raw = path.read_bytes()
    assert raw[:4] == bytes.fromhex("d4c3b2a1")  # 0xa1b2c3d4 little-endian
    header, packets = parse_pcap(raw)
    assert header == {
        "magic": 0xA1B2C3D4,
        "major": 2,
        "minor": 4,
        "zone": 0,
        "sigfigs": 0,
        "snaplen": 65535,
        "network": 147,
    }
    assert LINKTYPE_USER0 == 147
    assert len(packets) == len(FRAMES)
    for (ts_sec, ts_usec, data), frame in zip(packets, FRAMES, strict=True):
        assert data[0] == frame.direction.value
        assert data[1:] == frame.frame
        assert ts_sec + ts_usec / 1e6 == pytest.approx(frame.time, abs=1e-6)


def test_bytes_of_a_small_capture_are_pinned(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_capture(
        path,
        [
            CapturedFrame(1.5, Direction.A_TO_B, b"\x02\x41\x00"),
            CapturedFrame(2.0, Direction.B_TO_A, b"\x00"),
        ],
    )
    assert path.read_bytes() == bytes.fromhex(
        "d4c3b2a1" "0200" "0400" "00000000" "00000000" "ffff0000" "93000000"
        "01000000" "20a10700" "04000000" "04000000" "00" "024100"
        "02000000" "00000000" "02000000" "02000000" "01" "00"
    )  # fmt: skip


def test_microseconds_round_into_the_next_second(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_capture(path, [CapturedFrame(9.9999996, Direction.A_TO_B, b"\x00")])
    _, packets = parse_pcap(path.read_bytes())
    assert packets[0][:2] == (10, 0)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_opens_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_capture(path, FRAMES[:3])
    out = subprocess.run(  # noqa: S603 -- fixed arguments, our own file
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out == [str(1 + len(f.frame)) for f in FRAMES[:3]]


# --- the writer ---------------------------------------------------------------------


def test_each_packet_is_on_disk_before_the_writer_closes(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    with CaptureWriter(path) as writer:
        writer.write(FRAMES[0])
        assert [f.frame for f in read_capture(path)] == [FRAMES[0].frame]
        writer.write(FRAMES[1])
        assert len(read_capture(path)) == 2
        assert writer.frames_written == 2
    with pytest.raises(CaptureError, match="closed"):
        writer.write(FRAMES[0])
    writer.close()  # idempotent


def test_two_threads_writing_at_once_lose_and_tear_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    per_thread = 400

    with CaptureWriter(path) as writer:

        def write(direction: Direction) -> None:
            for i in range(per_thread):
                writer.write(CapturedFrame(1.0 + i, direction, bytes([direction + 1]) * (i + 1)))

        threads = [threading.Thread(target=write, args=(d,)) for d in Direction]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    frames = read_capture(path)
    for direction in Direction:
        mine = [f.frame for f in frames if f.direction is direction]
        assert mine == [bytes([direction + 1]) * (i + 1) for i in range(per_thread)]


def test_a_capture_that_cannot_be_created_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot write capture"):
        CaptureWriter(tmp_path / "missing" / "c.pcap")
    with pytest.raises(CaptureError, match="cannot read capture"):
        read_capture(tmp_path / "absent.pcap")


@pytest.mark.parametrize(
    ("time", "direction", "frame"),
    [
        (1.0, Direction.A_TO_B, b""),
        (1.0, Direction.A_TO_B, bytes(MAX_CAPTURED_FRAME + 1)),
        (-1.0, Direction.A_TO_B, b"\x00"),
        (float("nan"), Direction.A_TO_B, b"\x00"),
        (2.0**32, Direction.A_TO_B, b"\x00"),
        (1.0, 0, b"\x00"),
    ],
)
def test_frames_pcap_cannot_hold_are_refused_before_writing(
    time: float, direction: Direction, frame: bytes
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- the message varies by field
        CapturedFrame(time, direction, frame)


# --- strict reading -----------------------------------------------------------------


def _valid(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.pcap"
    write_capture(path, FRAMES[:4])
    return path.read_bytes()


def _read(data: bytes) -> list[CapturedFrame]:
    return list(iter_capture(io.BytesIO(data), "test.pcap"))


def test_every_truncation_is_refused_or_a_whole_packet_prefix(tmp_path: Path) -> None:
    data = _valid(tmp_path)
    _, packets = parse_pcap(data)
    boundaries = {24}
    offset = 24
    for _, _, payload in packets:
        offset += 16 + len(payload)
        boundaries.add(offset)
    for cut in range(len(data)):
        if cut in boundaries:
            assert len(_read(data[:cut])) == sorted(boundaries).index(cut)
        else:
            with pytest.raises(CaptureError, match=r"truncated|not a pcap"):
                _read(data[:cut])


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


FIRST = 24  # the first record header


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (0, "<I", 0x12345678, "not a pcap file"),
        (0, ">I", 0xA1B2C3D4, "big-endian"),
        (0, "<I", 0xA1B23C4D, "nanosecond"),
        (0, "<I", 0x0A0D0D0A, "pcapng"),
        (4, "<H", 1, "version 1.4"),
        (6, "<H", 3, "version 2.3"),
        (20, "<I", 1, "link type 1"),
        (16, "<I", 1, "snap length 1"),
        (16, "<I", 65536, "snap length 65536"),
        (FIRST + 4, "<I", 1_000_000, "microseconds"),
        (FIRST + 8, "<I", 3, "differs from original"),
        (FIRST + 12, "<I", 3, "differs from original"),
        (FIRST + 16, "<B", 2, "direction byte 0x02"),
        (FIRST + 16, "<B", 0xFF, "direction byte 0xff"),
    ],
)
def test_bad_header_fields_are_refused_with_a_clear_message(
    tmp_path: Path, offset: int, fmt: str, value: int, message: str
) -> None:
    with pytest.raises(CaptureError, match=message):
        _read(_patched(_valid(tmp_path), offset, fmt, value))


@pytest.mark.parametrize("length", [0, 1, 70000])
def test_impossible_packet_lengths_are_refused(tmp_path: Path, length: int) -> None:
    data = _valid(tmp_path)
    data = _patched(_patched(data, FIRST + 8, "<I", length), FIRST + 12, "<I", length)
    with pytest.raises(CaptureError, match=r"packet #0 at byte 24: length"):
        _read(data)


def test_a_packet_longer_than_the_files_snap_length_is_refused(tmp_path: Path) -> None:
    data = _patched(_valid(tmp_path), 16, "<I", 10)
    with pytest.raises(CaptureError, match=r"outside 2\.\.10"):
        _read(data)


def test_errors_name_the_packet_and_byte_offset(tmp_path: Path) -> None:
    data = _valid(tmp_path)
    _, packets = parse_pcap(data)
    second = FIRST + 16 + len(packets[0][2])
    with pytest.raises(CaptureError, match=rf"test.pcap: packet #1 at byte {second}:"):
        _read(_patched(data, second + 16, "<B", 9))


def test_an_empty_file_is_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(CaptureError, match="only 0 bytes"):
        read_capture(path)


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=200), flips=st.lists(st.integers(0, 10_000), max_size=4))
def test_arbitrary_damage_gives_frames_or_a_capture_error(tail: bytes, flips: list[int]) -> None:
    buffer = io.BytesIO()
    data = bytearray(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)
        + pumpguard.host.capture.encode_packet(FRAMES[0])
        + tail
    )
    for flip in flips:
        data[flip % len(data)] ^= 1 << (flip % 8)
    buffer.write(bytes(data))
    buffer.seek(0)
    try:
        frames = list(iter_capture(buffer))
    except CaptureError:
        return
    for frame in frames:
        assert frame.direction in (Direction.A_TO_B, Direction.B_TO_A)
        assert 1 <= len(frame.frame) <= MAX_CAPTURED_FRAME
