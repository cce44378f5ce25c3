"""Bytes on the wire for every message type, and the wire time of the exchanges.

Not timings: exact sizes, the same on every run (bench/wire.py builds them;
``python -m bench.wire`` prints the tables, and bench/report.py puts them in
bench/README.md).  Each message of SPEC §12 with typical values is sealed
into a DATA record (SPEC §7.1: 5-byte header + 8-byte tag) and framed
(SPEC §3: COBS adds one byte below 254, CRC-16 two, the delimiter one).
The handshake (SPEC §6) and pairing (SPEC §9) records are checked against
their fixed sizes.  Wire time is ``bytes * 10 / baud`` (8N1).

These are plain tests (``--benchmark-only`` skips them); the tables are
printed at the end of the run by bench/conftest.py.
"""

from __future__ import annotations

import pytest

from bench import wire as wire_sizes
from bench.conftest import SummaryTable
from pumpguard.protocol import MessageType, decode_message, encode_message, wire


def test_every_message_type_is_tabled() -> None:
    messages = wire_sizes.typical_messages()
    assert {message.TYPE for message, _ in messages} == set(MessageType)
    for message, _ in messages:
        # Typical values are valid values: each decodes back to itself.
        assert decode_message(encode_message(message)) == message


def test_data_record_and_frame_overheads(summary_table: SummaryTable) -> None:
    rows = wire_sizes.message_rows()
    for row in rows:
        assert row.record == row.plaintext + wire.RECORD_OVERHEAD == row.plaintext + 13
        assert row.record <= wire.MAX_RECORD_LEN
        # record || CRC-16 below 254 bytes: COBS adds exactly one, then the delimiter.
        assert row.frame == row.record + wire.CRC_LEN + 2
    summary_table("bytes on the wire per message", wire_sizes.message_table(rows))


def test_setup_records_have_their_fixed_sizes(summary_table: SummaryTable) -> None:
    rows = wire_sizes.setup_rows()
    sizes = {row.name: row.record for row in rows}
    assert sizes == {
        "HANDSHAKE_INIT": 41,
        "HANDSHAKE_RESP": 41,
        "PAIR_REQUEST": 33,
        "PAIR_COMMIT": 65,
        "PAIR_REMOTE_NONCE": 17,
        "PAIR_PUMP_NONCE": 17,
        "PAIR_REMOTE_CONFIRM": 17,
        "PAIR_PUMP_CONFIRM": 17,
    }
    assert sum(sizes[name] for name in sizes if name.startswith("PAIR_")) == 166
    assert all(row.frame == row.record + wire.CRC_LEN + 2 for row in rows)
    summary_table(
        "bytes on the wire per handshake and pairing record", wire_sizes.message_table(rows)
    )


def test_bolus_exchange_wire_time(summary_table: SummaryTable) -> None:
    rows = wire_sizes.all_rows()
    frames = {row.name: row.frame for row in rows}
    totals = wire_sizes.exchange_bytes(rows)
    bolus = totals["bolus (prepare, challenge, commit, outcome)"]
    assert bolus == sum(
        frames[name] for name in ("BolusPrepare", "BolusChallenge", "BolusCommit", "CommandOutcome")
    )
    # 8N1: 10 bits per byte.  At 115200 baud one byte takes ~87 us (the brief's figure).
    assert wire_sizes.wire_seconds(1, 115200) == pytest.approx(86.8e-6, rel=1e-3)
    assert wire_sizes.wire_seconds(bolus, 9600) == pytest.approx(bolus / 960)
    # Every framed byte of a bolus exchange, at either speed, costs more than
    # a millisecond of CPU would: the link, not the CPU, sets the pace.
    assert wire_sizes.wire_seconds(bolus, 115200) > 1e-3
    summary_table("wire time per exchange", wire_sizes.exchange_table(rows))
