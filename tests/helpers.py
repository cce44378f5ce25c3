"""Shared test fixtures: real pairings and handshakes, and an independent sealer.

Sessions in the tests come from a real handshake (SPEC §6), never from
hand-made keys, so a test of the record layer (SPEC §7) also exercises the
key schedule's output sizes and direction split.

:func:`seal_at` is a second, independent implementation of the DATA record
format written straight from SPEC §7 with pyca/cryptography's ``AESCCM``.  It
lets the replay-window tests put any counter on the wire, which the real
sender (quite rightly) cannot do, and ``test_session.py`` checks it against
:meth:`SecureSession.seal` byte for byte so the two cannot drift apart.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from pumpguard.protocol import (
    FrameDecoder,
    FramingError,
    HandshakeInitiator,
    HandshakeResponder,
    PairedPeer,
    RandomBytes,
    SecureSession,
    SessionKeys,
    paired_peer,
    x25519_private,
    x25519_public_bytes,
)
from pumpguard.protocol.wire import COUNTER_LIMIT

#: Written out from SPEC §7 rather than imported, so a wrong constant in
#: ``protocol/wire.py`` makes the two implementations disagree.
DATA_TYPE = 0x03
TAG_BYTES = 8
IV_BYTES = 8


def seal_at(keys_send_key: bytes, send_iv: bytes, counter: int, plaintext: bytes) -> bytes:
    """A DATA record with an arbitrary counter, built directly from SPEC §7.

    ``record = 0x03 || counter_be32 || AES-CCM(key, tag 8)(nonce, pt, ad=None)``
    with ``nonce = record[:5] || iv (8)``.
    """
    assert len(send_iv) == IV_BYTES
    header = struct.pack(">BI", DATA_TYPE, counter)
    nonce = header + send_iv
    return header + AESCCM(keys_send_key, tag_length=TAG_BYTES).encrypt(nonce, plaintext, None)


def seeded_random(seed: int) -> RandomBytes:
    """Deterministic ``random_bytes`` for reproducible handshakes (never for real keys)."""
    return random.Random(seed).randbytes


@dataclass(frozen=True)
class Pairing:
    """One remote and one pump that have paired (SPEC §9): both static keys and both views."""

    remote_static: X25519PrivateKey
    pump_static: X25519PrivateKey
    #: What the remote keeps about the pump.
    remote_view: PairedPeer
    #: What the pump keeps about the remote.
    pump_view: PairedPeer

    @property
    def remote_public(self) -> bytes:
        return x25519_public_bytes(self.remote_static)

    @property
    def pump_public(self) -> bytes:
        return x25519_public_bytes(self.pump_static)


def make_pairing(
    random_bytes: RandomBytes = os.urandom, *, pump_static: X25519PrivateKey | None = None
) -> Pairing:
    """A fresh remote paired with a pump (a fresh pump unless ``pump_static`` is given)."""
    remote_static = x25519_private(random_bytes(32))
    if pump_static is None:
        pump_static = x25519_private(random_bytes(32))
    return Pairing(
        remote_static=remote_static,
        pump_static=pump_static,
        remote_view=paired_peer(
            remote_static, x25519_public_bytes(pump_static), local_is_remote=True
        ),
        pump_view=paired_peer(
            pump_static, x25519_public_bytes(remote_static), local_is_remote=False
        ),
    )


def initiator_for(pairing: Pairing, random_bytes: RandomBytes = os.urandom) -> HandshakeInitiator:
    return HandshakeInitiator(
        local_static=pairing.remote_static, peer=pairing.remote_view, random_bytes=random_bytes
    )


def responder_for(pairing: Pairing, random_bytes: RandomBytes = os.urandom) -> HandshakeResponder:
    return HandshakeResponder(local_static=pairing.pump_static, random_bytes=random_bytes)


def run_handshake(
    pairing: Pairing,
    *,
    remote_random: RandomBytes = os.urandom,
    pump_random: RandomBytes = os.urandom,
) -> tuple[SessionKeys, SessionKeys]:
    """Both messages of SPEC §6 in memory; returns ``(remote_keys, pump_keys)``."""
    initiator = initiator_for(pairing, remote_random)
    accepted = responder_for(pairing, pump_random).respond(initiator.start(), [pairing.pump_view])
    return initiator.finish(accepted.reply), accepted.keys


def handshake_keys(seed: int | None = None) -> tuple[SessionKeys, SessionKeys]:
    """``(remote_keys, pump_keys)`` from a fresh pairing and handshake.

    With ``seed`` everything (static keys, ephemerals) is deterministic.
    """
    if seed is None:
        return run_handshake(make_pairing())
    rng = seeded_random(seed)
    return run_handshake(make_pairing(rng), remote_random=rng, pump_random=rng)


def session_pair(
    now: float = 0.0, counter_limit: int | None = None
) -> tuple[SecureSession, SecureSession]:
    """``(remote_session, pump_session)`` over keys from a real handshake."""
    remote_keys, pump_keys = handshake_keys()
    return sessions_from(remote_keys, pump_keys, now=now, counter_limit=counter_limit)


def sessions_from(
    remote_keys: SessionKeys,
    pump_keys: SessionKeys,
    *,
    now: float = 0.0,
    counter_limit: int | None = None,
) -> tuple[SecureSession, SecureSession]:
    limit = COUNTER_LIMIT if counter_limit is None else counter_limit
    return (
        SecureSession(remote_keys, established_at=now, counter_limit=limit),
        SecureSession(pump_keys, established_at=now, counter_limit=limit),
    )


# --- Feeding decoders (after h11's tests/test_io.py tr()) -------------------

#: One event out of a :class:`FrameDecoder`: a record, or ``FRAMING_ERROR``.
FRAMING_ERROR = "FramingError"
DecoderEvent: TypeAlias = bytes | str


def drain(decoder: FrameDecoder) -> list[DecoderEvent]:
    """Pull every available event; a :class:`FramingError` becomes ``FRAMING_ERROR``."""
    events: list[DecoderEvent] = []
    while True:
        try:
            record = decoder.next_record()
        except FramingError:
            events.append(FRAMING_ERROR)
            continue
        if record is None:
            return events
        events.append(record)


def feed(chunks: Sequence[bytes] | Iterator[bytes]) -> list[DecoderEvent]:
    """Feed ``chunks`` to a fresh decoder, draining after each; return every event."""
    decoder = FrameDecoder()
    events: list[DecoderEvent] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        events += drain(decoder)
    return events


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_chunks(data: bytes, rng: random.Random, max_size: int = 40) -> list[bytes]:
    chunks = []
    index = 0
    while index < len(data):
        size = rng.randint(1, max_size)
        chunks.append(data[index : index + size])
        index += size
    return chunks


def tr(data: bytes, expected: Sequence[DecoderEvent], seed: int = 0) -> None:
    """h11's ``tr()``: the same events whole, byte by byte, in random chunks and trailed.

    "Trailed" appends bytes that end no frame; they must produce nothing.
    """
    splitters: list[Callable[[bytes], list[bytes]]] = [
        whole,
        byte_by_byte,
        lambda d: random_chunks(d, random.Random(seed)),
        lambda d: random_chunks(d, random.Random(seed + 1), max_size=3),
    ]
    for split in splitters:
        assert feed(split(data)) == list(expected)
        assert feed([*split(data), b"\x01\x02trailing"]) == list(expected)
