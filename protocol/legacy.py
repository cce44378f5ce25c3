"""The recalled design, for demonstrations only (BRIEF; ICSMA-18-219-02).

The MiniMed MMT-500/503 remotes sent ``[type][3-byte pump serial][opcode]
[body][CRC-8]`` with no key, no counter and no tag; bolus was opcode 0x42.
Anyone who knew the serial number -- printed on the pump and sent in every
packet -- could command the pump, and any recording stayed valid for ever.

pumpguard keeps this framing only so that ``pumpsim --legacy`` and
``pumpctl --legacy`` can show the attack succeeding where pumpguard refuses
it.  It is modeled on the public advisory, not a radio implementation of any
real pump.  Packets travel inside pumpguard's link framing (SPEC §3) so the
same tap and replay tools work on both.

    packet = 0xA7 || serial (3) || opcode (1) || body || CRC-8/SMBUS (1)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from .errors import MalformedRecord

PACKET_TYPE: Final = 0xA7
SERIAL_LEN: Final = 3
#: The serial a remote uses to discover a pump (any pump answers it).
BROADCAST_SERIAL: Final = b"\xff\xff\xff"


class LegacyOpcode(enum.IntEnum):
    STATUS = 0x10
    STATUS_REPLY = 0x11
    #: body: pulses, u16 big-endian.
    BOLUS = 0x42
    #: Stop all delivery: the other half of the advisory.
    SUSPEND = 0x4D
    #: body: the opcode acknowledged.
    ACK = 0x06


@dataclass(frozen=True)
class LegacyPacket:
    serial: bytes
    opcode: LegacyOpcode
    body: bytes


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS (poly 0x07, init 0).  Check: ``crc8(b"123456789") == 0xF4``."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_packet(serial: bytes, opcode: LegacyOpcode, body: bytes = b"") -> bytes:
    head = bytes((PACKET_TYPE,)) + serial + bytes((opcode,)) + body
    return head + bytes((crc8(head),))


def decode_packet(packet: bytes) -> LegacyPacket:
    """Raises :class:`~protocol.errors.MalformedRecord` for anything malformed."""
    if len(packet) < 1 + SERIAL_LEN + 2 or packet[0] != PACKET_TYPE:
        raise MalformedRecord("not a legacy packet")
    if crc8(packet[:-1]) != packet[-1]:
        raise MalformedRecord("legacy CRC-8 mismatch")
    try:
        opcode = LegacyOpcode(packet[1 + SERIAL_LEN])
    except ValueError:
        raise MalformedRecord("unknown legacy opcode") from None
    return LegacyPacket(packet[1 : 1 + SERIAL_LEN], opcode, packet[2 + SERIAL_LEN : -1])
