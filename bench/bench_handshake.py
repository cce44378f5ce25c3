"""Handshakes, and per-message costs of the protocols pumpguard is compared with.

``test_handshake`` times a complete handshake, both sides in one process:
for pumpguard the remote's ``start``, the pump's ``respond``, the remote's
``finish`` and both :class:`SecureSession` objects; for Noise the same
pattern (``Noise_KK_25519_AESGCM_SHA256``) through ``noiseprotocol``, from
connection objects to split transport keys.  The pairing-time precomputation
pumpguard does (``paired_peer``: static public keys, ``ss``) is not timed;
noiseprotocol has no such cache, so its figure includes deriving both
static public keys.  Bytes per message are recorded as ``wire_bytes``.

``test_peer_record`` times the per-message path of the peers: Noise
transport encrypt+decrypt next to its own floor (AES-GCM, reused cipher),
and OSCORE (RFC 8613) through aiocoap, a request protected, encoded,
decoded and unprotected, and a whole request+response.

The peers are optional (see bench/README.md): a benchmark whose package is
not installed is skipped, the rest still run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pytest_benchmark.fixture import BenchmarkFixture

from bench.parties import Pairing
from pumpguard.protocol import (
    HandshakeInitiator,
    HandshakeResponder,
    SecureSession,
    wire,
    x25519_public_bytes,
)

# Rounds of at least 100 us, so per-message benchmarks of a few us run many
# times per timer reading; a handshake takes longer than that on its own.
pytestmark = pytest.mark.benchmark(min_time=100e-6)

NOISE_PATTERN = b"Noise_KK_25519_AESGCM_SHA256"
PAYLOAD = random.Random(16).randbytes(16)

#: One handshake's products: the two sides' transport states and the length
#: of each handshake message.
Handshake = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], int, int]


def _pumpguard_handshake(pairing: Pairing) -> Callable[[], Handshake]:
    # The pump's responder is long-lived (one per pump); a remote's initiator
    # is single-use, so it is built inside the timed function.
    responder = HandshakeResponder(
        local_static=pairing.pump_static, random_bytes=pairing.random_bytes
    )
    peers = [pairing.pump_view]

    def run() -> Handshake:
        initiator = HandshakeInitiator(
            local_static=pairing.remote_static,
            peer=pairing.remote_view,
            random_bytes=pairing.random_bytes,
        )
        first = initiator.start()
        accepted = responder.respond(first, peers)
        remote = SecureSession(initiator.finish(accepted.reply), established_at=0.0)
        pump = SecureSession(accepted.keys, established_at=0.0)
        return remote.seal, pump.open, len(first), len(accepted.reply)

    return run


def _noise_handshake(pairing: Pairing) -> Callable[[], Handshake]:
    noise = pytest.importorskip("noise.connection")
    remote_private = pairing.remote_static.private_bytes_raw()
    pump_private = pairing.pump_static.private_bytes_raw()
    remote_public = x25519_public_bytes(pairing.remote_static)
    pump_public = x25519_public_bytes(pairing.pump_static)

    def run() -> Handshake:
        initiator = noise.NoiseConnection.from_name(NOISE_PATTERN)
        responder = noise.NoiseConnection.from_name(NOISE_PATTERN)
        initiator.set_as_initiator()
        responder.set_as_responder()
        initiator.set_keypair_from_private_bytes(noise.Keypair.STATIC, remote_private)
        initiator.set_keypair_from_public_bytes(noise.Keypair.REMOTE_STATIC, pump_public)
        responder.set_keypair_from_private_bytes(noise.Keypair.STATIC, pump_private)
        responder.set_keypair_from_public_bytes(noise.Keypair.REMOTE_STATIC, remote_public)
        initiator.start_handshake()
        responder.start_handshake()
        first: bytes = initiator.write_message()
        responder.read_message(first)
        second: bytes = responder.write_message()
        initiator.read_message(second)
        return initiator.encrypt, responder.decrypt, len(first), len(second)

    return run


@pytest.mark.parametrize("impl", ["pumpguard", "noise-kk"])
def test_handshake(benchmark: BenchmarkFixture, pairing: Pairing, impl: str) -> None:
    benchmark.group = "handshake, both sides"
    run = _pumpguard_handshake(pairing) if impl == "pumpguard" else _noise_handshake(pairing)
    seal, open_, first, second = benchmark(run)
    benchmark.extra_info["wire_bytes"] = f"{first} + {second} = {first + second} B"
    # The keys agree, and the messages have the sizes the spec says.
    assert open_(seal(PAYLOAD)) == PAYLOAD
    if impl == "pumpguard":
        assert (first, second) == (wire.HANDSHAKE_INIT_LEN, wire.HANDSHAKE_RESP_LEN) == (41, 41)


# --- Peers' per-message paths -----------------------------------------------

#: RFC 8613 Appendix C.1: the client's sender ID is empty, the server's is 0x01.
_OSCORE_SECRET = "0102030405060708090a0b0c0d0e0f10"  # noqa: S105 (public test vector)
_OSCORE_SALT = "9e7ca92223786340"


def _oscore_context(directory: Path, *, sender: str, recipient: str) -> Any:
    oscore = pytest.importorskip("aiocoap.oscore")
    directory.mkdir()
    settings = {
        "sender-id_hex": sender,
        "recipient-id_hex": recipient,
        "secret_hex": _OSCORE_SECRET,
        "salt_hex": _OSCORE_SALT,
    }
    (directory / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    # The stock context: AES-CCM-16-64-128 (the default, as pumpguard's suite),
    # RFC 4303-style replay window, sequence numbers persisted in chunks.
    return oscore.FilesystemSecurityContext(str(directory))


def _oscore(tmp_path: Path, *, with_response: bool) -> tuple[Callable[[], bytes], str]:
    aiocoap = pytest.importorskip("aiocoap")
    client = _oscore_context(tmp_path / "client", sender="", recipient="01")
    server = _oscore_context(tmp_path / "server", sender="01", recipient="")

    def encode(message: Any) -> bytes:
        # Message ID and token belong to the CoAP transport, which is not
        # part of this benchmark; fixed values make the message encodable.
        message.mtype = aiocoap.CON
        message.mid = 1
        message.token = b"\x01\x02"
        encoded: bytes = message.encode()
        return encoded

    def request() -> Any:
        return aiocoap.Message(code=aiocoap.POST, uri_path=("bolus",), payload=PAYLOAD)

    def run() -> bytes:
        protected, client_request_id = client.protect(request())
        received, server_request_id = server.unprotect(aiocoap.Message.decode(encode(protected)))
        if not with_response:
            payload: bytes = received.payload
            return payload
        response = aiocoap.Message(code=aiocoap.CHANGED, payload=received.payload)
        protected_response, _ = server.protect(response, server_request_id)
        answer, _ = client.unprotect(
            aiocoap.Message.decode(encode(protected_response)), client_request_id
        )
        payload = answer.payload
        return payload

    plain = len(encode(request()))
    protected = len(encode(client.protect(request())[0]))
    note = f"request {plain} B as CoAP, {protected} B with OSCORE (+{protected - plain})"
    return run, note


def _noise_transport(pairing: Pairing) -> Callable[[], bytes]:
    seal, open_, _, _ = _noise_handshake(pairing)()

    def run() -> bytes:
        return open_(seal(PAYLOAD))

    return run


def _gcm_floor() -> Callable[[], bytes]:
    rng = random.Random(12)
    aead = AESGCM(rng.randbytes(wire.AEAD_KEY_LEN))
    nonce = rng.randbytes(12)

    def run() -> bytes:
        return aead.decrypt(nonce, aead.encrypt(nonce, PAYLOAD, None), None)

    return run


@pytest.mark.parametrize("impl", ["gcm-floor", "noise", "oscore-request", "oscore-round-trip"])
def test_peer_record(
    benchmark: BenchmarkFixture, pairing: Pairing, tmp_path: Path, impl: str
) -> None:
    benchmark.group = "peers, per message 16 B"
    if impl == "gcm-floor":
        run = _gcm_floor()
    elif impl == "noise":
        run = _noise_transport(pairing)
    else:
        run, note = _oscore(tmp_path, with_response=impl == "oscore-round-trip")
        if impl == "oscore-request":
            benchmark.extra_info["wire_bytes"] = note
    assert benchmark(run) == PAYLOAD
