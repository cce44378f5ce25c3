"""``pumpsim --legacy``: a pump that trusts anyone who knows its serial number.

This is the recalled design (protocol/legacy.py), kept so the same tools can
show the attack working here and failing against pumpguard: a recorded bolus
replayed later is delivered again, every time.  It shares the real delivery
engine and motor, so the motor's witness counts every replayed pulse.

It is a demonstration, deliberately insecure: no pairing, no keys, no
counters, no limits beyond the factory single-bolus maximum.
"""

from __future__ import annotations

import logging

from pumpguard.protocol import FrameDecoder, RemoteProtocolError, encode_frame, legacy, wire

from .delivery import DeliveryEngine, DeliveryRefused
from .motor import Motor

log = logging.getLogger("pumpguard.legacy")


class LegacyPump:
    """Same driving interface as :class:`~firmware_sim.pump.Pump`."""

    def __init__(self, *, motor: Motor, serial: bytes, now: float) -> None:
        if len(serial) != legacy.SERIAL_LEN:
            raise ValueError("a legacy serial number is 3 bytes")
        self.serial = serial
        self.delivery = DeliveryEngine(motor, now=now)
        self._decoder = FrameDecoder()
        self._outbox = bytearray()
        self._bolus_count = 0

    def receive_data(self, data: bytes, now: float) -> None:
        self._decoder.receive_data(data)
        while True:
            try:
                record = self._decoder.next_record()
                if record is None:
                    return
                self._on_packet(legacy.decode_packet(record), now)
            except RemoteProtocolError as exc:
                log.info("legacy packet dropped: %s", exc)

    def _on_packet(self, packet: legacy.LegacyPacket, now: float) -> None:
        if packet.opcode is legacy.LegacyOpcode.STATUS and packet.serial in (
            self.serial,
            legacy.BROADCAST_SERIAL,
        ):
            body = self.delivery.bolus_pulses_delivered.to_bytes(
                4, "big"
            ) + self.delivery.basal_pulses_delivered.to_bytes(4, "big")
            self._reply(legacy.LegacyOpcode.STATUS_REPLY, body)
            return
        if packet.serial != self.serial:
            return  # the only check the recalled design made
        if packet.opcode is legacy.LegacyOpcode.BOLUS and len(packet.body) == 2:
            pulses = int.from_bytes(packet.body, "big")
            if not 0 < pulses <= wire.FACTORY_MAX_BOLUS_PULSES:
                return
            self._bolus_count += 1
            try:
                self.delivery.start_bolus(
                    self._bolus_count.to_bytes(wire.COMMAND_ID_LEN, "big"), pulses, now
                )
            except DeliveryRefused:
                return
            self._reply(legacy.LegacyOpcode.ACK, bytes((packet.opcode,)))
        elif packet.opcode is legacy.LegacyOpcode.SUSPEND:
            self.delivery.suspend()
            self._reply(legacy.LegacyOpcode.ACK, bytes((packet.opcode,)))

    def _reply(self, opcode: legacy.LegacyOpcode, body: bytes) -> None:
        self._outbox += encode_frame(legacy.encode_packet(self.serial, opcode, body))

    def tick(self, now: float) -> None:
        self.delivery.tick(now)

    def data_to_send(self) -> bytes:
        data = bytes(self._outbox)
        self._outbox.clear()
        return data
