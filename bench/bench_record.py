"""The per-record hot path, measured against a floor taken in the same run.

The *floor* is what no implementation of the suite can beat in Python: one
AES-CCM-16-64-128 encrypt and one decrypt through ``cryptography``, with the
cipher object built once and a fixed 13-byte nonce, so nothing but the AEAD
is timed.  ``pumpguard`` is :meth:`SecureSession.seal` on the remote and
:meth:`SecureSession.open` on the pump, with sessions from a real handshake;
each ``open`` gets a fresh counter, which is why seal and open are timed
together.  bench/report.py divides the medians (targets: seal+open at most
1.5x the floor; refusing garbage or a replay at most one raw open; a bad
tag at most 1.3x one raw open).

Refusals are timed against one raw AEAD decrypt of a valid record of the
same size (``raw-open``), and, for reference, against the raw AEAD refusing
a bad tag (``raw-bad-tag``), which no refusal after an AEAD call can beat.
Each refused record is refused the same way on every call: a refusal
changes no session state (SPEC §7.3).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from pytest_benchmark.fixture import BenchmarkFixture

from bench.report import SIZES
from pumpguard.protocol import (
    AuthenticationFailed,
    RemoteProtocolError,
    ReplayRefused,
    SecureSession,
    wire,
)

# Rounds of at least 100 us: a function of 1-3 us then runs dozens of times
# per timer reading, so the timer's own cost (~0.1 us) stays out of the ratio.
pytestmark = pytest.mark.benchmark(min_time=100e-6)


def _payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _floor_cipher(size: int) -> tuple[AESCCM, bytes]:
    rng = random.Random(-size)
    return AESCCM(rng.randbytes(wire.AEAD_KEY_LEN), tag_length=wire.TAG_LEN), rng.randbytes(
        wire.AEAD_NONCE_LEN
    )


@pytest.mark.parametrize("impl", ["floor", "pumpguard"])
@pytest.mark.parametrize("size", SIZES)
def test_seal_open(
    benchmark: BenchmarkFixture,
    sessions: tuple[SecureSession, SecureSession],
    size: int,
    impl: str,
) -> None:
    benchmark.group = f"seal+open {size} B"
    payload = _payload(size)
    run: Callable[[], bytes]
    if impl == "floor":
        aead, nonce = _floor_cipher(size)

        def run() -> bytes:
            return aead.decrypt(nonce, aead.encrypt(nonce, payload, None), None)

    else:
        remote, pump = sessions

        def run() -> bytes:
            return pump.open(remote.seal(payload))

        record_len = len(remote.seal(payload))
        benchmark.extra_info["wire_bytes"] = (
            f"record {record_len} B for {size} B of plaintext (+{record_len - size})"
        )
        assert record_len == size + wire.RECORD_OVERHEAD

    assert benchmark(run) == payload


def _refuser(
    session: SecureSession, record: bytes, expected: type[RemoteProtocolError]
) -> Callable[[], bool]:
    def refuse() -> bool:
        try:
            session.open(record)
        except expected:
            return True
        return False

    return refuse


@pytest.mark.parametrize("kind", ["raw-open", "raw-bad-tag", "garbage", "replay", "bad-tag"])
@pytest.mark.parametrize("size", SIZES)
def test_refuse(
    benchmark: BenchmarkFixture,
    sessions: tuple[SecureSession, SecureSession],
    size: int,
    kind: str,
) -> None:
    benchmark.group = f"refuse {size} B"
    payload = _payload(size)
    remote, pump = sessions
    # Some traffic first, so the window is not empty.
    for _ in range(3):
        pump.open(remote.seal(payload))
    if kind == "raw-open":
        aead, nonce = _floor_cipher(size)
        sealed = aead.encrypt(nonce, payload, None)

        def raw_open() -> bool:
            return aead.decrypt(nonce, sealed, None) == payload

        assert benchmark(raw_open)
        return
    if kind == "raw-bad-tag":
        # The library's own price for a bad tag: cryptography raises
        # InvalidTag, and an exception costs more than the AES it follows.
        aead, nonce = _floor_cipher(size)
        sealed = aead.encrypt(nonce, payload, None)
        forged = sealed[:-1] + bytes((sealed[-1] ^ 0x01,))

        def raw_refuse() -> bool:
            try:
                aead.decrypt(nonce, forged, None)
            except InvalidTag:
                return True
            return False

        assert benchmark(raw_refuse)
        return

    refuse: Callable[[], bool]
    if kind == "garbage":
        # What a noisy line or a fuzzer sends: the DATA type byte, then random
        # bytes.  Its counter is almost surely new, so only the tag check can
        # refuse it.
        garbage = bytes((wire.RecordType.DATA,)) + random.Random(size).randbytes(
            size + wire.RECORD_OVERHEAD - 1
        )
        refuse = _refuser(pump, garbage, AuthenticationFailed)
    elif kind == "replay":
        accepted = remote.seal(payload)
        pump.open(accepted)
        refuse = _refuser(pump, accepted, ReplayRefused)
    else:
        fresh = remote.seal(payload)
        refuse = _refuser(pump, fresh[:-1] + bytes((fresh[-1] ^ 0x01,)), AuthenticationFailed)
    top_before = pump.highest_received
    assert benchmark(refuse)
    assert pump.highest_received == top_before
