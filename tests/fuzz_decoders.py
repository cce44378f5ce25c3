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
  :class:`~protocol.audit_entry.EntryMalformed` (a ``RemoteProtocolError``);
* :meth:`protocol.SecureSession.open` (SPEC §7), on a session that has
  already accepted a few genuine records: only
  :class:`~protocol.RemoteProtocolError` subclasses; a refused record changes
  nothing (the genuine next record still opens), and anything accepted is
  refused as a replay the second time.

The first input byte picks the target; the rest is its input.  Nothing is
collected by pytest (the file name has no ``test_`` prefix).

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

Without atheris, ``python tests/fuzz_decoders.py --self-test [N]`` runs ``N``
(default 20000) seeded random and mutated inputs through the same checks,
without coverage guidance, so the harness itself can be checked anywhere.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pumpguard.protocol import (
    FrameDecoder,
    FramingError,
    MalformedMessage,
    MalformedRecord,
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
)
from pumpguard.protocol.wire import MAX_ENCODED_FRAME_LEN, MAX_RECORD_LEN

#: Genuine records sealed before the fuzzed one, so the window is not empty.
_GENUINE = 3


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


def fuzz_frame_decoder(data: bytes) -> None:
    decoder = FrameDecoder()
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
        held = len(decoder._buffer)  # the bound SPEC §3 promises
        assert held <= MAX_ENCODED_FRAME_LEN + len(chunk), held


def fuzz_decode_message(data: bytes) -> None:
    try:
        message = decode_message(data)
    except MalformedMessage:
        return
    assert encode_message(message) == data, "an accepted message has another byte form"


def fuzz_legacy_packet(data: bytes) -> None:
    try:
        packet = legacy.decode_packet(data)
    except MalformedRecord:
        return
    assert legacy.encode_packet(packet.serial, packet.opcode, packet.body) == data


def fuzz_audit_entry(data: bytes) -> None:
    cut = data[0] if data else 0
    try:
        audit_entry.decode_entry(data[1 : 1 + cut], data[1 + cut :])
    except audit_entry.EntryMalformed:
        return


def fuzz_session_open(data: bytes) -> None:
    sender = SecureSession(_keys(False), established_at=0.0)
    receiver = SecureSession(_keys(True), established_at=0.0)
    for index in range(_GENUINE):
        assert receiver.open(sender.seal(bytes([index]))) == bytes([index])
    try:
        receiver.open(data)
    except RemoteProtocolError:
        # Refused: nothing changed, the sender's next record still opens.
        assert receiver.open(sender.seal(b"next")) == b"next"
        return
    try:
        receiver.open(data)
    except ReplayRefused:
        return
    raise AssertionError("a record was accepted twice")


TARGETS: Sequence[Callable[[bytes], None]] = (
    fuzz_frame_decoder,
    fuzz_decode_message,
    fuzz_legacy_packet,
    fuzz_audit_entry,
    fuzz_session_open,
)


def one_input(data: bytes) -> None:
    """libFuzzer's entry point: byte 0 picks the target, the rest is its input."""
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def _seeds() -> list[bytes]:
    """Valid inputs for each target, for the self-test's mutations."""
    session = SecureSession(_keys(False), established_at=0.0)
    for index in range(_GENUINE):
        session.seal(bytes([index]))
    return [
        bytes([0, 7]) + encode_frame(b"\x03" + bytes(range(50))) + encode_frame(bytes(256)),
        bytes([1]) + encode_message(StatusRequest(258)),
        bytes([2]) + legacy.encode_packet(b"\x01\x02\x03", legacy.LegacyOpcode.BOLUS, b"\x00\x14"),
        bytes([3, 20]) + bytes(84),
        bytes([4]) + session.seal(b"fuzz"),
    ]


def self_test(runs: int, seed: int = 0) -> None:
    """Random and mutated inputs through :func:`one_input` (no atheris needed)."""
    rng = random.Random(seed)
    seeds = _seeds()
    for run in range(runs):
        if run % 2:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                if data and rng.random() < 0.7:
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                else:
                    data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
            one_input(bytes(data))
        else:
            one_input(rng.randbytes(rng.randint(0, 400)))


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--self-test"]:
        runs = int(argv[2]) if len(argv) > 2 else 20_000
        self_test(runs)
        print(f"fuzz_decoders: {runs} inputs, no unexpected exception")
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
