"""Coverage-guided fuzzing of every decoder that reads bytes from the link (S9; SPEC §10.1).

SPEC §10.1: "Any other exception escaping a ``protocol`` API is a bug."  This
harness feeds arbitrary bytes to

* :class:`protocol.FrameDecoder` (SPEC §3), in fuzzer-chosen chunks: only
  :class:`~protocol.FramingError` may escape, every record is 1..256 bytes,
  and the decoder never holds more than 260 bytes of an unfinished frame
  (plus the chunk just fed);
* :func:`protocol.decode_message` (SPEC §12): only
  :class:`~protocol.MalformedMessage`; anything it accepts re-encodes to the
  same bytes (one byte form per message, SPEC §12.1);
* :func:`protocol.legacy.decode_packet`: only
  :class:`~protocol.MalformedRecord`;
* :func:`protocol.audit_entry.decode_entry` (SPEC §13.4): only its documented
  :class:`~protocol.audit_entry.EntryMalformed` (a ``RemoteProtocolError``); anything
  it accepts re-encodes to the same bytes;
* :meth:`protocol.SecureSession.open` (SPEC §7), on a session that has
  already accepted a few genuine records: only
  :class:`~protocol.RemoteProtocolError` subclasses; a refused record changes
  nothing (the genuine next record still opens), and anything accepted is
  refused as a replay the second time;
* :func:`protocol.verify_policy` (SPEC §12.5), the body signed by the
  harness's prescriber key when the first byte is even (so the parser behind
  the signature is reached), raw otherwise: only
  :class:`~protocol.AuthenticationFailed` or :class:`~protocol.PolicyInvalid`,
  and never AuthenticationFailed for a body the prescriber signed.

The first input byte picks the target; the rest is its input.  pytest does not
collect this file (no ``test_`` prefix); ``tests/test_fuzz_decoders.py`` runs
:func:`self_test` with 10,000 inputs per decoder in every test run.

Running it
----------

::

    pip install atheris
    python tests/fuzz_decoders.py -atheris_runs=10000000          # ten million inputs
    python tests/fuzz_decoders.py corpus/ -atheris_runs=10000000  # keep a corpus
    python tests/fuzz_decoders.py -jobs=2 -workers=2 corpus/      # both cores

Any libFuzzer flag works (``-max_len=600``, ``-timeout=5``, ``-dict=...``).
A crash is written to ``crash-<sha1>``; replay it with
``python tests/fuzz_decoders.py crash-<sha1>``.

Without atheris, ``python tests/fuzz_decoders.py --self-test [N] [SEED]``
runs ``N`` (default 10000) seeded random and mutated inputs through *each*
decoder, with the same checks but without coverage guidance, so the harness
can run anywhere (``--self-test 1000000 7``: a long unguided run).
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pumpguard.protocol import (
    AuthenticationFailed,
    CommandOutcome,
    FrameDecoder,
    FramingError,
    MalformedMessage,
    MalformedRecord,
    Outcome,
    PolicyInvalid,
    RemoteProtocolError,
    ReplayRefused,
    SecureSession,
    SessionKeys,
    StatusRequest,
    audit_entry,
    decode_message,
    encode_frame,
    encode_message,
    legacy,
    sign_policy,
    verify_policy,
)
from pumpguard.protocol.wire import MAX_ENCODED_FRAME_LEN, MAX_RECORD_LEN

#: Genuine records sealed before the fuzzed one, so the window is not empty.
_GENUINE = 3
#: The prescriber of the policy target, and the pump its policies are for.
_PRESCRIBER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_PRESCRIBER_PUBLIC = _PRESCRIBER.public_key().public_bytes_raw()
_PUMP_ID = bytes(range(8))


def _keys(reverse: bool) -> SessionKeys:
    a, b = bytes(range(16)), bytes(range(16, 32))
    iv_a, iv_b = bytes(range(32, 40)), bytes(range(40, 48))
    if reverse:
        return SessionKeys(
            send_key=b, send_iv=iv_b, receive_key=a, receive_iv=iv_a, session_hash=bytes(32)
        )
    return SessionKeys(
        send_key=a, send_iv=iv_a, receive_key=b, receive_iv=iv_b, session_hash=bytes(32)
    )


def _chunks(data: bytes) -> list[bytes]:
    """Split ``data`` at points the data itself chooses (its first byte seeds the sizes)."""
    if not data:
        return []
    sizes = random.Random(data[0])
    out, index = [], 1
    while index < len(data):
        size = sizes.randint(1, 300)
        out.append(data[index : index + size])
        index += size
    return out


# Each target returns whether its input was accepted (a record framed, a
# message decoded, ...), so a run can show that it reached the checks made on
# accepted input, not only the refusals.


def fuzz_frame_decoder(data: bytes) -> bool:
    decoder = FrameDecoder()
    records = 0
    for chunk in _chunks(data):
        decoder.receive_data(chunk)
        while True:
            try:
                record = decoder.next_record()
            except FramingError:
                continue
            if record is None:
                break
            assert 1 <= len(record) <= MAX_RECORD_LEN
            records += 1
        held = len(decoder._buffer)  # the bound SPEC §3 promises
        assert held <= MAX_ENCODED_FRAME_LEN + len(chunk), held
    return records > 0


def fuzz_decode_message(data: bytes) -> bool:
    try:
        message = decode_message(data)
    except MalformedMessage:
        return False
    assert encode_message(message) == data, "an accepted message has another byte form"
    return True


def fuzz_legacy_packet(data: bytes) -> bool:
    try:
        packet = legacy.decode_packet(data)
    except MalformedRecord:
        return False
    assert legacy.encode_packet(packet.serial, packet.opcode, packet.body) == data
    return True


def fuzz_audit_entry(data: bytes) -> bool:
    cut = data[0] if data else 0
    raw = data[1 : 1 + cut]
    try:
        entry = audit_entry.decode_entry(raw, data[1 + cut :])
    except audit_entry.EntryMalformed:
        return False
    encoded = audit_entry.encode_entry(
        entry.seq, entry.uptime_ms, entry.event, entry.fields, entry.prev_hash
    )
    assert encoded == raw, "an accepted audit entry has another byte form"
    return True


def fuzz_session_open(data: bytes) -> bool:
    sender = SecureSession(_keys(False), established_at=0.0)
    receiver = SecureSession(_keys(True), established_at=0.0)
    for index in range(_GENUINE):
        assert receiver.open(sender.seal(bytes([index]))) == bytes([index])
    try:
        receiver.open(data)
    except RemoteProtocolError:
        # Refused: nothing changed, the sender's next record still opens.
        assert receiver.open(sender.seal(b"next")) == b"next"
        return False
    try:
        receiver.open(data)
    except ReplayRefused:
        return True
    raise AssertionError("a record was accepted twice")


def fuzz_policy(data: bytes) -> bool:
    signed = not data or data[0] % 2 == 0
    body, signature = data[1:], data[1:65]
    if signed:
        signature = sign_policy(body, _PRESCRIBER)
    else:
        body = data[65:]
    try:
        verify_policy(body, signature, prescriber_public=_PRESCRIBER_PUBLIC, for_pump=_PUMP_ID)
    except PolicyInvalid:
        return False
    except AuthenticationFailed:
        assert not signed, "a body signed by the prescriber failed authentication"
        return False
    return True


#: A decoder under test: takes the input, says whether it was accepted.
Target = Callable[[bytes], bool]

TARGETS: Sequence[Target] = (
    fuzz_frame_decoder,
    fuzz_decode_message,
    fuzz_legacy_packet,
    fuzz_audit_entry,
    fuzz_session_open,
    fuzz_policy,
)


def one_input(data: bytes) -> None:
    """libFuzzer's entry point: byte 0 picks the target, the rest is its input."""
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def _seeds() -> dict[Target, list[bytes]]:
    """Valid inputs for each target, as the self-test's starting points."""
    session = SecureSession(_keys(False), established_at=0.0)
    for index in range(_GENUINE):
        session.seal(bytes([index]))
    entry = audit_entry.encode_entry(
        7, 120_000, "bolus_started", {"pulses": 20, "cmd_id": bytes(16)}, bytes(32)
    )
    policy = bytes.fromhex("a5 01 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8")
    return {
        fuzz_frame_decoder: [
            bytes([7]) + encode_frame(b"\x03" + bytes(range(50))) + encode_frame(bytes(256)),
        ],
        fuzz_decode_message: [
            encode_message(StatusRequest(258)),
            encode_message(CommandOutcome(9, bytes(range(16)), Outcome.DELIVERED, 200, 200)),
        ],
        fuzz_legacy_packet: [
            legacy.encode_packet(b"\x01\x02\x03", legacy.LegacyOpcode.BOLUS, b"\x00\x14"),
        ],
        fuzz_audit_entry: [bytes([len(entry)]) + entry + bytes(64)],
        fuzz_session_open: [session.seal(b"fuzz")],
        fuzz_policy: [b"\x00" + policy],
    }


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        if data and rng.random() < 0.7:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    return bytes(data)


def self_test(runs: int, seed: int = 0, only: Target | None = None) -> dict[str, int]:
    """``runs`` inputs through each target (or ``only`` one), without atheris;
    returns how many inputs each target accepted.

    Each target gets its valid seeds unchanged, then, alternately, seeds with
    a few bits flipped or bytes inserted and random byte strings of 0..400
    bytes, from ``random.Random(seed)``: the same inputs on every run.
    Raises whatever a target raises (AssertionError or an undocumented
    exception) -- that is a finding.
    """
    accepted: dict[str, int] = {}
    for target, seeds in _seeds().items():
        if only is not None and target is not only:
            continue
        rng = random.Random(f"{seed}:{target.__name__}")
        count = 0
        for run in range(runs):
            if run < len(seeds):
                data = seeds[run]
            elif run % 2:
                data = _mutate(rng, rng.choice(seeds))
            else:
                data = rng.randbytes(rng.randint(0, 400))
            count += target(data)
        accepted[target.__name__] = count
    return accepted


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--self-test"]:
        runs = int(argv[2]) if len(argv) > 2 else 10_000
        seed = int(argv[3]) if len(argv) > 3 else 0
        for name, count in self_test(runs, seed).items():
            print(
                f"fuzz_decoders: {name}: {runs} inputs, {count} accepted, no unexpected exception"
            )
        return 0
    try:
        atheris: Any = importlib.import_module("atheris")
    except ImportError:
        print(
            "fuzz_decoders: atheris is not installed (pip install atheris); "
            "or run with --self-test for unguided random inputs",
            file=sys.stderr,
        )
        return 2
    atheris.instrument_all()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
