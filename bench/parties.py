"""A paired remote and pump, and sessions between them, for the benchmarks.

The fixtures in bench/conftest.py wrap these; benchmark modules import the
types from here rather than from the conftest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pumpguard.protocol import (
    HandshakeInitiator,
    HandshakeResponder,
    PairedPeer,
    RandomBytes,
    SecureSession,
    paired_peer,
    wire,
    x25519_private,
    x25519_public_bytes,
)


@dataclass(frozen=True)
class Pairing:
    """A remote and a pump paired with each other, as after SPEC §9."""

    remote_static: X25519PrivateKey
    pump_static: X25519PrivateKey
    #: What the remote keeps about the pump, and the pump about the remote.
    remote_view: PairedPeer
    pump_view: PairedPeer
    random_bytes: RandomBytes


def make_pairing(seed: int = 0) -> Pairing:
    """A pairing whose keys, and every later ephemeral, come from ``seed``.

    Seeded like wsproto's bench/connection.py, so runs are repeatable; the
    random stream goes on, so every handshake still gets fresh ephemerals.
    """
    random_bytes = random.Random(seed).randbytes
    remote_static = x25519_private(random_bytes(wire.X25519_KEY_LEN))
    pump_static = x25519_private(random_bytes(wire.X25519_KEY_LEN))
    return Pairing(
        remote_static=remote_static,
        pump_static=pump_static,
        remote_view=paired_peer(
            remote_static, x25519_public_bytes(pump_static), local_is_remote=True
        ),
        pump_view=paired_peer(
            pump_static, x25519_public_bytes(remote_static), local_is_remote=False
        ),
        random_bytes=random_bytes,
    )


def make_sessions(pairing: Pairing) -> tuple[SecureSession, SecureSession]:
    """``(remote, pump)`` sessions from one real handshake."""
    initiator = HandshakeInitiator(
        local_static=pairing.remote_static,
        peer=pairing.remote_view,
        random_bytes=pairing.random_bytes,
    )
    responder = HandshakeResponder(
        local_static=pairing.pump_static, random_bytes=pairing.random_bytes
    )
    accepted = responder.respond(initiator.start(), [pairing.pump_view])
    remote_keys = initiator.finish(accepted.reply)
    return (
        SecureSession(remote_keys, established_at=0.0),
        SecureSession(accepted.keys, established_at=0.0),
    )
