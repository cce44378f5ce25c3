"""The session handshake: Noise-KK-style mutual authentication (SPEC §6).

Attacks these tests stop:

* impersonation of either side: a HANDSHAKE_INIT from an unpaired remote,
  or a HANDSHAKE_RESP from anyone but the paired pump, is refused;
* man in the middle without static keys: substituting one's own ephemeral
  (and even a whole responder of one's own) cannot complete a handshake;
* tampering: every single-bit flip of either message is refused;
* invalid-curve / small-subgroup attacks: low-order and non-canonical
  X25519 ephemerals are refused;
* replay: a recorded HANDSHAKE_INIT is refused, and -- the pump's battery
  being the target -- refused before any X25519 work, as is a forged one
  (SPEC §6.5); a recorded HANDSHAKE_RESP does not complete a new handshake,
  and a replayed HANDSHAKE_INIT that has left the pump's memory still leads
  to keys the replayer cannot use;
* key reuse: every handshake yields fresh session keys (forward secrecy needs
  fresh ephemerals), while injected randomness makes a run reproducible;
* API misuse on the initiator raises LocalProtocolError.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from helpers import (
    Pairing,
    initiator_for,
    make_pairing,
    responder_for,
    run_handshake,
    seeded_random,
    sessions_from,
)

import pumpguard.protocol.handshake
from pumpguard.protocol import (
    AuthenticationFailed,
    HandshakeRefused,
    HandshakeResponder,
    LocalProtocolError,
    MalformedRecord,
    RemoteProtocolError,
    SessionKeys,
    paired_peer,
    x25519_private,
    x25519_public_bytes,
)
from pumpguard.protocol.primitives import sha256
from pumpguard.protocol.primitives import x25519 as real_x25519
from pumpguard.protocol.wire import (
    HANDSHAKE_INIT_LEN,
    HANDSHAKE_RESP_LEN,
    MAX_REMOTES,
    RECENT_HANDSHAKES,
)

P25519 = 2**255 - 19

#: RFC 7748 §7 / Wycheproof: u-coordinates of small order that are below p.
LOW_ORDER_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P25519 - 1,
]
#: Encodings of u >= p (non-canonical): the small-order points plus p, and
#: the largest 255- and 256-bit values.
NON_CANONICAL_U = [P25519 + u for u in LOW_ORDER_U[:4]] + [2**255 - 1, 2**256 - 1]


def u_bytes(u: int) -> bytes:
    return u.to_bytes(32, "little")


class X25519Counter:
    """Counts X25519 operations in ``protocol.handshake`` (the pump's costly work)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = real_x25519

        def counting(private: X25519PrivateKey, peer_public: bytes) -> bytes:
            self.calls += 1
            return original(private, peer_public)

        monkeypatch.setattr(pumpguard.protocol.handshake, "x25519", counting)


@pytest.fixture
def pairing() -> Pairing:
    return make_pairing()


@pytest.fixture
def x25519_calls(monkeypatch: pytest.MonkeyPatch) -> X25519Counter:
    return X25519Counter(monkeypatch)


def assert_mirrored(remote: SessionKeys, pump: SessionKeys) -> None:
    assert remote.send_key == pump.receive_key
    assert remote.send_iv == pump.receive_iv
    assert remote.receive_key == pump.send_key
    assert remote.receive_iv == pump.send_iv
    assert remote.session_hash == pump.session_hash
    # Directions are independent (SPEC §6.4): no key or IV serves both ways.
    assert remote.send_key != remote.receive_key
    assert remote.send_iv != remote.receive_iv


@contextlib.contextmanager
def refused(error: type[RemoteProtocolError]) -> Iterator[None]:
    """The block must raise exactly ``error`` (not merely a subclass of it)."""
    with pytest.raises(RemoteProtocolError) as excinfo:
        yield
    assert excinfo.type is error


def flip(message: bytes, bit: int) -> bytes:
    damaged = bytearray(message)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


# --- Completing a handshake ----------------------------------------------------------


def test_handshake_completes_with_mirrored_keys(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    init = initiator.start()
    accepted = responder_for(pairing).respond(init, [pairing.pump_view])
    remote_keys = initiator.finish(accepted.reply)
    assert_mirrored(remote_keys, accepted.keys)
    assert accepted.peer_index == 0
    # SPEC §6: two 41-byte messages, 82 bytes in all, within a 96-byte budget.
    assert len(init) == HANDSHAKE_INIT_LEN == 41
    assert len(accepted.reply) == HANDSHAKE_RESP_LEN == 41
    assert len(init) + len(accepted.reply) == 82 <= 96
    assert init[0] == 0x01
    assert accepted.reply[0] == 0x02
    # Key confirmation (SPEC §6.4): the first DATA record under the keys verifies.
    remote, pump = sessions_from(remote_keys, accepted.keys)
    assert pump.open(remote.seal(b"status?")) == b"status?"
    assert remote.open(pump.seal(b"ok")) == b"ok"


def test_several_paired_remotes_are_told_apart() -> None:
    pump_static = x25519_private(os.urandom(32))
    pairings = [make_pairing(pump_static=pump_static) for _ in range(MAX_REMOTES)]
    responder = responder_for(pairings[0])
    for order in (list(range(MAX_REMOTES)), list(reversed(range(MAX_REMOTES)))):
        peers = [pairings[i].pump_view for i in order]
        for index, i in enumerate(order):
            initiator = initiator_for(pairings[i])
            accepted = responder.respond(initiator.start(), peers)
            assert accepted.peer_index == index
            assert_mirrored(initiator.finish(accepted.reply), accepted.keys)


def test_repr_of_handshake_objects_hides_secrets(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    accepted = responder_for(pairing).respond(initiator.start(), [pairing.pump_view])
    text = repr(accepted) + repr(pairing.pump_view) + repr(pairing.remote_view)
    for secret in (
        accepted.keys.send_key,
        accepted.keys.receive_key,
        pairing.pump_view.init_key,
        pairing.pump_view.chaining_key,
    ):
        assert secret.hex()[:8] not in text


# --- HANDSHAKE_INIT: refused cheaply -------------------------------------------------


def test_replayed_init_is_refused_before_any_x25519(
    pairing: Pairing, x25519_calls: X25519Counter
) -> None:
    responder = responder_for(pairing)
    init = initiator_for(pairing).start()
    x25519_calls.calls = 0
    responder.respond(init, [pairing.pump_view])
    assert x25519_calls.calls == 3  # es, ee, se: the honest cost
    x25519_calls.calls = 0
    for _ in range(3):
        with refused(HandshakeRefused):
            responder.respond(init, [pairing.pump_view])
    assert x25519_calls.calls == 0
    # The responder still serves a fresh handshake.
    fresh = initiator_for(pairing)
    accepted = responder.respond(fresh.start(), [pairing.pump_view])
    assert_mirrored(fresh.finish(accepted.reply), accepted.keys)


def test_replay_memory_holds_recent_handshakes(pairing: Pairing) -> None:
    responder = responder_for(pairing)
    first = initiator_for(pairing).start()
    responder.respond(first, [pairing.pump_view])
    for _ in range(RECENT_HANDSHAKES - 1):
        responder.respond(initiator_for(pairing).start(), [pairing.pump_view])
    with refused(HandshakeRefused):
        responder.respond(first, [pairing.pump_view])


def test_replayed_init_after_the_memory_leads_nowhere(pairing: Pairing) -> None:
    """Once the pump has forgotten an INIT, a replay of it is answered, but the
    replayer cannot compute ``ee`` for the pump's fresh ephemeral: recorded
    DATA records do not verify under the new keys and the pump's reply is
    useless to it.
    """
    responder = responder_for(pairing)
    initiator = initiator_for(pairing)
    init = initiator.start()
    accepted = responder.respond(init, [pairing.pump_view])
    remote, _ = sessions_from(initiator.finish(accepted.reply), accepted.keys)
    recorded = remote.seal(b"bolus 5.0U")
    for _ in range(RECENT_HANDSHAKES):
        responder.respond(initiator_for(pairing).start(), [pairing.pump_view])
    replayed = responder.respond(init, [pairing.pump_view])
    assert replayed.keys.receive_key != accepted.keys.receive_key
    assert replayed.reply != accepted.reply
    _, pump_again = sessions_from(accepted.keys, replayed.keys)
    with refused(AuthenticationFailed):
        pump_again.open(recorded)


def test_every_bit_flip_of_init_is_refused_before_any_x25519(
    pairing: Pairing, x25519_calls: X25519Counter
) -> None:
    responder = responder_for(pairing)
    init = initiator_for(pairing).start()
    x25519_calls.calls = 0
    for bit in range(len(init) * 8):
        error = MalformedRecord if bit < 8 else AuthenticationFailed
        with refused(error):
            responder.respond(flip(init, bit), [pairing.pump_view])
    assert x25519_calls.calls == 0
    # Not remembered as a replay: the genuine message still gets through.
    responder.respond(init, [pairing.pump_view])


def test_init_with_bad_tag_is_refused_before_any_x25519(
    pairing: Pairing, x25519_calls: X25519Counter
) -> None:
    responder = responder_for(pairing)
    init = initiator_for(pairing).start()
    x25519_calls.calls = 0
    forged = init[:33] + os.urandom(8)
    with refused(AuthenticationFailed):
        responder.respond(forged, [pairing.pump_view])
    random_init = b"\x01" + os.urandom(40)
    with refused(AuthenticationFailed):
        responder.respond(random_init, [pairing.pump_view])
    assert x25519_calls.calls == 0


def test_init_from_an_unpaired_remote_is_refused(x25519_calls: X25519Counter) -> None:
    pump_static = x25519_private(os.urandom(32))
    paired = make_pairing(pump_static=pump_static)
    # A stranger who knows the pump's public key and pairs with it on its own side only.
    stranger = make_pairing(pump_static=pump_static)
    x25519_calls.calls = 0
    responder = responder_for(paired)
    init = initiator_for(stranger).start()
    with refused(AuthenticationFailed):
        responder.respond(init, [paired.pump_view])
    with refused(AuthenticationFailed):
        responder.respond(init, [])
    assert x25519_calls.calls == 0


def test_init_for_another_pump_is_refused() -> None:
    mine = make_pairing()
    other_pump = make_pairing()
    init = initiator_for(mine).start()
    responder = responder_for(other_pump)
    with refused(AuthenticationFailed):
        responder.respond(init, [other_pump.pump_view])


@pytest.mark.parametrize("u", LOW_ORDER_U + NON_CANONICAL_U)
def test_init_with_invalid_ephemeral_is_refused(
    pairing: Pairing, x25519_calls: X25519Counter, u: int
) -> None:
    """Even with a valid tag (a faulty or malicious paired remote), no X25519 is run."""
    e_remote = u_bytes(u)
    view = pairing.remote_view
    h = sha256(view.prologue_hash + b"\x01" + e_remote)
    tag1 = AESCCM(view.init_key, tag_length=8).encrypt(bytes(13), b"", h)
    init = b"\x01" + e_remote + tag1
    responder = responder_for(pairing)
    x25519_calls.calls = 0
    with refused(AuthenticationFailed):
        responder.respond(init, [pairing.pump_view])
    assert x25519_calls.calls == 0


@pytest.mark.parametrize("length", [0, 1, HANDSHAKE_INIT_LEN - 1, HANDSHAKE_INIT_LEN + 1, 200])
def test_init_of_wrong_length_is_malformed(pairing: Pairing, length: int) -> None:
    init = initiator_for(pairing).start()
    message = (init * 5)[:length]
    with refused(MalformedRecord):
        responder_for(pairing).respond(message, [pairing.pump_view])


def test_resp_given_to_the_responder_is_malformed(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    responder = responder_for(pairing)
    reply = responder.respond(initiator.start(), [pairing.pump_view]).reply
    with refused(MalformedRecord):
        responder.respond(reply, [pairing.pump_view])


# --- HANDSHAKE_RESP -------------------------------------------------------------------


def _reply_for_seeded_initiator(pairing: Pairing, seed: int) -> bytes:
    init = initiator_for(pairing, seeded_random(seed)).start()
    return responder_for(pairing).respond(init, [pairing.pump_view]).reply


def test_every_bit_flip_of_resp_is_refused(pairing: Pairing) -> None:
    # A seeded initiator re-creates the same ephemeral, so each flip meets a
    # fresh initiator in exactly the state the genuine reply was made for.
    reply = _reply_for_seeded_initiator(pairing, seed=11)
    for bit in range(len(reply) * 8):
        initiator = initiator_for(pairing, seeded_random(11))
        initiator.start()
        error = MalformedRecord if bit < 8 else AuthenticationFailed
        with refused(error):
            initiator.finish(flip(reply, bit))
    initiator = initiator_for(pairing, seeded_random(11))
    initiator.start()
    initiator.finish(reply)


@pytest.mark.parametrize("u", LOW_ORDER_U + NON_CANONICAL_U)
def test_resp_with_invalid_ephemeral_is_refused(pairing: Pairing, u: int) -> None:
    reply = _reply_for_seeded_initiator(pairing, seed=12)
    initiator = initiator_for(pairing, seeded_random(12))
    initiator.start()
    with refused(AuthenticationFailed):
        initiator.finish(b"\x02" + u_bytes(u) + reply[33:])


def test_resp_with_top_bit_set_is_refused(pairing: Pairing) -> None:
    # RFC 7748 says to mask the top bit; this protocol refuses such keys instead.
    reply = _reply_for_seeded_initiator(pairing, seed=13)
    initiator = initiator_for(pairing, seeded_random(13))
    initiator.start()
    masked = bytearray(reply)
    masked[32] |= 0x80
    with refused(AuthenticationFailed):
        initiator.finish(bytes(masked))


def test_recorded_resp_does_not_complete_a_new_handshake(pairing: Pairing) -> None:
    responder = responder_for(pairing)
    old = initiator_for(pairing)
    old_reply = responder.respond(old.start(), [pairing.pump_view]).reply
    old.finish(old_reply)
    new = initiator_for(pairing)
    new.start()
    with refused(AuthenticationFailed):
        new.finish(old_reply)


@pytest.mark.parametrize("length", [0, HANDSHAKE_RESP_LEN - 1, HANDSHAKE_RESP_LEN + 1])
def test_resp_of_wrong_length_is_malformed(pairing: Pairing, length: int) -> None:
    initiator = initiator_for(pairing)
    init = initiator.start()
    reply = responder_for(pairing).respond(init, [pairing.pump_view]).reply
    with refused(MalformedRecord):
        initiator.finish((reply * 2)[:length])
    with refused(MalformedRecord):  # its own INIT reflected
        initiator.finish(init)


# --- Man in the middle -----------------------------------------------------------------


def test_man_in_the_middle_without_static_keys_cannot_complete(pairing: Pairing) -> None:
    """The attacker knows both public keys, holds its own static key in place
    of the pump's, and runs a real responder for it.  It re-tags the remote's
    INIT for its own pairing (it can: it knows its own ``ss``), gets a
    well-formed HANDSHAKE_RESP, and forwards it.  The remote refuses it.
    """
    attacker_static = x25519_private(os.urandom(32))
    attacker_view = paired_peer(attacker_static, pairing.remote_public, local_is_remote=False)
    initiator = initiator_for(pairing)
    init = initiator.start()
    e_remote = init[1:33]
    h = sha256(attacker_view.prologue_hash + b"\x01" + e_remote)
    retagged = (
        b"\x01" + e_remote + AESCCM(attacker_view.init_key, tag_length=8).encrypt(bytes(13), b"", h)
    )
    attacker = HandshakeResponder(local_static=attacker_static, random_bytes=os.urandom)
    forged = attacker.respond(retagged, [attacker_view])
    assert len(forged.reply) == HANDSHAKE_RESP_LEN
    with refused(AuthenticationFailed):
        initiator.finish(forged.reply)
    # Nor does the attacker's own ephemeral with a random tag get through.
    own_ephemeral = x25519_public_bytes(x25519_private(os.urandom(32)))
    with refused(AuthenticationFailed):
        initiator.finish(b"\x02" + own_ephemeral + os.urandom(8))
    # The genuine pump can still answer the original INIT.
    accepted = responder_for(pairing).respond(init, [pairing.pump_view])
    assert_mirrored(initiator.finish(accepted.reply), accepted.keys)


def test_man_in_the_middle_cannot_pose_as_the_remote(pairing: Pairing) -> None:
    """An attacker's own INIT, tagged for a pairing of its own static key with
    the pump, is refused by the pump that never paired that key.
    """
    attacker = make_pairing(pump_static=pairing.pump_static)
    init = initiator_for(attacker).start()
    with refused(AuthenticationFailed):
        responder_for(pairing).respond(init, [pairing.pump_view])


# --- Initiator misuse ------------------------------------------------------------------


def _assert_local_error(call: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError) as excinfo:
        call()
    assert excinfo.type is LocalProtocolError


def test_finish_before_start(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    reply = _reply_for_seeded_initiator(pairing, seed=14)
    _assert_local_error(lambda: initiator.finish(reply))


def test_start_twice(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    initiator.start()
    _assert_local_error(initiator.start)


def test_finish_twice(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    reply = responder_for(pairing).respond(initiator.start(), [pairing.pump_view]).reply
    initiator.finish(reply)
    _assert_local_error(lambda: initiator.finish(reply))


def test_start_after_finish(pairing: Pairing) -> None:
    initiator = initiator_for(pairing)
    reply = responder_for(pairing).respond(initiator.start(), [pairing.pump_view]).reply
    initiator.finish(reply)
    _assert_local_error(initiator.start)


def test_paired_peer_refuses_an_invalid_static_key() -> None:
    local = x25519_private(os.urandom(32))
    for u in (0, 1, P25519):
        with pytest.raises(RemoteProtocolError) as excinfo:
            paired_peer(local, u_bytes(u), local_is_remote=True)
        assert excinfo.type is AuthenticationFailed


# --- Fresh keys, reproducible runs ---------------------------------------------------


def test_every_handshake_yields_fresh_keys(pairing: Pairing) -> None:
    runs = [run_handshake(pairing) for _ in range(8)]
    for remote, pump in runs:
        assert_mirrored(remote, pump)
    for field in ("send_key", "send_iv", "receive_key", "receive_iv", "session_hash"):
        values = {getattr(remote, field) for remote, _ in runs}
        assert len(values) == len(runs), field


def test_fresh_pump_ephemeral_alone_changes_the_keys(pairing: Pairing) -> None:
    """Even with the remote's ephemeral fixed, the pump's fresh one changes everything."""
    results = [
        run_handshake(pairing, remote_random=seeded_random(1), pump_random=seeded_random(seed))
        for seed in (2, 3)
    ]
    assert results[0][0].send_key != results[1][0].send_key
    assert results[0][0].session_hash != results[1][0].session_hash


def test_deterministic_randomness_reproduces_the_run() -> None:
    def transcript(seed: int) -> tuple[bytes, bytes, SessionKeys, SessionKeys]:
        rng = seeded_random(seed)
        pairing = make_pairing(rng)
        initiator = initiator_for(pairing, rng)
        init = initiator.start()
        accepted = responder_for(pairing, rng).respond(init, [pairing.pump_view])
        return init, accepted.reply, initiator.finish(accepted.reply), accepted.keys

    first, second, other = transcript(5), transcript(5), transcript(6)
    assert first[:2] == second[:2]
    for a, b in ((first[2], second[2]), (first[3], second[3])):
        assert (a.send_key, a.send_iv, a.receive_key, a.receive_iv, a.session_hash) == (
            b.send_key,
            b.send_iv,
            b.receive_key,
            b.receive_iv,
            b.session_hash,
        )
    assert other[0] != first[0]
    assert other[2].session_hash != first[2].session_hash
