"""Link captures: every frame that crossed a tap, as a pcap file (BRIEF ``pumpctl link tap``).

A capture is a classic libpcap file that Wireshark, tshark, tcpdump and
scapy open as they are, so a tester needs no private tool to look at what
crossed the wire.

File layout (all integers little-endian)
----------------------------------------

Global header, 24 bytes::

    offset  size  field           value
    0       4     magic_number    0xa1b2c3d4  (bytes d4 c3 b2 a1: microsecond timestamps)
    4       2     version_major   2
    6       2     version_minor   4
    8       4     thiszone        0
    12      4     sigfigs         0
    16      4     snaplen         65535
    20      4     network         147  (LINKTYPE_USER0 / DLT_USER0)

Then one packet per link frame, each a 16-byte record header and the data::

    offset  size  field
    0       4     ts_sec     capture time, seconds since the Unix epoch
    4       4     ts_usec    microseconds, 0 .. 999999
    8       4     incl_len   bytes of data that follow (= orig_len, never truncated)
    12      4     orig_len   the same
    16      n     data       direction (1 byte) || frame bytes

Packet data
-----------

* byte 0, the **direction pseudo-header**: ``0x00`` = A -> B (in ``pumpctl
  link tap`` the ``--a`` port towards the ``--b`` port), ``0x01`` = B -> A.
  Any other value makes the file invalid.
* bytes 1.., the **frame exactly as it crossed the link** (SPEC §3):
  ``COBS(record || CRC16) || 0x00``, the 0x00 delimiter included.  A frame
  is at least one byte (a lone 0x00 is an idle delimiter).  Garbage on the
  line is recorded as it came, split at its 0x00 bytes; a run of more than
  :data:`MAX_CAPTURED_FRAME` bytes without a delimiter is recorded in pieces
  of that size, the last piece of a stream without a final delimiter is
  recorded as it is.

The timestamp is when the tap read the frame's last byte (its delimiter).
A capture holds what was *received* by the tap, before any injected fault,
so a replay of it is the genuine traffic.  It holds ciphertext only: the tap
never has a key (S12).

Reading a capture with tshark
-----------------------------

Wireshark dissects LINKTYPE_USER0 through its "User DLTs" table.  Map it to
raw data with a one-byte header (the direction)::

    tshark -r capture.pcap \\
      -o 'uat:user_dlts:"User 0 (DLT=147)","data","1","data","0",""' -x

``-x`` prints each packet's bytes: the first is the direction, the rest the
frame.  Without the table, ``tshark -r capture.pcap -x`` still lists every
packet with its time and bytes.  To get records out of frames, strip the
direction byte and decode with :func:`protocol.decode_frame` (drop the final
0x00 first).

:func:`read_capture` refuses anything but this layout with a
:class:`CaptureError` naming the packet and byte offset; it never returns a
partial capture silently.
"""

from __future__ import annotations

import enum
import math
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

__all__ = [
    "LINKTYPE_USER0",
    "MAX_CAPTURED_FRAME",
    "PCAP_MAGIC",
    "CaptureError",
    "CaptureWriter",
    "CapturedFrame",
    "Direction",
    "iter_capture",
    "read_capture",
    "write_capture",
]

#: Classic pcap magic, microsecond resolution; written little-endian.
PCAP_MAGIC: Final = 0xA1B2C3D4
PCAP_VERSION: Final = (2, 4)
#: Link-layer header type for private use (tcpdump.org LINKTYPE_USER0).
LINKTYPE_USER0: Final = 147
SNAPLEN: Final = 65535
#: Direction byte plus frame: a packet never exceeds the snap length.
MAX_CAPTURED_FRAME: Final = SNAPLEN - 1

_GLOBAL_HEADER: Final = struct.Struct("<IHHiIII")
_RECORD_HEADER: Final = struct.Struct("<IIII")
GLOBAL_HEADER_LEN: Final = _GLOBAL_HEADER.size
RECORD_HEADER_LEN: Final = _RECORD_HEADER.size
_USEC: Final = 1_000_000
_MAX_TS_SEC: Final = 0xFFFF_FFFF

#: Other magics a user may hand us, for a precise error message.
_OTHER_MAGICS: Final = {
    b"\xa1\xb2\xc3\xd4": "a big-endian pcap file",
    b"\x4d\x3c\xb2\xa1": "a nanosecond-resolution pcap file",
    b"\xa1\xb2\x3c\x4d": "a big-endian nanosecond-resolution pcap file",
    b"\x0a\x0d\x0d\x0a": "a pcapng file (save it as 'Wireshark/tcpdump - pcap')",
}


class CaptureError(Exception):
    """A capture file could not be written, or is not a valid pumpguard capture.

    The message is one line a user can act on, naming the file and, for a
    bad file, the packet number and byte offset where it went wrong.
    """


class Direction(enum.IntEnum):
    """Which way a frame went through the tap: the pcap direction pseudo-header."""

    A_TO_B = 0
    B_TO_A = 1

    @property
    def arrow(self) -> str:
        return "A->B" if self is Direction.A_TO_B else "B->A"


@dataclass(frozen=True)
class CapturedFrame:
    """One frame seen by the tap.

    Attributes:
        time: capture time, seconds since the Unix epoch (microsecond precision
            once written to a file).
        direction: which way it went.
        frame: the bytes as they crossed the link, delimiter included.
    """

    time: float
    direction: Direction
    frame: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            raise ValueError("direction must be a Direction")
        if not 1 <= len(self.frame) <= MAX_CAPTURED_FRAME:
            raise ValueError(f"a captured frame is 1..{MAX_CAPTURED_FRAME} bytes")
        if not (math.isfinite(self.time) and 0.0 <= self.time < _MAX_TS_SEC + 1):
            raise ValueError("capture time must be a Unix time representable in pcap")


def _timestamp(time: float) -> tuple[int, int]:
    seconds = math.floor(time)
    micros = round((time - seconds) * _USEC)
    if micros >= _USEC:  # 0.9999996 rounds up into the next second
        seconds, micros = seconds + 1, micros - _USEC
    return min(seconds, _MAX_TS_SEC), micros


def _global_header() -> bytes:
    return _GLOBAL_HEADER.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, SNAPLEN, LINKTYPE_USER0)


def encode_packet(frame: CapturedFrame) -> bytes:
    """The record header and data of one packet."""
    seconds, micros = _timestamp(frame.time)
    data = bytes((frame.direction,)) + frame.frame
    return _RECORD_HEADER.pack(seconds, micros, len(data), len(data)) + data


class CaptureWriter:
    """Appends frames to a new pcap file; safe to share between threads.

    Every packet is flushed to the operating system as it is written, so a
    tap that is killed leaves a file that reads up to its last whole packet
    (a torn last packet is reported by :func:`read_capture`).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.pcap"
    >>> with CaptureWriter(path) as writer:
    ...     writer.write(CapturedFrame(1.5, Direction.A_TO_B, b"\\x02\\x03\\x00"))
    >>> [f.frame for f in read_capture(path)]
    [b'\\x02\\x03\\x00']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Create (or truncate) ``path`` and write the global header.

        Raises:
            CaptureError: the file cannot be created.
        """
        self._path = Path(path)
        self._lock = threading.Lock()
        self._count = 0
        try:
            self._file: BinaryIO | None = self._path.open("wb")
            self._file.write(_global_header())
            self._file.flush()
        except OSError as exc:
            raise CaptureError(f"cannot write capture {self._path}: {exc.strerror}") from None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def frames_written(self) -> int:
        return self._count

    def write(self, frame: CapturedFrame) -> None:
        """Append one frame.

        Raises:
            CaptureError: the writer is closed or the disk refused the write.
        """
        packet = encode_packet(frame)
        with self._lock:
            if self._file is None:
                raise CaptureError(f"capture {self._path} is closed")
            try:
                self._file.write(packet)
                self._file.flush()
            except OSError as exc:
                raise CaptureError(f"cannot write capture {self._path}: {exc.strerror}") from None
            self._count += 1

    def close(self) -> None:
        """Close the file.  Idempotent."""
        with self._lock:
            if self._file is None:
                return
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                raise CaptureError(f"cannot close capture {self._path}: {exc.strerror}") from None

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_capture(path: str | os.PathLike[str], frames: Iterable[CapturedFrame]) -> int:
    """Write ``frames`` to a new capture file; return how many were written.

    Raises:
        CaptureError: the file cannot be written.
    """
    with CaptureWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
        return writer.frames_written


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    return b"" if data is None else data


def iter_capture(stream: BinaryIO, name: str = "capture") -> Iterator[CapturedFrame]:
    """Yield the frames of a capture read from a binary stream, validating strictly.

    Raises:
        CaptureError: the stream is not a pumpguard capture (wrong magic,
            version, link type or snap length), a packet is truncated,
            has an impossible length or timestamp, or a bad direction byte.
    """
    header = _read_exactly(stream, GLOBAL_HEADER_LEN)
    if len(header) < GLOBAL_HEADER_LEN:
        raise CaptureError(
            f"{name}: not a pcap file (only {len(header)} bytes, "
            f"the header alone is {GLOBAL_HEADER_LEN})"
        )
    other = _OTHER_MAGICS.get(header[:4])
    if other is not None:
        raise CaptureError(f"{name}: {other}; expected little-endian classic pcap (0xa1b2c3d4)")
    magic, major, minor, _zone, _sigfigs, snaplen, network = _GLOBAL_HEADER.unpack(header)
    if magic != PCAP_MAGIC:
        raise CaptureError(f"{name}: not a pcap file (magic {header[:4].hex()})")
    if (major, minor) != PCAP_VERSION:
        raise CaptureError(f"{name}: pcap version {major}.{minor}, expected 2.4")
    if network != LINKTYPE_USER0:
        raise CaptureError(
            f"{name}: link type {network}, expected {LINKTYPE_USER0} (LINKTYPE_USER0): "
            "not a pumpguard capture"
        )
    if not 2 <= snaplen <= SNAPLEN:
        raise CaptureError(f"{name}: snap length {snaplen} outside 2..{SNAPLEN}")
    offset = GLOBAL_HEADER_LEN
    index = 0
    while True:
        record = _read_exactly(stream, RECORD_HEADER_LEN)
        if not record:
            return
        where = f"{name}: packet #{index} at byte {offset}"
        if len(record) < RECORD_HEADER_LEN:
            raise CaptureError(f"{where}: truncated record header ({len(record)} of 16 bytes)")
        seconds, micros, incl_len, orig_len = _RECORD_HEADER.unpack(record)
        if micros >= _USEC:
            raise CaptureError(f"{where}: microseconds field {micros} is not below 1000000")
        if incl_len != orig_len:
            raise CaptureError(
                f"{where}: captured length {incl_len} differs from original {orig_len} "
                "(a truncated packet; pumpguard captures are never snapped)"
            )
        if not 2 <= incl_len <= snaplen:
            raise CaptureError(
                f"{where}: length {incl_len} outside 2..{snaplen} "
                "(direction byte and at least one frame byte)"
            )
        data = _read_exactly(stream, incl_len)
        if len(data) < incl_len:
            raise CaptureError(f"{where}: truncated data ({len(data)} of {incl_len} bytes)")
        if data[0] not in (Direction.A_TO_B, Direction.B_TO_A):
            raise CaptureError(f"{where}: direction byte 0x{data[0]:02x} is neither 0x00 nor 0x01")
        yield CapturedFrame(seconds + micros / _USEC, Direction(data[0]), bytes(data[1:]))
        offset += RECORD_HEADER_LEN + incl_len
        index += 1


def read_capture(path: str | os.PathLike[str]) -> list[CapturedFrame]:
    """Every frame of a capture file, in file order.

    Raises:
        CaptureError: the file cannot be read or is not a valid capture.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            return list(iter_capture(stream, str(path)))
    except OSError as exc:
        raise CaptureError(f"cannot read capture {path}: {exc.strerror}") from None
