"""The security suite: the BRIEF's link attacker and a stolen remote, against the pump.

Every attack here goes through the pump's only input -- bytes on the link --
or its front panel where the scenario says a person acts.  The verdicts come
from oracles outside the firmware's bookkeeping:

* the **motor witness** (``rig.motor.pulses``; ``pumpsim status --json``
  ``motor_pulses`` for the processes): every pulse the hardware made;
* an **independent basal model**: 20 pulses per hour from each boot (the
  factory rate, SPEC/BRIEF), so ``motor - basal`` is what boluses moved;
* the **bytes the pump put on the wire** in answer: an unauthenticated frame
  must be answered with nothing at all (SPEC §10.2, S12).

Sections and the properties they try to break:

* replay (S2, S3; SPEC §6.4, §6.5, §7.3, §8, §9.4, §12.3): within the
  session, after a pump reboot, across sessions, reflected to its sender,
  after unpairing, after re-pairing, and a recorded pairing replayed;
* tamper (S1; SPEC §3, §7.2): every single-bit flip of a bolus commit (as
  a record re-framed with a good CRC, and as raw frame bytes), truncation,
  extension, splicing of two records;
* spoof (S1, S4; SPEC §2, §6, §9): a never-paired remote, a fake pump
  answering the remote's handshake or pairing, other suite names and type
  bytes, checked against an independent implementation of SPEC §6.2;
* denial of service (S9, S10): garbage at line rate for an hour, oversized
  and slow frames, a storm of bad tags; basal stays exact, the audit log
  grows by a bounded number of entries, the legitimate remote works at once;
* a compromised remote key (S6, S4): boluses within limits only, no limit
  change without the prescriber's signature, no new pairing without the
  front panel;
* the legacy baseline (BRIEF): the same tap-and-replay tools make the
  recalled design deliver a recorded bolus twice and pumpguard zero times,
  in-process and as ``pumpsim`` / ``pumpctl`` processes on pty pairs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pumpguard.firmware_sim.legacy import LegacyPump
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import PumpMode
from pumpguard.firmware_sim.runner import Firmware, ScaledClock, running_in_thread
from pumpguard.host.capture import CaptureWriter, Direction, read_capture
from pumpguard.host.client import (
    ClientError,
    LinkDown,
    PumpRefused,
    RemoteClient,
)
from pumpguard.host.inmemory import TICK_S, Remote, Rig, SimulatedClock, records_in, seeded_random
from pumpguard.host.journal import Journal
from pumpguard.host.keystore import KeyStore
from pumpguard.host.rawremote import RawRemote
from pumpguard.host.tap import FaultPlan, Tap, replay, run_tap
from pumpguard.host.transport import MemoryLink, RecordChannel, create_vnull
from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    FrameDecoder,
    FramingError,
    LimitPolicy,
    MessageType,
    Outcome,
    PairingResponder,
    ProtocolError,
    RefusalCode,
    Refused,
    Status,
    StatusRequest,
    encode_frame,
    encode_policy,
    legacy,
    pump_id,
    sign_policy,
    x25519_private,
)

# --- independent oracles (written from the BRIEF and SPEC, not imported) ----------------

#: Factory basal: 1.0 U/h = 20 pulses per hour, from each boot.
BASAL_PULSES_PER_HOUR = 20
MS_PER_HOUR = 3_600_000
#: 115200 baud, 8N1: 11520 bytes per second.
LINE_RATE_BYTES_PER_S = 11_520
#: SPEC §2, written out so a changed constant would make the two disagree.
SPEC_SUITE = b"pumpguard/1 KK-X25519 AES-CCM-16-64-128 SHA-256"
HANDSHAKE_INIT, HANDSHAKE_RESP, DATA = 0x01, 0x02, 0x03
FACTORY_MAX_BOLUS, FACTORY_MAX_1H = 200, 300


def ms(now: float) -> int:
    return math.floor(now * 1000)


class World:
    """The rig plus the oracles: motor witness, basal model, the pump's answers."""

    def __init__(self, tmp_path: Path) -> None:
        self.rig = Rig()
        self.tmp = tmp_path
        self._boot_ms = ms(self.rig.clock.now)
        self._basal_before_boot = 0
        self._motor_at_start = self.rig.motor.pulses

    def remote(self, name: str, *, copy_of: Path | None = None) -> Remote:
        path = self.tmp / name
        if copy_of is not None:
            shutil.copytree(copy_of, path, ignore=shutil.ignore_patterns("journal*"))
        return self.rig.attach(path, seed=f"client/{name}")

    def paired_remote(self, name: str = "remote") -> Remote:
        return self.rig.paired_remote(self.tmp / name, seed=f"client/{name}")

    def reboot(self) -> None:
        self._basal_before_boot = self.expected_basal()
        self.rig.reboot()
        self._boot_ms = ms(self.rig.clock.now)

    def expected_basal(self) -> int:
        """Basal pulses due by now: 20/h from each boot, nothing else."""
        elapsed = ms(self.rig.clock.now) - self._boot_ms
        return self._basal_before_boot + elapsed * BASAL_PULSES_PER_HOUR // MS_PER_HOUR

    def bolus_by_witness(self) -> int:
        """Bolus pulses the motor made: every pulse minus the basal due."""
        return self.rig.motor.pulses - self._motor_at_start - self.expected_basal()

    def pump_output(self) -> bytes:
        """What the pump wrote since the last look (and nobody read)."""
        return self.rig.take_output()

    def inject(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.rig.inject(chunk)

    def assert_basal_exact(self) -> None:
        delivery = self.rig.pump.delivery
        assert delivery.basal_pulses_delivered == self.expected_basal()
        assert delivery.basal_pulses_missed == 0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.rig.close()


def recorded_since(world: World, start: int) -> list[bytes]:
    return list(world.rig.from_remote[start:])


def settle(world: World, seconds: float = 600.0) -> None:
    """Let any bolus that a replay might have started run to its end (200 pulses: 400 s)."""
    world.rig.advance(seconds)


# --- replay (S2, S3) ---------------------------------------------------------------------


def test_a_bolus_replayed_in_its_own_session_delivers_nothing_and_gets_no_answer(
    world: World,
) -> None:
    remote = world.paired_remote()
    remote.client.status()  # the session exists before the recording starts
    start = len(world.rig.from_remote)
    result = remote.client.bolus(20)
    assert result.delivered_pulses == 20 == world.bolus_by_witness()
    recording = recorded_since(world, start)
    assert recording
    assert all(r[0] == DATA for c in recording for r in records_in(c))
    world.pump_output()

    world.inject(recording)
    settle(world)
    assert world.bolus_by_witness() == 20
    assert world.pump_output() == b""  # not one byte in answer (SPEC §10.2)
    # The session the replay tried to reuse still works, and delivers exactly once.
    assert remote.client.bolus(10).delivered_pulses == 10
    assert world.bolus_by_witness() == 30


def test_a_bolus_replayed_after_the_pump_rebooted_delivers_nothing(world: World) -> None:
    remote = world.paired_remote()
    start = len(world.rig.from_remote)
    remote.client.bolus(20)  # handshake and bolus, all recorded
    recording = recorded_since(world, start)
    world.reboot()
    world.inject(recording)
    settle(world)
    assert world.bolus_by_witness() == 20
    # After a reboot the pump has forgotten the recent ephemerals, so it may
    # answer the replayed HANDSHAKE_INIT -- but never a command.
    answered = records_in(world.pump_output())
    assert all(r[0] == HANDSHAKE_RESP for r in answered)
    assert remote.client.bolus(10).delivered_pulses == 10
    assert world.bolus_by_witness() == 30
    world.assert_basal_exact()


def test_a_bolus_replayed_into_a_later_session_is_refused_and_does_not_disturb_it(
    world: World,
) -> None:
    remote = world.paired_remote()
    start = len(world.rig.from_remote)
    remote.client.bolus(20)
    recording = recorded_since(world, start)
    remote.client.connect()  # session 2
    remote.client.status()  # confirmed (SPEC §6.4)
    world.pump_output()
    world.inject(recording)
    settle(world, 60)
    assert world.pump_output() == b""  # a recent ephemeral: HandshakeRefused, silently
    sent_before = len(remote.link.sent)
    remote.client.status()
    assert len(remote.link.sent) == sent_before + 1  # no new handshake was needed
    assert world.bolus_by_witness() == 20


def test_the_pumps_own_records_reflected_back_to_it_are_refused(world: World) -> None:
    remote = world.paired_remote()
    first = len(remote.link.received)
    remote.client.bolus(20)
    reflected = remote.link.received[first:]
    assert reflected
    world.inject(reflected)
    settle(world)
    assert world.pump_output() == b""
    assert world.bolus_by_witness() == 20
    remote.client.status()  # and the remote's session is undisturbed


@pytest.mark.parametrize("by", ["remote", "pump panel"])
def test_a_bolus_replayed_after_unpairing_delivers_nothing(world: World, by: str) -> None:
    remote = world.paired_remote()
    start = len(world.rig.from_remote)
    remote.client.bolus(20)
    recording = recorded_since(world, start)
    if by == "remote":
        remote.client.unpair()
        assert remote.keys.pairing() is None  # S11: the remote erased its key too
    else:
        world.rig.press(Button.UNPAIR_ALL)
    assert world.rig.pump.persistent.remotes == ()
    world.pump_output()
    world.inject(recording)
    settle(world)
    assert world.pump_output() == b""  # no paired remote: not even a handshake answer
    assert world.bolus_by_witness() == 20


@pytest.mark.parametrize("same_key", [True, False])
def test_a_bolus_replayed_after_re_pairing_delivers_nothing(world: World, same_key: bool) -> None:
    remote = world.paired_remote()
    start = len(world.rig.from_remote)
    remote.client.bolus(20)
    recording = recorded_since(world, start)
    if same_key:
        world.rig.press(Button.UNPAIR_ALL)  # the remote keeps its static key
        world.reboot()  # and the pump forgets the recent ephemerals
        again = remote
    else:
        remote.client.unpair()
        again = world.remote("second")
    world.rig.pair(again.client)
    # A new pairing switches remote bolus off (SPEC §9.5): the user switches it on again.
    world.rig.press(Button.REMOTE_BOLUS_ON)
    world.pump_output()
    world.inject(recording)
    settle(world)
    assert world.bolus_by_witness() == 20
    assert all(r[0] == HANDSHAKE_RESP for r in records_in(world.pump_output()))
    assert again.client.bolus(10).delivered_pulses == 10
    assert world.bolus_by_witness() == 30


def test_a_recorded_pairing_replayed_to_a_blindly_confirming_user_pairs_nothing(
    world: World,
) -> None:
    """SPEC §9.4: N_p is fresh, so the replayed M_r fails even if the user confirms."""
    start = len(world.rig.from_remote)
    world.paired_remote()
    pairing = [c for c in recorded_since(world, start) if records_in(c)[0][0] >= 0x10]
    remotes = world.rig.pump.persistent.remotes
    world.rig.user.trusts_blindly = True
    world.rig.press(Button.PAIR)
    world.inject(pairing)
    world.rig.advance(5)
    assert world.rig.pump.persistent.remotes == remotes
    assert not any(r[0] == 0x15 for r in records_in(world.pump_output()))  # no PAIR_PUMP_CONFIRM


# --- tamper (S1) -------------------------------------------------------------------------


@pytest.fixture
def commit_ready(world: World) -> tuple[RawRemote, BolusCommit]:
    """A live session and a challenge: a BolusCommit the pump would execute."""
    remote = world.paired_remote()
    world.rig.user.opens_pairing = False  # nobody at the pump to open pairing mode
    raw = RawRemote.from_keys(world.rig, remote.path, random_bytes=random.Random(7).randbytes)
    raw.connect()
    command_id = bytes(range(16))
    challenge = raw.exchange(BolusPrepare(raw.next_id(), command_id, 20))
    assert isinstance(challenge, BolusChallenge)
    return raw, BolusCommit(raw.next_id(), command_id, 20, challenge.challenge)


@pytest.mark.parametrize(("held_s", "executes"), [(29.0, True), (31.0, False)])
def test_a_commit_held_back_past_its_challenge_lifetime_is_refused(
    world: World, commit_ready: tuple[RawRemote, BolusCommit], held_s: float, executes: bool
) -> None:
    """S3, SPEC §12.3: the pump judges freshness on its own clock (challenge TTL 30 s)."""
    raw, commit = commit_ready
    record = raw.seal(commit)  # sealed now, released by the attacker later
    world.rig.advance(held_s)
    answer = raw.open(raw.send(record))
    settle(world, 60)
    if executes:
        assert isinstance(answer, CommandOutcome)
        assert world.bolus_by_witness() == 20
    else:
        assert isinstance(answer, Refused)
        assert answer.code is RefusalCode.CHALLENGE_INVALID
        assert world.bolus_by_witness() == 0


def flips(data: bytes) -> Iterator[bytes]:
    for bit in range(len(data) * 8):
        out = bytearray(data)
        out[bit // 8] ^= 0x80 >> (bit % 8)
        yield bytes(out)


def assert_silently_refused(world: World, records: list[bytes], *, framed: bool = True) -> None:
    for record in records:
        world.rig.inject(encode_frame(record) if framed else record + b"\x00")
        assert world.pump_output() == b"", record.hex()
    assert world.bolus_by_witness() == 0


def assert_genuine_commit_still_works(world: World, raw: RawRemote, commit: BolusCommit) -> None:
    """Refused records changed no state: the real commit executes, exactly once."""
    outcome = raw.exchange(commit)
    assert isinstance(outcome, CommandOutcome)
    assert outcome.outcome is Outcome.IN_PROGRESS
    settle(world, 60)
    assert world.bolus_by_witness() == 20


def test_every_single_bit_flip_of_a_bolus_commit_record_is_refused(
    world: World, commit_ready: tuple[RawRemote, BolusCommit]
) -> None:
    raw, commit = commit_ready
    record = raw.seal(commit)
    # Re-framed with a correct CRC: the attacker recomputes it (it is no MAC).
    assert_silently_refused(world, list(flips(record)))
    assert_genuine_commit_still_works(world, raw, BolusCommit(*_fields(commit)))


def _fields(commit: BolusCommit) -> tuple[int, bytes, int, bytes]:
    return commit.request_id, commit.command_id, commit.pulses, commit.challenge


def test_every_single_bit_flip_of_a_bolus_commit_frame_is_refused(
    world: World, commit_ready: tuple[RawRemote, BolusCommit]
) -> None:
    raw, commit = commit_ready
    record = raw.seal(commit)
    frame = encode_frame(record)
    for damaged in flips(frame):
        # A flipped delimiter merges with what follows; a lone 0x00 resyncs.
        world.rig.inject(damaged + b"\x00")
        assert world.pump_output() == b""
    assert world.bolus_by_witness() == 0
    outcome = raw.open(raw.send(record))  # the undamaged record, same counter
    assert isinstance(outcome, CommandOutcome)
    assert outcome.outcome is Outcome.IN_PROGRESS
    settle(world, 60)
    assert world.bolus_by_witness() == 20


def test_truncated_and_extended_commits_are_refused(
    world: World, commit_ready: tuple[RawRemote, BolusCommit]
) -> None:
    raw, commit = commit_ready
    record = raw.seal(commit)
    rng = random.Random(1)
    truncated = [record[:n] for n in range(1, len(record))]
    extended = [record + extra for extra in (b"\x00", b"\x01", rng.randbytes(8))]
    extended.append(record + rng.randbytes(256 - len(record)))  # the largest record
    assert_silently_refused(world, truncated + extended)
    outcome = raw.open(raw.send(record))
    assert isinstance(outcome, CommandOutcome)
    settle(world, 60)
    assert world.bolus_by_witness() == 20


def test_splices_of_two_genuine_records_are_refused(
    world: World, commit_ready: tuple[RawRemote, BolusCommit]
) -> None:
    raw, commit = commit_ready
    one = raw.seal(commit)  # counter n
    two = raw.seal(StatusRequest(raw.next_id()))  # counter n + 1, never sent
    splices = {
        one[:5] + two[5:],  # one's header, two's body and tag
        two[:5] + one[5:],
        one[:-8] + two[-8:],  # tag swap
        one + two[5:],  # two bodies in one record
        two + one[5:],
    }
    for cut in range(1, min(len(one), len(two))):
        splices |= {one[:cut] + two[cut:], two[:cut] + one[cut:]}
    splices -= {one, two}
    assert_silently_refused(world, sorted(splices))
    # Frame-level splices (half a frame each) are refused by the CRC or the tag.
    frame_one, frame_two = encode_frame(one), encode_frame(two)
    for cut in range(1, min(len(frame_one), len(frame_two)) - 1):
        spliced = frame_one[:cut] + frame_two[cut:]
        if spliced != frame_two:  # a cut inside the common prefix gives frame two itself
            world.rig.inject(spliced)
            assert world.pump_output() == b""
    assert isinstance(raw.open(raw.send(one)), CommandOutcome)
    assert isinstance(raw.open(raw.send(two)), Status)
    settle(world, 60)
    assert world.bolus_by_witness() == 20


# --- spoof (S1, S4) ----------------------------------------------------------------------


def _x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _mix_key(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=48, salt=ck, info=b"").derive(ikm)
    return okm[:32], okm[32:]


def _tag(key: bytes, h: bytes) -> bytes:
    return AESCCM(key, tag_length=8).encrypt(bytes(13), b"", h)


def independent_init(
    suite: bytes, remote: X25519PrivateKey, pump_public: bytes, ephemeral: X25519PrivateKey
) -> bytes:
    """HANDSHAKE_INIT written straight from SPEC §6.1-6.2, with any suite name."""
    h = _sha256(suite)
    ck = h
    h = _sha256(h + _x25519_public(remote))
    h = _sha256(h + pump_public)
    ss = remote.exchange(X25519PublicKey.from_public_bytes(pump_public))
    ck, k1 = _mix_key(ck, ss)
    e_public = _x25519_public(ephemeral)
    h = _sha256(h + bytes([HANDSHAKE_INIT]) + e_public)
    return bytes([HANDSHAKE_INIT]) + e_public + _tag(k1, h)


def independent_resp(
    init: bytes,
    *,
    static: X25519PrivateKey,
    transcript_pump_public: bytes,
    remote_public: bytes,
    ephemeral: X25519PrivateKey,
) -> bytes:
    """HANDSHAKE_RESP from SPEC §6.3, computed with ``static`` (a fake pump's key)."""
    h = _sha256(SPEC_SUITE)
    ck = h
    h = _sha256(_sha256(h + remote_public) + transcript_pump_public)
    ck, _k1 = _mix_key(ck, static.exchange(X25519PublicKey.from_public_bytes(remote_public)))
    e_remote, tag1 = init[1:33], init[33:]
    h = _sha256(_sha256(h + bytes([HANDSHAKE_INIT]) + e_remote) + tag1)
    e_pump = _x25519_public(ephemeral)
    h = _sha256(h + bytes([HANDSHAKE_RESP]) + e_pump)
    remote_e = X25519PublicKey.from_public_bytes(e_remote)
    dh = (
        static.exchange(remote_e)
        + ephemeral.exchange(remote_e)
        + ephemeral.exchange(X25519PublicKey.from_public_bytes(remote_public))
    )
    _ck, k2 = _mix_key(ck, dh)
    return bytes([HANDSHAKE_RESP]) + e_pump + _tag(k2, h)


def _keys_of(remote: Remote) -> tuple[X25519PrivateKey, bytes]:
    pairing = remote.keys.pairing()
    assert pairing is not None
    return remote.keys.remote_static(), pairing.pump_static


def test_the_independent_handshake_is_accepted_and_other_suite_names_are_not(
    world: World,
) -> None:
    remote = world.paired_remote()
    static, pump_public = _keys_of(remote)
    rng = random.Random(3)
    world.pump_output()
    for suite in (
        b"pumpguard/2 KK-X25519 AES-CCM-16-64-128 SHA-256",
        b"pumpguard/1 KK-X25519 AES-GCM-16-128-128 SHA-256",
        b"pumpguard/1 NK-X25519 AES-CCM-16-64-128 SHA-256",
        SPEC_SUITE + b" ",
        SPEC_SUITE.lower(),
        b"",
    ):
        init = independent_init(suite, static, pump_public, x25519_private(rng.randbytes(32)))
        world.rig.inject(encode_frame(init))
        assert world.pump_output() == b"", suite
    # The control: the SPEC's own suite, computed the same way, is answered.
    init = independent_init(SPEC_SUITE, static, pump_public, x25519_private(rng.randbytes(32)))
    world.rig.inject(encode_frame(init))
    (answer,) = records_in(world.pump_output())
    assert answer[0] == HANDSHAKE_RESP
    assert len(answer) == 41


def test_a_rewritten_type_byte_is_refused_for_handshakes_and_data(world: World) -> None:
    remote = world.paired_remote()
    world.rig.user.opens_pairing = False
    static, pump_public = _keys_of(remote)
    init = independent_init(SPEC_SUITE, static, pump_public, x25519_private(bytes(range(32))))
    for kind in range(256):
        if kind != HANDSHAKE_INIT:
            world.rig.inject(encode_frame(bytes([kind]) + init[1:]))
            assert world.pump_output() == b"", kind
    world.rig.inject(encode_frame(init))
    assert [r[0] for r in records_in(world.pump_output())] == [HANDSHAKE_RESP]

    raw = RawRemote.from_keys(world.rig, remote.path, random_bytes=random.Random(11).randbytes)
    raw.connect()
    record = raw.seal(StatusRequest(raw.next_id()))
    for kind in range(256):
        if kind != DATA:
            world.rig.inject(encode_frame(bytes([kind]) + record[1:]))
            assert world.pump_output() == b"", kind
    assert isinstance(raw.open(raw.send(record)), Status)
    assert world.rig.pump.mode is PumpMode.RUNNING


def test_a_never_paired_remote_that_knows_the_pumps_public_key_gets_nothing(
    world: World,
) -> None:
    """The pump's static key is public (PAIR_COMMIT carries it): it must be worth nothing."""
    remote = world.paired_remote()
    _, pump_public = _keys_of(remote)
    intruder = world.remote("intruder")
    intruder.keys.remote_static(seeded_random("intruder key"))
    intruder.keys.save_pairing(pump_public, pump_id(pump_public))  # "paired" on its own
    world.pump_output()
    with pytest.raises(LinkDown, match="does not answer the handshake"):
        intruder.client.bolus(20)
    assert intruder.journal.pending() == []  # refused at the handshake: never sent
    assert intruder.link.received == []  # the pump never said a word to it
    assert world.bolus_by_witness() == 0
    assert len(world.rig.pump.persistent.remotes) == 1
    # A hand-made handshake with a fresh key, and DATA under made-up keys: silence.
    rng = random.Random(5)
    for _ in range(20):
        fake = x25519_private(rng.randbytes(32))
        world.rig.inject(
            encode_frame(
                independent_init(SPEC_SUITE, fake, pump_public, x25519_private(rng.randbytes(32)))
            )
        )
        world.rig.inject(encode_frame(bytes([DATA]) + rng.randbytes(40)))
    assert world.pump_output() == b""
    assert remote.client.bolus(5).delivered_pulses == 5


class FakePump:
    """Something on the remote's link that is not its pump (a :class:`Link`)."""

    def __init__(self, clock: SimulatedClock, answer: Callable[[bytes], list[bytes]]) -> None:
        self._clock = clock
        self._answer = answer
        self._decoder = FrameDecoder()
        self._outbox = bytearray()
        self.heard: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        while True:
            try:
                record = self._decoder.next_record()
            except FramingError:
                continue
            if record is None:
                return
            self.heard.append(record)
            for reply in self._answer(record):
                self._outbox += encode_frame(reply)

    def read(self, timeout: float) -> bytes:
        if not self._outbox:
            self._clock.now += max(timeout, 0.001)
            return b""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def close(self) -> None:
        return None


def client_on(
    link: FakePump, keys_dir: Path, clock: SimulatedClock
) -> tuple[RemoteClient, Journal]:
    journal = Journal.open(keys_dir)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    client = RemoteClient(
        RecordChannel(link, clock=clock),
        KeyStore.open(keys_dir),
        journal,
        clock=clock,
        sleep=sleep,
        random_bytes=seeded_random(f"victim/{keys_dir.name}"),
    )
    return client, journal


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("fake", ["random", "own key", "recorded answer", "reflected"])
def test_a_fake_pump_answering_the_handshake_is_refused_and_nothing_is_stored(
    world: World, tmp_path: Path, fake: str
) -> None:
    remote = world.paired_remote()
    remote.client.status()  # a genuine HANDSHAKE_RESP goes by on the wire
    genuine = [r for c in remote.link.received for r in records_in(c) if r[0] == HANDSHAKE_RESP]
    static, pump_public = _keys_of(remote)
    remote_public = _x25519_public(static)
    victim_dir = tmp_path / "victim"
    shutil.copytree(remote.path, victim_dir, ignore=shutil.ignore_patterns("journal*"))
    rng = random.Random(fake)
    fake_static = x25519_private(rng.randbytes(32))

    def answer(record: bytes) -> list[bytes]:
        if record[0] != HANDSHAKE_INIT:
            return [bytes([DATA]) + rng.randbytes(30)]
        if fake == "random":
            return [bytes([HANDSHAKE_RESP]) + rng.randbytes(40)]
        if fake == "own key":
            return [
                independent_resp(
                    record,
                    static=fake_static,
                    transcript_pump_public=pump_public,
                    remote_public=remote_public,
                    ephemeral=x25519_private(rng.randbytes(32)),
                )
            ]
        if fake == "recorded answer":
            return genuine[:1]
        return [bytes([HANDSHAKE_RESP]) + record[1:]]

    clock = SimulatedClock()
    link = FakePump(clock, answer)
    client, journal = client_on(link, victim_dir, clock)
    before = snapshot(victim_dir)
    try:
        with pytest.raises(LinkDown):
            client.status()
    finally:
        journal.close()
    assert link.heard
    assert all(r[0] == HANDSHAKE_INIT for r in link.heard)  # no command was sent
    after = snapshot(victim_dir)
    assert {k: v for k, v in after.items() if not k.startswith("journal")} == {
        k: v for k, v in before.items() if not k.startswith("journal")
    }
    assert journal.pending() == []
    assert journal.settled() == []


def _fake_pump_for_pairing(
    fault: str, rng: random.Random, clock: SimulatedClock
) -> Callable[[bytes], list[bytes]]:
    responder = PairingResponder(x25519_private(rng.randbytes(32)), rng.randbytes)

    def answer(record: bytes) -> list[bytes]:
        if record[0] == 0x10:
            commit = responder.receive_request(record)
            if fault == "small-order key":
                return [bytes([0x11]) + bytes(32) + commit[33:]]  # S_p = 0: refused by §5
            return [commit]
        if record[0] == 0x12:
            reply, _code = responder.receive_remote_nonce(record)
            return [reply[:1] + rng.randbytes(16)]  # a nonce its commitment does not open
        return []

    return answer


@pytest.mark.parametrize("fault", ["nonce not committed", "small-order key"])
def test_a_fake_pump_in_pairing_stores_nothing(tmp_path: Path, fault: str) -> None:
    clock = SimulatedClock()
    link = FakePump(clock, _fake_pump_for_pairing(fault, random.Random(fault), clock))
    keys_dir = tmp_path / "remote"
    KeyStore.open(keys_dir)
    client, journal = client_on(link, keys_dir, clock)
    shown: list[str] = []

    def user_agrees(code: str) -> bool:
        shown.append(code)
        return True

    try:
        with pytest.raises((ClientError, ProtocolError)):
            client.pair(user_agrees)
    finally:
        journal.close()
    assert shown == []  # no code was ever put to the user
    assert KeyStore.open(keys_dir).pairing() is None


@pytest.mark.parametrize("fault", ["nonce not committed", "small-order key"])
def test_a_fake_pump_in_pairing_is_a_client_error_pumpctl_can_report(
    tmp_path: Path, fault: str
) -> None:
    """Regression: RemoteClient.pair let protocol.AuthenticationFailed escape (not a
    ClientError), so pumpctl pair crashed with a traceback instead of exiting 2."""
    clock = SimulatedClock()
    link = FakePump(clock, _fake_pump_for_pairing(fault, random.Random(fault), clock))
    keys_dir = tmp_path / "remote"
    KeyStore.open(keys_dir)
    client, journal = client_on(link, keys_dir, clock)
    try:
        with pytest.raises(ClientError, match=r"pairing refused.*nothing was stored"):
            client.pair(lambda code: True)
    finally:
        journal.close()
    assert KeyStore.open(keys_dir).pairing() is None


# --- denial of service (S9, S10) -----------------------------------------------------------


def flood(world: World, seconds: float, chunk: Callable[[int], bytes]) -> None:
    """Feed ``chunk(i)`` to the pump every tick for ``seconds``; basal checked every minute."""
    rig = world.rig
    start = rig.clock.now
    for i in range(round(seconds / TICK_S)):
        rig.clock.now = start + (i + 1) * TICK_S
        rig.pump.receive_data(chunk(i), rig.clock.now)
        rig.tick()
        if i % round(60 / TICK_S) == 0:
            world.assert_basal_exact()
    world.assert_basal_exact()


def audit_entries(remote: Remote) -> int:
    return remote.client.status().audit_next_seq


def assert_works_right_away(world: World, remote: Remote) -> None:
    """The legitimate remote is served at once (at most one resend: its first
    frame may merge with the attacker's unfinished one) and delivers exactly."""
    before = world.bolus_by_witness()
    start = world.rig.clock.now
    remote.client.status()
    assert world.rig.clock.now - start <= 2.5
    assert remote.client.bolus(10).delivered_pulses == 10
    assert world.bolus_by_witness() == before + 10


def _audit_bound(seconds: float) -> int:
    """audit.py: a flood lasting T writes about 2 + log2(T / 60 s) entries."""
    return 3 + math.ceil(math.log2(max(seconds / 60, 1)))


def test_garbage_at_line_rate_for_an_hour_disturbs_nothing(world: World) -> None:
    remote = world.paired_remote()
    world.rig.user.opens_pairing = False
    entries = audit_entries(remote)
    world.pump_output()
    rng = random.Random(1)
    per_tick = round(LINE_RATE_BYTES_PER_S * TICK_S)
    flood(world, 3600, lambda i: rng.randbytes(per_tick))
    assert world.pump_output() == b""
    assert world.expected_basal() >= 20
    assert world.bolus_by_witness() == 0
    assert audit_entries(remote) - entries <= _audit_bound(3600)
    assert_works_right_away(world, remote)


def test_oversized_frames_neither_grow_memory_nor_lock_out_the_remote(world: World) -> None:
    remote = world.paired_remote()
    world.rig.user.opens_pairing = False
    entries = audit_entries(remote)
    world.pump_output()
    chunk = bytes(range(1, 256)) * 4  # 1020 bytes, no delimiter
    flood(world, 60, lambda i: chunk)  # 1.2 MB in one frame that never ends
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        flood(world, 60, lambda i: chunk + (b"\x00" if i % 50 == 49 else b""))
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"pump memory grew by {grown} bytes over a 1.2 MB flood"
    assert world.pump_output() == b""
    assert audit_entries(remote) - entries <= _audit_bound(120)
    assert_works_right_away(world, remote)


def test_a_slow_frame_trickled_for_ten_minutes_disturbs_nothing(world: World) -> None:
    remote = world.paired_remote()
    world.rig.user.opens_pairing = False
    world.pump_output()
    rng = random.Random(2)
    every = round(1.0 / TICK_S)  # one byte a second, never a delimiter
    flood(world, 600, lambda i: bytes([rng.randint(1, 255)]) if i % every == 0 else b"")
    assert world.pump_output() == b""
    assert_works_right_away(world, remote)  # the unfinished frame is still pending


def test_a_storm_of_bad_tags_then_the_real_remote_works_at_once(world: World) -> None:
    remote = world.paired_remote()
    world.rig.user.opens_pairing = False
    remote.client.status()
    entries = audit_entries(remote)
    sent = len(remote.link.sent)
    world.pump_output()
    rng = random.Random(3)
    counter = [0]

    def bad_records(i: int) -> bytes:
        out = bytearray()
        for _ in range(5):  # ~250 frames a second, near line rate
            counter[0] += 1
            if counter[0] % 2:
                # A DATA record whose counter is fresh (even far ahead): only the tag fails.
                c = rng.choice([counter[0] + 1000, 2**31, 2**32 - 2])
                out += encode_frame(bytes([DATA]) + c.to_bytes(4, "big") + rng.randbytes(30))
            else:
                out += encode_frame(bytes([HANDSHAKE_INIT]) + rng.randbytes(40))
        return bytes(out)

    flood(world, 120, bad_records)
    assert counter[0] >= 10_000
    assert world.pump_output() == b""
    assert audit_entries(remote) - entries <= _audit_bound(120)
    # The storm moved no replay window: the session goes on without a new handshake.
    assert not any(r[0] == HANDSHAKE_INIT for c in remote.link.sent[sent:] for r in records_in(c))
    assert_works_right_away(world, remote)


# --- a compromised remote key (S6, S4) ----------------------------------------------------


@pytest.fixture
def stolen(world: World) -> tuple[Remote, Remote]:
    """The patient's remote and an attacker holding a copy of its keys directory."""
    remote = world.paired_remote()
    attacker = world.remote("attacker", copy_of=remote.path)
    return remote, attacker


def test_a_stolen_key_cannot_exceed_the_single_or_hourly_limit(
    world: World, stolen: tuple[Remote, Remote]
) -> None:
    _, attacker = stolen
    with pytest.raises(PumpRefused) as refused:
        attacker.client.bolus(FACTORY_MAX_BOLUS + 1)
    assert refused.value.code is RefusalCode.OVER_SINGLE_LIMIT
    assert attacker.client.bolus(FACTORY_MAX_BOLUS).delivered_pulses == FACTORY_MAX_BOLUS
    with pytest.raises(PumpRefused) as refused:
        attacker.client.bolus(FACTORY_MAX_1H - FACTORY_MAX_BOLUS + 1)
    assert refused.value.code is RefusalCode.OVER_1H_LIMIT
    assert refused.value.detail == FACTORY_MAX_1H - FACTORY_MAX_BOLUS
    settle(world, 60)
    assert world.bolus_by_witness() == FACTORY_MAX_BOLUS


def test_a_stolen_key_cannot_bolus_when_remote_bolus_is_off(
    world: World, stolen: tuple[Remote, Remote]
) -> None:
    _, attacker = stolen
    world.rig.press(Button.REMOTE_BOLUS_OFF)
    with pytest.raises(PumpRefused) as refused:
        attacker.client.bolus(1)
    assert refused.value.code is RefusalCode.REMOTE_BOLUS_DISABLED
    assert world.bolus_by_witness() == 0


def _policy(pump: bytes, version: int, bolus: int, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    body = encode_policy(LimitPolicy(version, bolus, 1000, 4000), for_pump=pump)
    return body, sign_policy(body, key)


def test_a_stolen_key_cannot_change_the_limits_without_the_prescriber(
    world: World, stolen: tuple[Remote, Remote]
) -> None:
    _, attacker = stolen
    pump = attacker.client.status().pump_id
    own_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    prescriber = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

    def refused_with(policy: tuple[bytes, bytes]) -> RefusalCode:
        with pytest.raises(PumpRefused) as refused:
            attacker.client.upload_policy(*policy)
        return refused.value.code

    # No prescriber enrolled: nothing the remote carries is accepted.
    assert refused_with(_policy(pump, 1, 500, own_key)) is RefusalCode.NO_PRESCRIBER
    world.rig.press(Button.ENROL_PRESCRIBER)  # a press without a key enrols nothing
    world.rig.pump.panel.press(Button.ENROL_PRESCRIBER, prescriber.public_key().public_bytes_raw())
    world.rig.tick()
    assert refused_with(_policy(pump, 1, 500, own_key)) is RefusalCode.POLICY_INVALID
    body, signature = _policy(pump, 1, 500, prescriber)
    tampered = body.replace(bytes([0x19, 0x01, 0xF4]), bytes([0x19, 0x01, 0xF5]))
    assert tampered != body
    assert refused_with((tampered, signature)) is RefusalCode.POLICY_INVALID
    other_pump = _policy(bytes(8), 1, 500, prescriber)
    assert refused_with(other_pump) is RefusalCode.POLICY_INVALID
    assert attacker.client.status().max_bolus_pulses == FACTORY_MAX_BOLUS
    with pytest.raises(PumpRefused):
        attacker.client.bolus(FACTORY_MAX_BOLUS + 1)
    # The prescriber's real policy is accepted (the remote only carries it) ...
    attacker.client.upload_policy(*_policy(pump, 2, 300, prescriber))
    assert attacker.client.status().max_bolus_pulses == 300
    # ... and an older one, though genuinely signed, cannot roll it back.
    assert refused_with((body, signature)) is RefusalCode.POLICY_ROLLBACK
    assert attacker.client.status().limits_version == 2
    assert world.bolus_by_witness() == 0


def test_a_stolen_key_cannot_make_a_new_pairing_without_the_front_panel(
    world: World, stolen: tuple[Remote, Remote]
) -> None:
    remote, attacker = stolen
    world.rig.user.opens_pairing = False  # the patient is not opening the pairing menu
    remotes = world.rig.pump.persistent.remotes
    # No message of any type number opens pairing mode or touches the remote list.
    raw = RawRemote.from_keys(world.rig, attacker.path, random_bytes=random.Random(13).randbytes)
    raw.connect()
    for kind in range(256):
        if kind == MessageType.UNPAIR:
            continue  # a stolen key may unpair itself: that only takes power away
        answer = raw.open(raw.send(raw.seal_plaintext(cbor2.dumps([kind, raw.next_id()]))))
        assert isinstance(answer, Refused | Status | CommandOutcome), kind
    assert world.rig.pump.mode is PumpMode.RUNNING
    assert world.rig.pump.persistent.remotes == remotes
    newcomer = world.remote("newcomer")
    with pytest.raises(LinkDown):
        newcomer.client.pair(lambda code: True)
    with pytest.raises(LinkDown):
        attacker.client.pair(lambda code: True)
    assert world.rig.pump.persistent.remotes == remotes
    assert world.rig.pump.panel.shown("pairing-request")  # the patient sees the attempt
    assert remote.client.status().remote_bolus_enabled


# --- the legacy baseline: the same tools, against both designs (BRIEF) ---------------------

TIME_SCALE = 50.0


@contextlib.contextmanager
def running(firmware: Firmware, link: MemoryLink, clock: Callable[[], float]) -> Iterator[None]:
    with running_in_thread(firmware, read=link.read, write=link.write, clock=clock):
        yield


def basal_allowance(pump_seconds: float) -> int:
    """Most basal pulses that can fall in ``pump_seconds`` of pump time."""
    return math.ceil(pump_seconds * BASAL_PULSES_PER_HOUR / 3600) + 1


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_tapped_legacy_bolus_replayed_is_delivered_again(tmp_path: Path) -> None:
    motor = Motor.in_memory()
    clock = ScaledClock(TIME_SCALE)
    pump = LegacyPump(motor=motor, serial=b"\x12\x34\x56", now=clock())
    remote_end, tap_a = MemoryLink.pair()
    tap_b, pump_end = MemoryLink.pair()
    path = tmp_path / "legacy.pcap"
    started = clock()
    with running(pump, pump_end, clock), CaptureWriter(path) as writer:
        with Tap(tap_a, tap_b, capture=writer):
            channel = RecordChannel(remote_end)
            channel.send(legacy.encode_packet(pump.serial, legacy.LegacyOpcode.BOLUS, b"\x00\x14"))
            ack = channel.receive(5.0)
            assert ack is not None
            assert legacy.decode_packet(ack).opcode is legacy.LegacyOpcode.ACK
            wait_until(lambda: pump.delivery.active_bolus is None)
        first = motor.pulses
        assert [f.direction for f in read_capture(path)] == [Direction.A_TO_B, Direction.B_TO_A]
        sent = replay(tap_b, path, direction=Direction.A_TO_B, interval_s=0.0)
        assert sent == 1
        time.sleep(0.1)
        wait_until(lambda: pump.delivery.active_bolus is None)
    elapsed = clock() - started
    assert 20 <= first <= 20 + basal_allowance(elapsed)
    extra = motor.pulses - first
    assert 20 <= extra <= 20 + basal_allowance(elapsed), "the recalled design repeats the bolus"


def test_a_tapped_pumpguard_bolus_replayed_delivers_nothing(world: World, tmp_path: Path) -> None:
    remote = world.paired_remote()
    pump = world.rig.pump
    base = world.rig.clock.now
    scaled = ScaledClock(TIME_SCALE)

    def clock() -> float:
        return base + scaled()

    remote_end, tap_a = MemoryLink.pair()
    tap_b, pump_end = MemoryLink.pair()
    client = RemoteClient(
        RecordChannel(remote_end), remote.keys, remote.journal, reply_timeout=0.25
    )
    path = tmp_path / "pumpguard.pcap"
    motor = world.rig.motor
    start_pulses = motor.pulses
    with running(pump, pump_end, clock), CaptureWriter(path) as writer:
        with Tap(tap_a, tap_b, capture=writer):
            assert client.bolus(20).delivered_pulses == 20
        first = motor.pulses
        assert {f.direction for f in read_capture(path)} == set(Direction)
        sent = replay(tap_b, path, direction=Direction.A_TO_B, interval_s=0.002)
        assert sent >= 3  # handshake, prepare, commit, queries
        time.sleep(60 / TIME_SCALE)  # long enough for 20 pulses, had it started
        assert tap_b.read(0.2) == b""  # the pump answered nothing
        elapsed = clock() - base
    assert 20 <= first - start_pulses <= 20 + basal_allowance(elapsed)
    assert motor.pulses - first <= basal_allowance(elapsed) < 20


# --- the same, as processes on pty pairs (black box) --------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CLI_SCALE = 50.0


def _python(module_main: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 -- our own interpreter and modules
        [sys.executable, "-c", f"import sys; from {module_main} import main; sys.exit(main())",
         *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )  # fmt: skip


def _status(state: Path) -> dict[str, object]:
    """``pumpsim status --state DIR --json`` (BRIEF contract)."""
    result = _python("pumpguard.firmware_sim.cli", "status", "--state", str(state), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert isinstance(status, dict)
    return status


def _motor_pulses(state: Path) -> int:
    pulses = _status(state)["motor_pulses"]
    assert isinstance(pulses, int)
    return pulses


@contextlib.contextmanager
def _pumpsim(port: str, state: Path, *flags: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
        [
            sys.executable,
            "-c",
            "import sys; from firmware_sim.cli import main; sys.exit(main())",
            "--port",
            port,
            "--state",
            str(state),
            "--time-scale",
            str(CLI_SCALE),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: list[str] = []

    def drain() -> None:  # a full pipe would stall the pump
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("[pump]") for line in lines))
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(5)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs ptys")
@pytest.mark.parametrize("design", ["legacy", "pumpguard"])
def test_the_same_tools_on_real_ports_replay_succeeds_only_against_legacy(
    tmp_path: Path, design: str
) -> None:
    remote_port, tap_remote_side, cable_r = create_vnull()
    tap_pump_side, pump_port, cable_p = create_vnull()
    state, keys, capture = tmp_path / "state", tmp_path / "keys", tmp_path / "wire.pcap"
    flags = ["--legacy"] if design == "legacy" else ["--auto-confirm", "--remote-bolus"]
    remote_flags = ["--legacy"] if design == "legacy" else []
    stop = threading.Event()
    tap = threading.Thread(
        target=run_tap, args=(tap_remote_side, tap_pump_side, capture, FaultPlan(), stop)
    )
    try:
        with _pumpsim(pump_port, state, *flags) as pumpsim:
            tap.start()
            wait_until(lambda: capture.exists())
            time.sleep(0.2)
            started = time.monotonic()
            # pumpctl pair confirms without a terminal only when told to (testing).
            pair_command = ["pair"] if design == "legacy" else ["pair", "--auto-confirm"]
            for command in (pair_command, ["bolus", "1"]):
                result = _python(
                    "pumpguard.host.cli",
                    "--port",
                    remote_port,
                    "--keys",
                    str(keys),
                    *remote_flags,
                    *command,
                )
                assert result.returncode == 0, result.stderr
            time.sleep(40 / CLI_SCALE + 0.5)  # a 1 U bolus is 40 s of pump time
            first = _motor_pulses(state)
            stop.set()
            tap.join(10)
            frames = read_capture(capture)
            assert {f.direction for f in frames} == set(Direction)
            replay(tap_pump_side, capture, direction=Direction.A_TO_B, interval_s=0.01)
            time.sleep(60 / CLI_SCALE + 0.5)
            assert pumpsim.poll() is None, "the pump must survive the replay"
            elapsed = (time.monotonic() - started) * CLI_SCALE
        extra = _motor_pulses(state) - first
    finally:
        stop.set()
        cable_r.close()
        cable_p.close()
    allowance = basal_allowance(elapsed)
    assert 20 <= first <= 20 + allowance
    if design == "legacy":
        assert 20 <= extra <= 20 + allowance
        return
    assert extra <= allowance < 20
    assert _status(state)["paired_remotes"] == 1
    log = _python("pumpguard.firmware_sim.cli", "log", "--state", str(state), "--json")
    assert log.returncode == 0, log.stderr  # the audit chain verifies
    events = [json.loads(line)["event"] for line in log.stdout.splitlines()]
    assert events.count("bolus_started") == 1
    # The replay reached the pump: refused frames were counted, and the replayed
    # pairing failed although --auto-confirm confirms any code (SPEC §9.4).
    after = events[events.index("bolus_delivered") + 1 :]
    assert "rejections" in after
    assert "pairing_failed" in after
