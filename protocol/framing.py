"""Link framing: records <-> bytes on a serial line (SPEC §3).

A link frame is ``COBS(record || CRC-16) || 0x00``.  COBS (Cheshire and
Baker, 1999) removes every zero byte, so the zero delimiter can only mean
"end of frame" and a receiver that starts mid-stream or sees garbage resyncs
at the next zero.  The CRC catches line noise before any cryptography runs;
it is not a security mechanism (the AEAD tag is).

:class:`FrameDecoder` is sans-I/O: feed it whatever the port returned with
:meth:`~FrameDecoder.receive_data` and pull records with
:meth:`~FrameDecoder.next_record`.  It holds at most
:data:`~protocol.wire.MAX_ENCODED_FRAME_LEN` bytes of an incomplete frame
plus the chunk most recently passed in.
"""

from __future__ import annotations

import binascii

from .errors import FramingError, LocalProtocolError
from .wire import CRC_INIT, CRC_LEN, CRC_XOROUT, MAX_ENCODED_FRAME_LEN, MAX_RECORD_LEN

_ZERO = b"\x00"
_MAX_BLOCK = 254


def crc16(data: bytes) -> int:
    """CRC-16/GENIBUS.  Check value: ``crc16(b"123456789") == 0xD64E``."""
    return binascii.crc_hqx(data, CRC_INIT) ^ CRC_XOROUT


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no zero byte."""
    out = bytearray()
    for block in data.split(_ZERO):
        # A code byte of 0xFF means "254 data bytes, no zero follows".
        while len(block) >= _MAX_BLOCK:
            out.append(_MAX_BLOCK + 1)
            out += block[:_MAX_BLOCK]
            block = block[_MAX_BLOCK:]
        out.append(len(block) + 1)
        out += block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Invert :func:`cobs_encode`.  Raises :class:`FramingError` on bad input."""
    out = bytearray()
    index = 0
    length = len(data)
    while index < length:
        code = data[index]
        end = index + code
        if code == 0 or end > length:
            raise FramingError("COBS code byte points past the frame")
        out += data[index + 1 : end]
        index = end
        # Every block but the last and the 0xFF ones stood before a zero.
        if code <= _MAX_BLOCK and index < length:
            out.append(0)
    return bytes(out)


def encode_frame(record: bytes) -> bytes:
    """Wrap one record for the link: COBS(record || CRC-16) || 0x00."""
    if not record or len(record) > MAX_RECORD_LEN:
        raise LocalProtocolError(f"record length {len(record)} outside 1..{MAX_RECORD_LEN}")
    return cobs_encode(record + crc16(record).to_bytes(CRC_LEN, "big")) + _ZERO


def decode_frame(encoded: bytes) -> bytes:
    """Unwrap one frame's bytes (delimiter removed) into its record."""
    if len(encoded) > MAX_ENCODED_FRAME_LEN:
        raise FramingError("frame longer than the maximum")
    raw = cobs_decode(encoded)
    if len(raw) <= CRC_LEN:
        raise FramingError("frame shorter than its CRC")
    record, check = raw[:-CRC_LEN], raw[-CRC_LEN:]
    if len(record) > MAX_RECORD_LEN:
        raise FramingError("record longer than the maximum")
    if crc16(record).to_bytes(CRC_LEN, "big") != check:
        raise FramingError("CRC mismatch")
    return record


class FrameDecoder:
    """Splits a byte stream into records, resynchronising after garbage.

    >>> decoder = FrameDecoder()
    >>> decoder.receive_data(b"noise" + encode_frame(b"\\x03hello")[:4])
    >>> decoder.next_record() is None
    True
    >>> decoder.receive_data(encode_frame(b"\\x03hello")[4:])
    >>> decoder.next_record()
    Traceback (most recent call last):
      ...
    pumpguard.protocol.errors.FramingError: COBS code byte points past the frame
    >>> decoder.receive_data(encode_frame(b"\\x03hello"))
    >>> decoder.next_record()
    b'\\x03hello'
    """

    __slots__ = ("_buffer", "_discarding", "frames_dropped")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # True while skipping the tail of an oversized frame up to its delimiter.
        self._discarding = False
        #: Frames refused so far (damaged, oversized); for diagnostics.
        self.frames_dropped = 0

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the link.  Never raises."""
        self._buffer += data

    def next_record(self) -> bytes | None:
        """Return the next complete record, or ``None`` if more bytes are needed.

        Raises:
            FramingError: one damaged or oversized frame was consumed and
                dropped.  The decoder stays usable: call again for the next.
        """
        while True:
            end = self._buffer.find(_ZERO)
            if end < 0:
                if len(self._buffer) > MAX_ENCODED_FRAME_LEN:
                    # Bound the partial frame: drop it and skip to the next delimiter.
                    self._buffer.clear()
                    if not self._discarding:
                        self._discarding = True
                        self.frames_dropped += 1
                        raise FramingError("frame longer than the maximum")
                return None
            encoded = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if not encoded:
                continue  # back-to-back delimiters: idle line, not an error
            try:
                return decode_frame(encoded)
            except FramingError:
                self.frames_dropped += 1
                raise
