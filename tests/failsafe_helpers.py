"""Shared by the [fail-safe] 4 and 5 tests: remotes on a :class:`~tests.rig.Rig`.

Built only on the rig's public API (``Rig``, ``DirectLink``, ``pair``,
``seeded_random``); unlike ``Rig.remote`` a :class:`Remote` hands back its
link and journal, so a test can lose replies or close the journal before
``pumpctl`` opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rig import DirectLink, Rig, pair, seeded_random

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.audit import AuditLog
from pumpguard.host.client import UNASSIGNED_ID, RemoteClient
from pumpguard.host.journal import Journal
from pumpguard.host.keystore import KeyStore
from pumpguard.host.transport import RecordChannel
from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    Message,
    Outcome,
    wire,
    x25519_public_bytes,
)
from pumpguard.protocol.audit_entry import AuditEntry


@dataclass
class Remote:
    client: RemoteClient
    link: DirectLink
    journal: Journal
    keys: KeyStore
    keys_dir: Path

    @property
    def static_public(self) -> bytes:
        """The remote's static public key: what the pump files its outcomes under."""
        return x25519_public_bytes(self.keys.remote_static())


def attach(rig: Rig, keys_dir: Path, seed: str) -> Remote:
    link = DirectLink(rig)
    keys = KeyStore.open(keys_dir)  # creates the directory
    journal = Journal.open(keys_dir)
    client = RemoteClient(
        RecordChannel(link, clock=rig.clock),
        keys,
        journal,
        clock=rig.clock,
        sleep=rig.advance,
        random_bytes=seeded_random(seed),
    )
    return Remote(client, link, journal, keys, keys_dir)


def paired(rig: Rig, keys_dir: Path, seed: str) -> Remote:
    remote = attach(rig, keys_dir, seed)
    pair(rig, remote.client)
    return remote


def fast_forward(rig: Rig, seconds: float, step: float = 1.0) -> None:
    """Let time pass in 1 s ticks (within every catch-up bound)."""
    end = rig.clock.now + seconds
    while rig.clock.now < end:
        rig.clock.now = min(end, rig.clock.now + step)
        rig.tick()


def command_id(seq: int, tail: int = 0xA5) -> bytes:
    """A command id with sequence number ``seq`` (SPEC §12.4: seq || 8 more bytes)."""
    return seq.to_bytes(wire.COMMAND_SEQ_LEN, "big") + bytes([tail]) * wire.COMMAND_NONCE_LEN


def raw_bolus(client: RemoteClient, cid: bytes, pulses: int) -> Message:
    """Prepare and commit ``cid`` by hand (no journal); the commit's answer."""
    challenge = client.request(BolusPrepare(UNASSIGNED_ID, cid, pulses))
    assert isinstance(challenge, BolusChallenge), challenge
    return client.request(BolusCommit(UNASSIGNED_ID, cid, pulses, challenge.challenge))


def outcome_of(message: Message) -> tuple[Outcome, int, int]:
    assert isinstance(message, CommandOutcome), message
    return message.outcome, message.requested, message.delivered


def flash_audit(rig: Rig) -> list[AuditEntry]:
    """The audit log as flash holds it right now (a fresh reader)."""
    key = Ed25519PrivateKey.from_private_bytes(rig.pump.persistent.audit_key)
    return AuditLog(rig.flash, *config.FLASH_AUDIT, signing_key=key).entries()
