"""``pumpctl --legacy``: the recalled remote, to show what pumpguard prevents.

Nothing here is secret or authenticated: "pairing" is learning the pump's
serial number (which the pump sends in every packet), and a bolus is one
packet that anyone can record and send again.
"""

from __future__ import annotations

import argparse
import json
import time

from pumpguard.protocol import RemoteProtocolError, legacy, pulses_to_units, units_to_pulses

from .client import ClientError, LinkDown, NotPaired
from .keystore import KeyStore, atomic_write
from .transport import RecordChannel, SerialLink

LEGACY_FILE = "legacy.json"
REPLY_TIMEOUT_S = 2.0


def run_legacy(args: argparse.Namespace) -> int:
    if not args.port or not args.keys:
        raise LinkDown(f"'{args.command}' needs --port PORT and --keys DIR")
    keys = KeyStore.open(args.keys)
    link = SerialLink.open(args.port)
    channel = RecordChannel(link)
    try:
        if args.command == "pair":
            serial = _exchange(channel, legacy.BROADCAST_SERIAL, legacy.LegacyOpcode.STATUS).serial
            atomic_write(keys.path / LEGACY_FILE, json.dumps({"serial": serial.hex()}).encode())
            print(f"legacy 'pairing': learned pump serial {serial.hex()} (no key, no code)")
            return 0
        serial = _serial(keys)
        if args.command == "bolus":
            try:
                pulses = units_to_pulses(args.units)
            except ValueError as exc:
                raise ClientError(str(exc)) from None
            _exchange(channel, serial, legacy.LegacyOpcode.BOLUS, pulses.to_bytes(2, "big"))
            print(f"legacy bolus of {pulses_to_units(pulses)} U acknowledged")
            return 0
        if args.command == "status":
            reply = _exchange(channel, serial, legacy.LegacyOpcode.STATUS)
            bolus = int.from_bytes(reply.body[:4], "big")
            basal = int.from_bytes(reply.body[4:8], "big")
            print(f"bolus delivered: {pulses_to_units(bolus)} U, basal: {pulses_to_units(basal)} U")
            return 0
        raise LinkDown(f"'{args.command}' does not exist in the legacy design")
    finally:
        link.close()


def _serial(keys: KeyStore) -> bytes:
    try:
        return bytes.fromhex(json.loads((keys.path / LEGACY_FILE).read_text())["serial"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NotPaired("no legacy pump serial known: run 'pumpctl --legacy pair'") from None


def _exchange(
    channel: RecordChannel, serial: bytes, opcode: legacy.LegacyOpcode, body: bytes = b""
) -> legacy.LegacyPacket:
    channel.send(legacy.encode_packet(serial, opcode, body))
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        record = channel.receive(timeout=deadline - time.monotonic())
        if record is None:
            continue
        try:
            return legacy.decode_packet(record)
        except RemoteProtocolError:
            continue  # anything else on the link is ignored, as the recalled remote did
    raise LinkDown("no answer from the legacy pump")
