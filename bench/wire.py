"""Bytes on the wire for every message and record type, and what they cost on a UART.

Usage, from the repository root::

    python -m bench.wire        # the markdown tables (bench/report.py includes them)

Every application message of SPEC §12 is encoded with typical values
(a 16-bit request id, 16-byte command ids and challenges, a 2 U bolus, a
status during a bolus, a signed audit entry of a delivered bolus), sealed in
a DATA record (SPEC §7: +13 bytes) and framed for the link (SPEC §3:
COBS + CRC-16 + delimiter, +4 bytes for any record under 252 bytes).  The
handshake (SPEC §6) and pairing (SPEC §9) records are fixed-size and are
framed as they are.  A UART sends 10 bits per byte (8N1: start, 8 data,
stop), so ``bytes * 10 / baud`` seconds is the least time a frame takes.

Nothing here is timed: the sizes are exact and the same on every run.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.parties import make_pairing, make_sessions
from pumpguard.protocol import (
    BolusCancel,
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    HandshakeInitiator,
    HandshakeResponder,
    History,
    HistoryRequest,
    LimitPolicy,
    Message,
    Ok,
    Outcome,
    PairingInitiator,
    PairingResponder,
    PolicyUpload,
    RefusalCode,
    Refused,
    Status,
    StatusRequest,
    Unpair,
    audit_entry,
    encode_frame,
    encode_message,
    encode_policy,
    sign_policy,
    wire,
)

#: Baud rates of the wire-time columns: a slow radio-modem-like link, and
#: the rate pumpsim and pumpctl open their ports with.
BAUDS: Final = (9600, 115200)
#: Bits a UART sends per byte: start, 8 data, stop (8N1).
BITS_PER_BYTE: Final = 10

#: A request id as the client picks them (random 16-bit start): 3 bytes of CBOR.
_REQUEST_ID: Final = 0x1234
_PULSES: Final = 40  # 2 U


@dataclass(frozen=True)
class WireRow:
    """One message or record: its sizes at each layer."""

    name: str
    direction: str
    #: CBOR message bytes (0 for records that are not DATA).
    plaintext: int
    record: int
    frame: int


def wire_seconds(n_bytes: int, baud: int) -> float:
    """The least time ``n_bytes`` take on an 8N1 UART at ``baud``."""
    return n_bytes * BITS_PER_BYTE / baud


def typical_messages() -> list[tuple[Message, str]]:
    """One message of every type with typical values, and its direction."""
    rng = random.Random(7)
    command_id = rng.randbytes(wire.COMMAND_ID_LEN)
    challenge = rng.randbytes(wire.CHALLENGE_LEN)
    prescriber = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    audit_key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    pump_id = rng.randbytes(wire.PUMP_ID_LEN)
    policy = encode_policy(LimitPolicy(2, 160, 240, 800), for_pump=pump_id)
    entry = audit_entry.encode_entry(
        1234,
        7_200_000,
        "bolus_delivered",
        {"pulses": _PULSES, "requested_pulses": _PULSES, "cmd_id": command_id},
        rng.randbytes(32),
    )
    signed_entry = entry + audit_key.sign(entry)
    status = Status(
        request_id=_REQUEST_ID,
        remote_bolus_enabled=True,
        state=1,
        bolus_pulses=12_345,
        basal_pulses=67_890,
        reservoir_pulses=4_321,
        active_command_id=command_id,
        active_requested=_PULSES,
        active_delivered=12,
        alarms=0,
        limits_version=2,
        max_bolus_pulses=160,
        max_1h_pulses=240,
        max_24h_pulses=800,
        pump_id=pump_id,
        audit_key=audit_key.public_key().public_bytes_raw(),
        audit_next_seq=1235,
    )
    return [
        (StatusRequest(_REQUEST_ID), "R->P"),
        (BolusPrepare(_REQUEST_ID, command_id, _PULSES), "R->P"),
        (BolusCommit(_REQUEST_ID, command_id, _PULSES, challenge), "R->P"),
        (CommandQuery(_REQUEST_ID, command_id), "R->P"),
        (BolusCancel(_REQUEST_ID), "R->P"),
        (HistoryRequest(_REQUEST_ID, 1234), "R->P"),
        (PolicyUpload(_REQUEST_ID, policy, sign_policy(policy, prescriber)), "R->P"),
        (Unpair(_REQUEST_ID), "R->P"),
        (status, "P->R"),
        (BolusChallenge(_REQUEST_ID, command_id, challenge, 30_000), "P->R"),
        (CommandOutcome(_REQUEST_ID, command_id, Outcome.IN_PROGRESS, _PULSES, 0), "P->R"),
        (History(_REQUEST_ID, signed_entry, 1235), "P->R"),
        (Ok(_REQUEST_ID), "P->R"),
        (Refused(_REQUEST_ID, RefusalCode.OVER_SINGLE_LIMIT, 160), "P->R"),
    ]


def message_rows() -> list[WireRow]:
    """Every message type, encoded, sealed and framed."""
    remote, _ = make_sessions(make_pairing())
    rows = []
    for message, direction in typical_messages():
        plaintext = encode_message(message)
        record = remote.seal(plaintext)
        rows.append(
            WireRow(
                type(message).__name__,
                direction,
                len(plaintext),
                len(record),
                len(encode_frame(record)),
            )
        )
    return rows


def setup_rows() -> list[WireRow]:
    """The handshake's two records and pairing's six, framed."""
    pairing = make_pairing()
    initiator = HandshakeInitiator(
        local_static=pairing.remote_static,
        peer=pairing.remote_view,
        random_bytes=pairing.random_bytes,
    )
    responder = HandshakeResponder(
        local_static=pairing.pump_static, random_bytes=pairing.random_bytes
    )
    first = initiator.start()
    reply = responder.respond(first, [pairing.pump_view]).reply
    rows = [_record_row("HANDSHAKE_INIT", "R->P", first)]
    rows.append(_record_row("HANDSHAKE_RESP", "P->R", reply))
    for name, direction, record in pairing_records():
        rows.append(_record_row(name, direction, record))
    return rows


def pairing_records() -> list[tuple[str, str, bytes]]:
    """A complete pairing's six records, in order: ``(type name, direction, record)``."""
    pairing = make_pairing()
    remote = PairingInitiator(pairing.remote_static, pairing.random_bytes)
    pump = PairingResponder(pairing.pump_static, pairing.random_bytes)
    request = remote.start()
    commit = pump.receive_request(request)
    remote_nonce = remote.receive_commit(commit)
    pump_nonce, _ = pump.receive_remote_nonce(remote_nonce)
    remote.receive_pump_nonce(pump_nonce)
    remote_confirm = remote.confirm()
    pump.receive_remote_confirm(remote_confirm)
    _, pump_confirm = pump.user_confirmed()
    records = (request, commit, remote_nonce, pump_nonce, remote_confirm, pump_confirm)
    directions = ("R->P", "P->R") * 3
    return [
        (wire.RecordType(record[0]).name, direction, record)
        for record, direction in zip(records, directions, strict=True)
    ]


def _record_row(name: str, direction: str, record: bytes) -> WireRow:
    return WireRow(name, direction, 0, len(record), len(encode_frame(record)))


#: The exchanges whose wire time is tabled: the messages each sends, both ways.
EXCHANGES: Final = {
    "status (request + status)": ("StatusRequest", "Status"),
    "bolus (prepare, challenge, commit, outcome)": (
        "BolusPrepare",
        "BolusChallenge",
        "BolusCommit",
        "CommandOutcome",
    ),
    "handshake (init + resp)": ("HANDSHAKE_INIT", "HANDSHAKE_RESP"),
    "handshake, then a bolus": (
        "HANDSHAKE_INIT",
        "HANDSHAKE_RESP",
        "BolusPrepare",
        "BolusChallenge",
        "BolusCommit",
        "CommandOutcome",
    ),
    "pairing (six records)": (
        "PAIR_REQUEST",
        "PAIR_COMMIT",
        "PAIR_REMOTE_NONCE",
        "PAIR_PUMP_NONCE",
        "PAIR_REMOTE_CONFIRM",
        "PAIR_PUMP_CONFIRM",
    ),
}


def exchange_bytes(rows: Sequence[WireRow]) -> dict[str, int]:
    """Framed bytes of each exchange in :data:`EXCHANGES`."""
    frame = {row.name: row.frame for row in rows}
    return {name: sum(frame[part] for part in parts) for name, parts in EXCHANGES.items()}


def _ms(n_bytes: int, baud: int) -> str:
    return f"{wire_seconds(n_bytes, baud) * 1e3:.1f}"


def message_table(rows: Sequence[WireRow]) -> list[str]:
    """Markdown: every message and record, its sizes and its wire time."""
    speeds = " | ".join(f"ms at {baud}" for baud in BAUDS)
    lines = [
        f"| message / record | dir | plaintext B | record B | framed B | {speeds} |",
        "|---|---|---|---|---|" + "---|" * len(BAUDS),
    ]
    for row in rows:
        plain = str(row.plaintext) if row.plaintext else "—"
        times = " | ".join(_ms(row.frame, baud) for baud in BAUDS)
        lines.append(
            f"| {row.name} | {row.direction} | {plain} | {row.record} | {row.frame} | {times} |"
        )
    return lines


def exchange_table(rows: Sequence[WireRow]) -> list[str]:
    """Markdown: the framed bytes and wire time of each exchange."""
    speeds = " | ".join(f"ms at {baud}" for baud in BAUDS)
    lines = [f"| exchange | framed B | {speeds} |", "|---|---|" + "---|" * len(BAUDS)]
    for name, total in exchange_bytes(rows).items():
        times = " | ".join(_ms(total, baud) for baud in BAUDS)
        lines.append(f"| {name} | {total} | {times} |")
    return lines


def all_rows() -> list[WireRow]:
    return message_rows() + setup_rows()


def main() -> int:
    rows = all_rows()
    print(
        "Typical values (SPEC §12): request id 0x1234, 16-byte command ids and challenges, "
        "a 2 U bolus, a status during a bolus, the signed audit entry of a delivered bolus. "
        f"Wire time = framed bytes x {BITS_PER_BYTE} bits / baud (8N1)."
    )
    print()
    print("\n".join(message_table(rows)))
    print()
    print("\n".join(exchange_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
