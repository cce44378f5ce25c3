"""The firmware in one process: whole command exchanges, and refusals at the pump.

``test_exchange`` times complete exchanges between a remote and the real
:class:`firmware_sim.pump.Pump` on in-memory flash (bench/firmware.py), over
a direct link, both sides in this process:

* ``bolus``: a BolusPrepare and a BolusCommit under a new command id each
  round.  The remote encodes, seals and frames; the pump unframes, opens,
  checks the limits and issues a challenge (SPEC §12.3), then on the commit
  checks the challenge, reserves the dose in the ledger, commits its state
  to flash, appends an Ed25519-signed audit entry, starts the delivery and
  persists its snapshot -- all before it answers (SPEC §13.3, S7, S10) --
  and the remote opens and decodes each answer.  Between rounds (not
  timed) the user cancels the bolus at the pump before its first pulse.
  The pump holds the most outcomes it keeps (64) from the start, so every
  round commits a state of steady-state size.
* ``status``: one StatusRequest and its Status: no write.
* ``bolus-floor`` / ``status-floor``: the same number of raw AES-CCM calls
  (an encrypt and a decrypt per message) on plaintexts of the same sizes,
  with one reused cipher object and a fixed nonce: the least any
  implementation of the suite spends on the same exchange.
* ``bolus-file-flash``: ``bolus`` with the flash as an image file, where
  every program and erase is written through and fsync'ed (as ``pumpsim``
  runs).  Informative: it times this machine's disk as much as the code.

The target (bench/report.py) is ``bolus`` at most 0.2x the OSCORE
request+response of bench_handshake.py (``test_peer_record[oscore-round-trip]``).

``test_pump_refuse`` is bench_record.py's ``test_refuse`` one level up: a
framed record goes through ``Pump.receive_data`` -- frame decoding
(COBS + CRC-16), dispatch by record type, the session's refusal, and the
count in the audit log's aggregated rejection entry (S9, S10) -- against
one raw AES-CCM decrypt of a valid record of the same size (``raw-open``).
``bad-crc`` (line noise: a frame whose CRC does not match) is refused before
any cryptography.  The pump's clock stands still while a benchmark runs, as
in a flood shorter than the aggregation interval: no rejection is written
to flash during the timed calls (a first refusal before the timing writes
the entry every flood starts with).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from pytest_benchmark.fixture import BenchmarkFixture

from bench.firmware import BOLUS_PULSES, PumpParty
from bench.report import SIZES
from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    Message,
    Outcome,
    Status,
    StatusRequest,
    encode_frame,
    encode_message,
    wire,
)

pytestmark = pytest.mark.benchmark(min_time=100e-6)

#: Rounds of the bolus exchange: each round needs an untimed cancel first,
#: so the bolus benchmarks are pedantic (one exchange per timer reading;
#: at ~0.25 ms each the timer's ~0.1 us is nothing).
BOLUS_ROUNDS = 200
FILE_FLASH_ROUNDS = 100
#: Rounds run first so the pump holds its full 64 outcomes (state at steady size).
#: Fill and timed rounds write two audit entries each (started, cancelled):
#: together they stay within the 483 the ring always retains, so the test
#: can read every one back.
FILL_ROUNDS = 70


def _exchange_plaintexts(kind: str) -> list[bytes]:
    """The plaintexts of one exchange, both ways, with the party's sizes of request id."""
    request_id = 0x1234
    command_id = bytes(range(wire.COMMAND_ID_LEN))
    challenge = bytes(range(16, 16 + wire.CHALLENGE_LEN))
    if kind == "status":
        party = PumpParty()
        try:
            status = party.status()
        finally:
            party.close()
        return [encode_message(StatusRequest(request_id)), encode_message(status)]
    return [
        encode_message(message)
        for message in (
            BolusPrepare(request_id, command_id, BOLUS_PULSES),
            BolusChallenge(request_id, command_id, challenge, 30_000),
            BolusCommit(request_id, command_id, BOLUS_PULSES, challenge),
            CommandOutcome(request_id, command_id, Outcome.IN_PROGRESS, BOLUS_PULSES, 0),
        )
    ]


def _aead_floor(plaintexts: list[bytes]) -> Callable[[], int]:
    rng = random.Random(len(plaintexts))
    aead = AESCCM(rng.randbytes(wire.AEAD_KEY_LEN), tag_length=wire.TAG_LEN)
    nonce = rng.randbytes(wire.AEAD_NONCE_LEN)

    def run() -> int:
        total = 0
        for plaintext in plaintexts:
            total += len(aead.decrypt(nonce, aead.encrypt(nonce, plaintext, None), None))
        return total

    return run


def _fill(party: PumpParty) -> None:
    for _ in range(FILL_ROUNDS):
        party.check_bolus_started(party.bolus_exchange())
        party.end_bolus()


def _bolus_benchmark(benchmark: BenchmarkFixture, party: PumpParty, rounds: int) -> None:
    _fill(party)
    seq_before = party.status().audit_next_seq
    answers: list[Message] = []
    sent, received = party.bytes_to_pump, party.bytes_from_pump

    def run() -> None:
        answers.append(party.bolus_exchange())

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        run, setup=party.end_bolus, rounds=rounds, iterations=1
    )
    party.end_bolus()
    to_pump = (party.bytes_to_pump - sent) // len(answers)
    from_pump = (party.bytes_from_pump - received) // len(answers)
    benchmark.extra_info["wire_bytes"] = (
        f"{to_pump} B to the pump + {from_pump} B back = {to_pump + from_pump} B framed"
    )
    # Every timed exchange started a bolus, persisted and audited before the answer.
    for answer in answers:
        party.check_bolus_started(answer)
    entries = party.history(seq_before)
    started = [entry for entry in entries if entry.event == "bolus_started"]
    assert len(started) == len(answers)
    assert {entry.fields["cmd_id"] for entry in started} == {
        answer.command_id for answer in answers if isinstance(answer, CommandOutcome)
    }
    assert party.rig.motor.pulses == 0  # each was cancelled before its first pulse


@pytest.mark.parametrize(
    "kind", ["bolus-floor", "bolus", "status-floor", "status", "bolus-file-flash"]
)
def test_exchange(benchmark: BenchmarkFixture, tmp_path: Path, kind: str) -> None:
    benchmark.group = "exchange, both sides"
    if kind.endswith("-floor"):
        plaintexts = _exchange_plaintexts(kind.removesuffix("-floor"))
        run = _aead_floor(plaintexts)
        assert benchmark(run) == sum(map(len, plaintexts))
        return
    party = PumpParty(flash_path=tmp_path / "flash.img" if kind == "bolus-file-flash" else None)
    try:
        if kind == "status":
            sent, received = party.bytes_to_pump, party.bytes_from_pump
            calls_before = party.exchanges
            status = benchmark(party.status)
            calls = party.exchanges - calls_before
            benchmark.extra_info["wire_bytes"] = (
                f"{(party.bytes_to_pump - sent) // calls} B to the pump + "
                f"{(party.bytes_from_pump - received) // calls} B back"
            )
            assert isinstance(status, Status)
            assert status.remote_bolus_enabled
            assert status.pump_id == party.rig.pump.pump_id
        else:
            rounds = FILE_FLASH_ROUNDS if kind == "bolus-file-flash" else BOLUS_ROUNDS
            _bolus_benchmark(benchmark, party, rounds)
    finally:
        party.close()


# --- Refusals at the pump -----------------------------------------------------


def _refusal_frame(party: PumpParty, size: int, kind: str) -> bytes:
    payload = random.Random(size).randbytes(size)
    session = party.session
    if kind == "garbage":
        body = random.Random(-size).randbytes(size + wire.RECORD_OVERHEAD - 1)
        return encode_frame(bytes((wire.RecordType.DATA,)) + body)
    if kind == "replay":
        # A record the pump accepted (it answers "malformed request": the
        # payload is not a message), replayed as recorded.
        frame = encode_frame(session.seal(payload))
        assert party.send_frame(frame)
        return frame
    if kind == "bad-tag":
        fresh = session.seal(payload)
        return encode_frame(fresh[:-1] + bytes((fresh[-1] ^ 0x01,)))
    noisy = bytearray(encode_frame(session.seal(payload)))
    middle = len(noisy) // 2
    noisy[middle] ^= 0x01 if noisy[middle] != 0x01 else 0x03  # never a zero: still one frame
    return bytes(noisy)


#: Kind of refusal -> the name the pump counts it under in the audit log.
_COUNTED_AS = {
    "garbage": "bad-auth",
    "replay": "replay",
    "bad-tag": "bad-auth",
    "bad-crc": "framing",
}


@pytest.mark.parametrize("kind", ["raw-open", "garbage", "replay", "bad-tag", "bad-crc"])
@pytest.mark.parametrize("size", SIZES)
def test_pump_refuse(
    benchmark: BenchmarkFixture, pump_party: PumpParty, size: int, kind: str
) -> None:
    benchmark.group = f"pump refuses {size} B"
    if kind == "raw-open":
        rng = random.Random(-size)
        aead = AESCCM(rng.randbytes(wire.AEAD_KEY_LEN), tag_length=wire.TAG_LEN)
        nonce = rng.randbytes(wire.AEAD_NONCE_LEN)
        payload = random.Random(size).randbytes(size)
        sealed = aead.encrypt(nonce, payload, None)

        def raw_open() -> bool:
            return aead.decrypt(nonce, sealed, None) == payload

        assert benchmark(raw_open)
        return
    party = pump_party
    frame = _refusal_frame(party, size, kind)
    pump = party.rig.pump
    receive, now = pump.receive_data, party.rig.clock.now
    # The first refusal of a flood writes the aggregated entry at once; the
    # timed ones only count (the clock does not move).
    receive(frame, now)
    seq_before = party.status().audit_next_seq

    def refuse() -> bytes:
        receive(frame, now)
        return pump.data_to_send()

    assert benchmark(refuse) == b""  # refused in silence (S12)
    assert party.status().audit_next_seq == seq_before  # counted in RAM, nothing written
    benchmark.extra_info["wire_bytes"] = f"frame {len(frame)} B for {size} B of plaintext"
    # Once the aggregation interval has passed, the counts are written and
    # the host reads them from the verified log.
    party.rig.clock.now += 200.0
    party.rig.press()
    (entry,) = [e for e in party.history(seq_before) if e.event == "rejections"]
    count = entry.fields[_COUNTED_AS[kind]]
    assert isinstance(count, int)
    assert count >= 1
