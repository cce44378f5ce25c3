"""Protected records and the anti-replay window (SPEC §7, lifetime SPEC §8).

Attacks these tests stop:

* replay: a recorded DATA record (a bolus command) delivered again, at once
  or much later, is refused -- the WireGuard counter self-test and the DTLS
  cases of RFC 6347 §4.1.2.6, adapted to a 64-counter window;
* window poisoning: a forged record with a huge counter must not move the
  window (state changes only after the tag verified), nor must any other
  refused record change anything;
* tampering: every single-bit flip, truncation and extension of a record is
  refused (the header is part of the nonce, so it is authenticated too);
* reflection and cross-session replay: a record given back to its sender,
  or to another session, fails authentication;
* nonce reuse: a sender never uses a counter twice and stops at its limit
  (CounterExhausted) instead of wrapping; a receiver refuses counters at or
  past the limit, including 0xFFFFFFFF;
* key leaks through logs: ``repr(SessionKeys)`` shows no key material.

A Hypothesis state machine plays an adversary who delivers any sealed record
any number of times in any order, or corrupted, against a reference model
of the window rule.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from helpers import handshake_keys, seal_at, session_pair, sessions_from
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from pumpguard.protocol import (
    AuthenticationFailed,
    CounterExhausted,
    LocalProtocolError,
    MalformedRecord,
    RemoteProtocolError,
    ReplayRefused,
    SecureSession,
    SessionKeys,
)
from pumpguard.protocol.wire import (
    COUNTER_LIMIT,
    MAX_PLAINTEXT_LEN,
    MAX_RECORD_LEN,
    REKEY_AFTER_RECORDS,
    REPLAY_WINDOW,
    SESSION_MAX_AGE_S,
    SESSION_REKEY_AFTER_S,
)

W = REPLAY_WINDOW
assert W == 64  # the batteries below are written out for SPEC §7.3's 64-counter window
#: Largest value a 32-bit wire counter can carry.
MAX_WIRE_COUNTER = 0xFFFF_FFFF
assert COUNTER_LIMIT == MAX_WIRE_COUNTER  # SPEC §11: the limit itself is refused


def counter_of(record: bytes) -> int:
    return int.from_bytes(record[1:5], "big")


def plaintext_for(counter: int) -> bytes:
    """A distinct plaintext per counter, so a mix-up cannot go unnoticed."""
    return b"bolus %d" % counter


class Receiver:
    """The pump's session plus the remote's keys, to put any counter on the wire.

    Every :meth:`deliver` checks the outcome's consequences: an accepted
    record yields exactly its plaintext; a refused one leaves the session
    observably unchanged (see :meth:`fingerprint`).
    """

    def __init__(self, *, counter_limit: int = COUNTER_LIMIT) -> None:
        remote_keys, pump_keys = handshake_keys()
        self.remote_keys = remote_keys
        self.session = SecureSession(pump_keys, established_at=0.0, counter_limit=counter_limit)

    def record(self, counter: int, plaintext: bytes | None = None) -> bytes:
        if plaintext is None:
            plaintext = plaintext_for(counter)
        return seal_at(self.remote_keys.send_key, self.remote_keys.send_iv, counter, plaintext)

    def forged(self, counter: int) -> bytes:
        """A record with the right header and a wrong tag."""
        genuine = bytearray(self.record(counter))
        genuine[-1] ^= 0x01
        return bytes(genuine)

    def fingerprint(self) -> tuple[int, frozenset[int], bool]:
        """Everything a receiver's window decides, observed from outside.

        ``(highest accepted, counters inside the window already seen, whether
        highest + 1 is accepted)``, found with the read-only
        ``check_counter``, so the session itself is untouched.
        """
        probe = self.session
        top = probe.highest_received
        seen = set()
        for counter in range(max(0, top - W + 1), top + 1):
            try:
                probe.check_counter(counter)
            except ReplayRefused:
                seen.add(counter)
        next_ok = True
        try:
            probe.check_counter(top + 1)
        except ReplayRefused:
            next_ok = False
        return top, frozenset(seen), next_ok

    def deliver(self, counter: int) -> bool:
        """Deliver the genuine record for ``counter``; True if accepted."""
        record = self.record(counter)
        before = self.fingerprint()
        try:
            plaintext = self.session.open(record)
        except ReplayRefused:
            assert self.fingerprint() == before
            return False
        assert plaintext == plaintext_for(counter)
        assert self.session.highest_received == max(before[0], counter)
        return True

    def refuse(self, record: bytes, error: type[RemoteProtocolError]) -> None:
        """``record`` must be refused with exactly ``error`` and change nothing."""
        before = self.fingerprint()
        with pytest.raises(RemoteProtocolError) as excinfo:
            self.session.open(record)
        assert excinfo.type is error
        assert self.fingerprint() == before


def run_battery(receiver: Receiver, steps: Sequence[tuple[int, bool]]) -> None:
    for number, (counter, expected) in enumerate(steps, start=1):
        assert receiver.deliver(counter) is expected, f"step {number}: T({counter}, {expected})"


# --- The WireGuard counter self-test, adapted ------------------------------------
#
# linux drivers/net/wireguard/selftest/counter.c (and wireguard-go's port in
# replay/replay_test.go).  WireGuard's window accepts counters down to
# top - COUNTER_WINDOW_SIZE, so its T_LIM = COUNTER_WINDOW_SIZE + 1 is the
# smallest distance refused.  Ours accepts down to top - 63 and refuses
# top - 64, so T_LIM becomes W = 64 and WireGuard's window size W - 1 = 63.
# REJECT_AFTER_MESSAGES becomes the receiver's counter limit.

T_LIM = W
WG_WINDOW = W - 1


def wireguard_sequence(limit: int) -> list[tuple[int, bool]]:
    steps = [
        (0, True),  # 1
        (1, True),  # 2
        (1, False),  # 3  duplicate
        (9, True),  # 4  jump
        (8, True),  # 5  out of order, inside the window
        (7, True),  # 6
        (7, False),  # 7  duplicate out of order
        (T_LIM, True),  # 8
        (T_LIM - 1, True),  # 9
        (T_LIM - 1, False),  # 10
        (T_LIM - 2, True),  # 11
        (2, True),  # 12  top - 62: still inside
        (2, False),  # 13
        (T_LIM + 16, True),  # 14
        (3, False),  # 15  fell out of the window
        (T_LIM + 16, False),  # 16
        (T_LIM * 4, True),  # 17  large jump
        (T_LIM * 4 - (T_LIM - 1), True),  # 18  top - 63: the window's last slot
        (10, False),  # 19
        (T_LIM * 4 - T_LIM, False),  # 20  top - 64: just outside
        (T_LIM * 4 - (T_LIM + 1), False),  # 21
        (T_LIM * 4 - (T_LIM - 2), True),  # 22
        (T_LIM * 4 + 1 - T_LIM, False),  # 23  = step 18's counter: duplicate at the edge
        (0, False),  # 24
        (limit, False),  # 25  the limit itself
        (limit - 1, True),  # 26  last usable counter, after a jump of ~2^32
        (limit, False),  # 27
        (limit - 1, False),  # 28
        (limit - 2, True),  # 29
        (limit + 1, False),  # 30
        (limit + 2, False),  # 31
        (limit - 2, False),  # 32
        (limit - 3, True),  # 33
        (0, False),  # 34
    ]
    # With the protocol's own limit, 0xFFFFFFFF + 1 and + 2 do not fit in the
    # 32-bit header; steps 30 and 31 run with the lowered limit instead.
    return [(n, ok) for n, ok in steps if n <= MAX_WIRE_COUNTER]


@pytest.mark.parametrize("limit", [COUNTER_LIMIT, 1000])
def test_wireguard_counter_selftest(limit: int) -> None:
    steps = wireguard_sequence(limit)
    assert len(steps) == (32 if limit == COUNTER_LIMIT else 34)
    run_battery(Receiver(counter_limit=limit), steps)


WIREGUARD_BULK = {
    # Bulk test 1: fill the window upwards, then its oldest slot.
    "bulk1": [(i, True) for i in range(1, WG_WINDOW + 1)] + [(0, True), (0, False)],
    # Bulk test 2: 0 is one past the window's far edge.
    "bulk2": [(i, True) for i in range(2, WG_WINDOW + 2)] + [(1, True), (0, False)],
    # Bulk test 3: strictly descending, exactly one window's worth.
    "bulk3": [(i, True) for i in range(WG_WINDOW + 1, 0, -1)],
    # Bulk test 4: descending; 1 and 0 are then at distance 64 and 65.
    "bulk4": [(i, True) for i in range(WG_WINDOW + 2, 1, -1)] + [(1, False), (0, False)],
    # Bulk test 5: descending, then a step up pushes 0 out.
    "bulk5": [(i, True) for i in range(WG_WINDOW, 0, -1)] + [(WG_WINDOW + 1, True), (0, False)],
    # Bulk test 6: the same with 0 taken first.
    "bulk6": [(i, True) for i in range(WG_WINDOW, 0, -1)] + [(0, True), (WG_WINDOW + 1, True)],
}


@pytest.mark.parametrize("name", sorted(WIREGUARD_BULK))
def test_wireguard_bulk(name: str) -> None:
    run_battery(Receiver(), WIREGUARD_BULK[name])


# --- Window edges, jumps and exhaustion ------------------------------------------


@pytest.mark.parametrize("top", [W - 1, W, 1000, 1 << 31, MAX_WIRE_COUNTER - 1])
def test_window_edge(top: int) -> None:
    receiver = Receiver()
    assert receiver.deliver(top)
    assert receiver.deliver(top - (W - 1))  # top - 63: accepted
    assert not receiver.deliver(top - (W - 1))  # ... once
    if top >= W:
        assert not receiver.deliver(top - W)  # top - 64: refused, never seen or not
    assert receiver.deliver(top - 1)
    assert not receiver.deliver(top)


@pytest.mark.parametrize("jump", [1, W - 1, W, W + 1, 1000, 1 << 31])
def test_jumps_slide_the_window(jump: int) -> None:
    receiver = Receiver()
    base = 100
    for counter in range(base - W + 1, base + 1):  # a full window
        assert receiver.deliver(counter)
    assert receiver.deliver(base + jump)
    # Everything at distance >= 64 from the new top is refused; everything
    # unseen inside the window is accepted; old entries still inside stay seen.
    new_top = base + jump
    probes = {base - W, base - 1, base, new_top - W, new_top - W + 1, new_top - 1}
    for counter in sorted(probes - {new_top}):
        expected = new_top - counter < W and counter > base
        assert receiver.deliver(counter) is expected, (jump, counter)


def test_jump_of_exactly_the_window_size_forgets_everything_before() -> None:
    receiver = Receiver()
    for counter in range(10):
        assert receiver.deliver(counter)
    assert receiver.deliver(9 + W)
    for counter in range(10):
        assert not receiver.deliver(counter)  # all at distance >= 64
    for counter in range(10, 9 + W):
        assert receiver.deliver(counter)  # never seen, all inside
    assert not receiver.deliver(9 + W)


def test_counter_exhaustion_at_the_protocol_limit() -> None:
    receiver = Receiver()
    assert not receiver.deliver(COUNTER_LIMIT)  # 0xFFFFFFFF: never valid
    assert receiver.deliver(COUNTER_LIMIT - 1)  # the last counter a sender may use
    assert not receiver.deliver(COUNTER_LIMIT)
    assert not receiver.deliver(MAX_WIRE_COUNTER)
    assert not receiver.deliver(COUNTER_LIMIT - 1)
    assert receiver.deliver(COUNTER_LIMIT - 2)


@pytest.mark.parametrize("limit", [1, 2, 5, W, W + 1])
def test_lowered_receive_limit(limit: int) -> None:
    receiver = Receiver(counter_limit=limit)
    assert not receiver.deliver(limit)
    assert not receiver.deliver(MAX_WIRE_COUNTER)
    for counter in range(limit - 1, -1, -1):
        assert receiver.deliver(counter) is (limit - 1 - counter < W)
    assert not receiver.deliver(limit)


def test_every_counter_in_order_then_all_replayed() -> None:
    receiver = Receiver()
    for counter in range(3 * W):
        assert receiver.deliver(counter)
    for counter in range(3 * W):
        assert not receiver.deliver(counter)


# --- RFC 6347 §4.1.2.6 (DTLS replay detection) -----------------------------------


def test_dtls_duplicate_is_refused() -> None:
    receiver = Receiver()
    assert receiver.deliver(5)
    receiver.refuse(receiver.record(5), ReplayRefused)


def test_dtls_too_old_is_refused() -> None:
    receiver = Receiver()
    assert receiver.deliver(200)
    # "Records ... to the left of the window are rejected": never seen, still refused.
    receiver.refuse(receiver.record(200 - W), ReplayRefused)
    receiver.refuse(receiver.record(0), ReplayRefused)


def test_dtls_new_inside_window_does_not_move_it() -> None:
    receiver = Receiver()
    assert receiver.deliver(200)
    assert receiver.deliver(190)
    assert receiver.session.highest_received == 200


def test_dtls_new_right_edge_moves_the_window() -> None:
    receiver = Receiver()
    assert receiver.deliver(200)
    assert receiver.deliver(201)
    assert receiver.session.highest_received == 201
    assert receiver.deliver(201 + 500)
    assert receiver.session.highest_received == 701


def test_dtls_window_moves_only_after_mac_verification() -> None:
    """A forged record must not move the window (that would refuse real ones)."""
    receiver = Receiver()
    assert receiver.deliver(200)
    receiver.refuse(receiver.forged(COUNTER_LIMIT - 1), AuthenticationFailed)
    receiver.refuse(receiver.forged(201), AuthenticationFailed)
    receiver.refuse(receiver.forged(150), AuthenticationFailed)  # unseen, in window
    assert receiver.session.highest_received == 200
    assert receiver.deliver(150)  # the genuine 150 still gets in
    assert receiver.deliver(201)


# --- A refused record changes nothing ----------------------------------------------


@dataclass(frozen=True)
class Refusal:
    name: str
    error: type[RemoteProtocolError]


REFUSALS = [
    Refusal("duplicate", ReplayRefused),
    Refusal("too_old", ReplayRefused),
    Refusal("at_limit", ReplayRefused),
    Refusal("forged_future", AuthenticationFailed),
    Refusal("forged_in_window", AuthenticationFailed),
    Refusal("forged_next", AuthenticationFailed),
    Refusal("too_short", MalformedRecord),
    Refusal("wrong_type", MalformedRecord),
    Refusal("empty", MalformedRecord),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.name)
def test_refused_record_leaves_session_unchanged(refusal: Refusal) -> None:
    receiver = Receiver()
    for counter in (100, 101, 103, 110):
        assert receiver.deliver(counter)
    record = {
        "duplicate": receiver.record(103),
        "too_old": receiver.record(110 - W),
        "at_limit": receiver.record(COUNTER_LIMIT),
        "forged_future": receiver.forged(1 << 30),
        "forged_in_window": receiver.forged(102),
        "forged_next": receiver.forged(111),
        "too_short": receiver.record(111)[:12],
        "wrong_type": b"\x02" + receiver.record(111)[1:],
        "empty": b"",
    }[refusal.name]
    receiver.refuse(record, refusal.error)
    assert receiver.session.highest_received == 110
    # Legitimate traffic carries on: an unseen counter in the window, then the next one.
    assert receiver.deliver(102)
    assert receiver.deliver(111)


# --- Sender side ------------------------------------------------------------------


def test_independent_sealer_matches_the_implementation() -> None:
    """seal_at (tests/helpers.py, straight from SPEC §7) and SecureSession.seal agree."""
    remote_keys, pump_keys = handshake_keys()
    remote, pump = sessions_from(remote_keys, pump_keys)
    for counter in range(20):
        plaintext = os.urandom(counter * 12)
        record = remote.seal(plaintext)
        assert record == seal_at(remote_keys.send_key, remote_keys.send_iv, counter, plaintext)
        reply = pump.seal(plaintext)
        assert reply == seal_at(pump_keys.send_key, pump_keys.send_iv, counter, plaintext)


def test_seal_and_open_both_directions() -> None:
    remote, pump = session_pair()
    for index in range(5):
        command = b"bolus %d" % index
        assert pump.open(remote.seal(command)) == command
        assert remote.open(pump.seal(b"ack " + command)) == b"ack " + command
    assert remote.records_sent == pump.records_sent == 5
    assert remote.highest_received == pump.highest_received == 4


def test_record_layout() -> None:
    remote, _ = session_pair()
    record = remote.seal(b"abc")
    assert record[0] == 0x03
    assert counter_of(record) == 0
    assert len(record) == 1 + 4 + 3 + 8
    largest = remote.seal(bytes(MAX_PLAINTEXT_LEN))
    assert len(largest) == MAX_RECORD_LEN


@pytest.mark.parametrize("limit", [1, 2, 7, 64])
def test_sender_exhausts_without_reusing_a_counter(limit: int) -> None:
    remote, pump = session_pair(counter_limit=limit)
    records = [remote.seal(b"cmd %d" % i) for i in range(limit)]
    assert [counter_of(r) for r in records] == list(range(limit))
    assert len(set(records)) == limit
    for _ in range(3):  # sticky: every further attempt refused, nothing emitted
        with pytest.raises(CounterExhausted) as excinfo:
            remote.seal(b"one more")
        assert excinfo.type is CounterExhausted
    assert remote.records_sent == limit
    for i, record in enumerate(records):
        assert pump.open(record) == b"cmd %d" % i


def test_oversized_plaintext_is_refused_and_counters_stay_unique() -> None:
    remote, pump = session_pair()
    first = remote.seal(b"a")
    with pytest.raises(LocalProtocolError) as excinfo:
        remote.seal(bytes(MAX_PLAINTEXT_LEN + 1))
    assert excinfo.type is LocalProtocolError
    second = remote.seal(b"b")
    assert counter_of(second) > counter_of(first)
    assert pump.open(first) == b"a"
    assert pump.open(second) == b"b"


@pytest.mark.parametrize("limit", [0, -1, COUNTER_LIMIT + 1])
def test_counter_limit_may_only_be_lowered(limit: int) -> None:
    remote_keys, _ = handshake_keys()
    with pytest.raises(LocalProtocolError) as excinfo:
        SecureSession(remote_keys, established_at=0.0, counter_limit=limit)
    assert excinfo.type is LocalProtocolError


def test_needs_rekey_and_expired_by_time() -> None:
    remote_keys, _ = handshake_keys()
    start = 1000.0
    session = SecureSession(remote_keys, established_at=start)
    assert not session.needs_rekey(start)
    assert not session.needs_rekey(start + SESSION_REKEY_AFTER_S - 0.001)
    assert session.needs_rekey(start + SESSION_REKEY_AFTER_S)
    assert not session.expired(start + SESSION_MAX_AGE_S - 0.001)
    assert session.expired(start + SESSION_MAX_AGE_S)
    assert SESSION_REKEY_AFTER_S < SESSION_MAX_AGE_S  # a rekey is asked for before expiry


def test_needs_rekey_by_records_sent() -> None:
    remote_keys, _ = handshake_keys()
    session = SecureSession(remote_keys, established_at=0.0, counter_limit=10)
    for _ in range(4):
        session.seal(b"x")
        assert not session.needs_rekey(0.0)
    session.seal(b"x")  # half the limit: rekey well before exhaustion
    assert session.needs_rekey(0.0)
    assert not session.expired(0.0)
    assert REKEY_AFTER_RECORDS < COUNTER_LIMIT


# --- Direction and session binding -------------------------------------------------


def test_reflected_record_is_refused() -> None:
    remote, pump = session_pair()
    record = remote.seal(b"bolus 1.0U")
    with pytest.raises(RemoteProtocolError) as excinfo:
        remote.open(record)
    assert excinfo.type is AuthenticationFailed
    reply = pump.seal(b"ok")
    with pytest.raises(RemoteProtocolError) as excinfo:
        pump.open(reply)
    assert excinfo.type is AuthenticationFailed
    # Both still work normally afterwards.
    assert pump.open(record) == b"bolus 1.0U"
    assert remote.open(reply) == b"ok"
    assert remote.highest_received == pump.highest_received == 0


def test_record_from_another_session_is_refused() -> None:
    remote1, pump1 = session_pair()
    remote2, pump2 = session_pair()
    record = remote1.seal(b"bolus 1.0U")
    with pytest.raises(RemoteProtocolError) as excinfo:
        pump2.open(record)
    assert excinfo.type is AuthenticationFailed
    assert pump2.highest_received == -1
    assert pump2.open(remote2.seal(b"x")) == b"x"
    assert pump1.open(record) == b"bolus 1.0U"


def test_session_keys_are_directional() -> None:
    remote_keys, pump_keys = handshake_keys()
    assert remote_keys.send_key == pump_keys.receive_key
    assert remote_keys.send_iv == pump_keys.receive_iv
    assert remote_keys.receive_key == pump_keys.send_key
    assert remote_keys.receive_iv == pump_keys.send_iv
    assert remote_keys.send_key != remote_keys.receive_key
    assert remote_keys.send_iv != remote_keys.receive_iv


# --- Tampering ---------------------------------------------------------------------


def expected_refusal(receiver: Receiver, record: bytes) -> type[RemoteProtocolError]:
    """Which check must refuse a damaged ``record`` (SPEC §7 order: type, window, tag)."""
    if len(record) < 13 or record[0] != 0x03:
        return MalformedRecord
    counter = counter_of(record)
    top, seen, _ = receiver.fingerprint()
    if counter >= receiver.session.counter_limit:
        return ReplayRefused
    if counter <= top and (top - counter >= W or counter in seen):
        return ReplayRefused
    return AuthenticationFailed


def flip(record: bytes, bit: int) -> bytes:
    damaged = bytearray(record)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def test_every_single_bit_flip_is_refused() -> None:
    receiver = Receiver()
    for counter in (0, 1, 2, 5, 40, 41, 42):
        assert receiver.deliver(counter)
    for counter, plaintext in ((43, b""), (44, b"bolus 2.5U"), (45, bytes(MAX_PLAINTEXT_LEN))):
        record = receiver.record(counter, plaintext)
        before = receiver.fingerprint()
        outcomes = set()
        for bit in range(len(record) * 8):
            damaged = flip(record, bit)
            error = expected_refusal(receiver, damaged)
            with pytest.raises(RemoteProtocolError) as excinfo:
                receiver.session.open(damaged)
            assert excinfo.type is error, (counter, bit)
            assert receiver.session.highest_received == before[0]
            outcomes.add(error)
        # The header bits exercise all three checks.
        assert outcomes == {MalformedRecord, ReplayRefused, AuthenticationFailed}
        assert receiver.fingerprint() == before
        assert receiver.session.open(record) == plaintext


def test_truncations_and_extensions_are_refused() -> None:
    receiver = Receiver()
    assert receiver.deliver(0)
    record = receiver.record(1, b"bolus 2.5U")
    for length in range(len(record)):
        receiver.refuse(record[:length], MalformedRecord if length < 13 else AuthenticationFailed)
    for extra in (b"\x00", b"\x01", os.urandom(8), bytes(100)):
        receiver.refuse(record + extra, AuthenticationFailed)
    for type_byte in range(256):
        if type_byte != 0x03:
            receiver.refuse(bytes((type_byte,)) + record[1:], MalformedRecord)
    assert receiver.session.open(record) == b"bolus 2.5U"


@given(
    accepted=st.lists(st.integers(0, 300), max_size=8),
    counter=st.integers(0, 400),
    plaintext=st.binary(max_size=MAX_PLAINTEXT_LEN),
    data=st.data(),
)
@settings(max_examples=60, deadline=None)
def test_bit_flip_property(
    accepted: list[int], counter: int, plaintext: bytes, data: st.DataObject
) -> None:
    receiver = Receiver()
    for previous in accepted:
        receiver.deliver(previous)
    record = receiver.record(counter, plaintext)
    bit = data.draw(st.integers(0, len(record) * 8 - 1), label="bit")
    damaged = flip(record, bit)
    receiver.refuse(damaged, expected_refusal(receiver, damaged))


@given(
    plaintext=st.binary(max_size=MAX_PLAINTEXT_LEN),
    cut=st.integers(0, MAX_RECORD_LEN),
    extra=st.binary(min_size=1, max_size=32),
)
@settings(max_examples=60, deadline=None)
def test_truncation_extension_property(plaintext: bytes, cut: int, extra: bytes) -> None:
    receiver = Receiver()
    record = receiver.record(7, plaintext)
    short = record[: cut % len(record)]
    receiver.refuse(short, MalformedRecord if len(short) < 13 else AuthenticationFailed)
    receiver.refuse(record + extra, AuthenticationFailed)
    assert receiver.deliver(7)


# --- Logs ----------------------------------------------------------------------------


def test_session_keys_repr_hides_key_material() -> None:
    remote_keys, pump_keys = handshake_keys()
    for keys in (remote_keys, pump_keys):
        text = repr(keys) + str(keys)
        for secret in (keys.send_key, keys.send_iv, keys.receive_key, keys.receive_iv):
            assert secret.hex() not in text
            assert secret.hex()[:8] not in text
            assert repr(secret) not in text
        assert keys.session_hash[:4].hex() in text  # the public name is there


def test_session_keys_refuse_wrong_sizes() -> None:
    good, _ = handshake_keys()
    fields = ("send_key", "send_iv", "receive_key", "receive_iv", "session_hash")
    for name in fields:
        values = {field: getattr(good, field) for field in fields}
        values[name] = values[name] + b"\x00"
        with pytest.raises(LocalProtocolError) as excinfo:
            SessionKeys(**values)
        assert excinfo.type is LocalProtocolError


# --- Stateful: an adversary who controls delivery ----------------------------------


@settings(max_examples=60, stateful_step_count=40, deadline=None)
class ReplayAdversary(RuleBasedStateMachine):
    """The sender seals; the adversary delivers anything sealed, in any order, any
    number of times, or corrupted.  A reference model of SPEC §7.3 must agree
    with every decision the receiver makes.
    """

    def __init__(self) -> None:
        super().__init__()
        remote_keys, pump_keys = handshake_keys()
        self.sender, self.receiver = sessions_from(remote_keys, pump_keys)
        #: counter -> (record, plaintext): everything the sender ever emitted.
        self.sealed: dict[int, tuple[bytes, bytes]] = {}
        # Reference model: the counters accepted, and the highest.
        self.accepted: set[int] = set()
        self.top = -1

    def _seal(self, plaintext: bytes) -> None:
        record = self.sender.seal(plaintext)
        counter = counter_of(record)
        assert counter not in self.sealed  # the sender never reuses a counter
        self.sealed[counter] = (record, plaintext)

    @rule(plaintext=st.binary(max_size=32))
    def seal(self, plaintext: bytes) -> None:
        self._seal(plaintext)

    @rule(count=st.sampled_from([1, 3, W - 1, W, W + 1, 2 * W + 5]))
    def seal_and_lose(self, count: int) -> None:
        """Records the adversary holds back: gaps, and jumps across the window."""
        for index in range(count):
            self._seal(b"held %d" % index)

    @precondition(lambda self: bool(self.sealed))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        counter = data.draw(st.sampled_from(sorted(self.sealed)), label="counter")
        record, plaintext = self.sealed[counter]
        model_accepts = counter not in self.accepted and counter > self.top - W
        try:
            opened = self.receiver.open(record)
        except ReplayRefused:
            assert not model_accepts, f"genuine counter {counter} refused"
        else:
            assert model_accepts, f"counter {counter} accepted twice or too old"
            assert opened == plaintext
            self.accepted.add(counter)
            self.top = max(self.top, counter)

    @precondition(lambda self: bool(self.sealed))
    @rule(data=st.data())
    def deliver_corrupted(self, data: st.DataObject) -> None:
        counter = data.draw(st.sampled_from(sorted(self.sealed)), label="counter")
        record = self.sealed[counter][0]
        bit = data.draw(st.integers(0, len(record) * 8 - 1), label="bit")
        with pytest.raises(RemoteProtocolError):
            self.receiver.open(flip(record, bit))

    @rule(counter=st.integers(0, MAX_WIRE_COUNTER), body=st.binary(min_size=8, max_size=40))
    def deliver_forged(self, counter: int, body: bytes) -> None:
        forged = bytes((0x03,)) + counter.to_bytes(4, "big") + body
        with pytest.raises(RemoteProtocolError) as excinfo:
            self.receiver.open(forged)
        assert excinfo.type in (AuthenticationFailed, ReplayRefused)

    @invariant()
    def window_matches_model(self) -> None:
        assert self.receiver.highest_received == self.top
        assert self.accepted <= set(self.sealed)  # only genuine records get in


TestReplayAdversary = ReplayAdversary.TestCase


def test_a_session_cannot_be_copied() -> None:
    """Two copies would reuse send counters (nonce reuse) and accept a record twice."""
    remote, _ = session_pair()
    with pytest.raises(LocalProtocolError):
        copy.copy(remote)
    with pytest.raises(LocalProtocolError):
        copy.deepcopy(remote)
