"""Pairing at the protocol level: numeric comparison with a commitment (SPEC §9, S4).

:class:`PairingInitiator` (remote) and :class:`PairingResponder` (pump) are
driven directly, record by record.  Attacks these tests stop:

* an active man in the middle who runs two separate pairings, one with each
  side, substituting its own static keys (SPEC §9.4): the two codes the
  users compare agree at the rate of chance, 10^-6 per attempt -- zero
  times in 2000 seeded attempts, for an attacker who draws fresh nonces and
  for one who relays the remote's nonce to the pump;
* the one thing that would let that attacker win, choosing its nonce *after*
  both codes are known, is exactly what the commitment forbids: a nonce the
  attacker ground to make the codes equal (about 10^6 tries expected,
  seconds of CPU) is refused because it does not open the commitment it
  sent first;
  so is every one-bit change of the committed nonce, and the pump's genuine
  commitment relayed to a different remote;
* a party that announces a static key it does not hold (someone else's
  public key) cannot produce the key confirmation, so it is never paired;
* replay: a recorded transcript replayed to either side pairs nothing,
  because the other side's nonce is fresh (SPEC §9.4, last paragraph);
* tampering: a one-bit change of any record in transit either is refused
  or makes the two codes differ, since the code hashes the whole transcript;
* invalid keys: every low-order and non-canonical X25519 public key from
  Wycheproof is refused as S_r (by the pump) and as S_p (by the remote)
  before any use (SPEC §5), while valid and twist keys are accepted;
* state: records out of order are refused and change nothing; a failed
  check or an abort is sticky -- every later call raises.

The code itself is checked against an independent implementation of SPEC
§9.3 (hashlib/hmac and pyca's HKDF, not ``protocol.primitives``), including
the rejection sampling that makes it exactly uniform, plus a loose
chi-square sanity check of its distribution.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from helpers import seeded_random
from vectors_util import load_vectors

from pumpguard.protocol import (
    AuthenticationFailed,
    LocalProtocolError,
    MalformedRecord,
    PairingInitiator,
    PairingResponder,
    PairingState,
    RandomBytes,
    RecordType,
    comparison_code,
    x25519_private,
    x25519_public_bytes,
)
from pumpguard.protocol.wire import (
    LABEL_PAIR_COMMIT,
    LABEL_PAIR_CONFIRM,
    LABEL_PAIR_SAS,
    SUITE_NAME,
)

# --- An independent implementation of SPEC §9.3 ------------------------------

#: Written out from SPEC §9.3 rather than imported.
SAS_MODULUS = 1_000_000
SAS_ACCEPT_BELOW = 4_294_000_000


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def spec_code(h4: bytes) -> str:
    """code = first 32-bit word of HKDF(salt=h4, ikm="", info=LABEL_PAIR_SAS, L=64) below
    4 294 000 000, mod 10^6, as 6 digits (SPEC §9.3)."""
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=h4, info=LABEL_PAIR_SAS).derive(b"")
    for offset in range(0, 64, 4):
        word = int.from_bytes(okm[offset : offset + 4], "big")
        if word < SAS_ACCEPT_BELOW:
            return f"{word % SAS_MODULUS:06d}"
    raise AssertionError("no acceptable word (probability < 2^-121)")


def fast_spec_code(h4: bytes) -> str:
    """The same with bare HMAC (RFC 5869 spelled out): cheap enough to grind."""
    prk = hmac.digest(h4, b"", "sha256")
    t1 = hmac.digest(prk, LABEL_PAIR_SAS + b"\x01", "sha256")
    okm = t1 + hmac.digest(prk, t1 + LABEL_PAIR_SAS + b"\x02", "sha256")
    for offset in range(0, 64, 4):
        word = int.from_bytes(okm[offset : offset + 4], "big")
        if word < SAS_ACCEPT_BELOW:
            return f"{word % SAS_MODULUS:06d}"
    raise AssertionError("no acceptable word")


def transcript_hash(*records: bytes) -> bytes:
    """h0 = H(SUITE_NAME || " pair"); h_i = H(h_{i-1} || record_i) over whole records."""
    h = H(SUITE_NAME + b" pair")
    for record in records:
        h = H(h + record)
    return h


def spec_confirm(ss: bytes, h4: bytes, role: bytes) -> bytes:
    k_c = HKDF(algorithm=hashes.SHA256(), length=32, salt=h4, info=LABEL_PAIR_CONFIRM).derive(ss)
    return hmac.digest(k_c, role + h4, "sha256")[:16]


def raw_dh(private: X25519PrivateKey, public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(public))


# --- Parties ------------------------------------------------------------------


@dataclass
class Party:
    key: X25519PrivateKey
    random_bytes: RandomBytes

    @property
    def public(self) -> bytes:
        return x25519_public_bytes(self.key)

    def initiator(self) -> PairingInitiator:
        return PairingInitiator(self.key, self.random_bytes)

    def responder(self) -> PairingResponder:
        return PairingResponder(self.key, self.random_bytes)


def party(seed: int) -> Party:
    rng = seeded_random(seed)
    return Party(x25519_private(rng(32)), rng)


@dataclass
class Honest:
    """A completed honest pairing and every record that crossed the link."""

    remote: PairingInitiator
    pump: PairingResponder
    request: bytes
    commit: bytes
    remote_nonce: bytes
    pump_nonce: bytes
    remote_confirm: bytes
    pump_confirm: bytes
    remote_code: str
    pump_code: str


def run_honest(remote: Party, pump: Party) -> Honest:
    r, p = remote.initiator(), pump.responder()
    request = r.start()
    commit = p.receive_request(request)
    remote_nonce = r.receive_commit(commit)
    pump_nonce, pump_code = p.receive_remote_nonce(remote_nonce)
    remote_code = r.receive_pump_nonce(pump_nonce)
    remote_confirm = r.confirm()
    p.receive_remote_confirm(remote_confirm)
    _, pump_confirm = p.user_confirmed()
    r.receive_pump_confirm(pump_confirm)
    return Honest(
        r,
        p,
        request,
        commit,
        remote_nonce,
        pump_nonce,
        remote_confirm,
        pump_confirm,
        remote_code,
        pump_code,
    )


def test_honest_pairing_completes_with_each_others_keys() -> None:
    remote, pump = party(1), party(2)
    r, p = remote.initiator(), pump.responder()
    request = r.start()
    commit = p.receive_request(request)
    remote_nonce = r.receive_commit(commit)
    pump_nonce, pump_code = p.receive_remote_nonce(remote_nonce)
    remote_code = r.receive_pump_nonce(pump_nonce)
    assert remote_code == pump_code
    assert (r.state, p.state) == (PairingState.COMPARING, PairingState.COMPARING)
    remote_confirm = r.confirm()
    p.receive_remote_confirm(remote_confirm)
    assert p.remote_confirmed
    pump_result, pump_confirm = p.user_confirmed()
    remote_result = r.receive_pump_confirm(pump_confirm)
    assert (r.state, p.state) == (PairingState.PAIRED, PairingState.PAIRED)
    assert pump_result.peer_static == remote.public
    assert remote_result.peer_static == pump.public
    assert pump_result.code == remote_result.code == pump_code
    # SPEC §4 layouts: fixed sizes, type byte first.
    sizes = [
        (request, RecordType.PAIR_REQUEST, 33),
        (commit, RecordType.PAIR_COMMIT, 65),
        (remote_nonce, RecordType.PAIR_REMOTE_NONCE, 17),
        (pump_nonce, RecordType.PAIR_PUMP_NONCE, 17),
        (remote_confirm, RecordType.PAIR_REMOTE_CONFIRM, 17),
        (pump_confirm, RecordType.PAIR_PUMP_CONFIRM, 17),
    ]
    for record, record_type, length in sizes:
        assert (record[0], len(record)) == (record_type, length)
    assert request[1:] == remote.public
    assert commit[1:33] == pump.public


def test_code_commitment_and_confirmations_match_spec_9_3() -> None:
    """Everything the two sides compute, recomputed from the records alone."""
    remote, pump = party(3), party(4)
    run = run_honest(remote, pump)
    # C_p = H(LABEL_PAIR_COMMIT || S_p || S_r || N_p)
    assert run.commit[33:] == H(
        LABEL_PAIR_COMMIT + pump.public + remote.public + run.pump_nonce[1:]
    )
    h4 = transcript_hash(run.request, run.commit, run.remote_nonce, run.pump_nonce)
    assert run.remote_code == run.pump_code == spec_code(h4) == fast_spec_code(h4)
    ss = raw_dh(remote.key, pump.public)
    assert ss == raw_dh(pump.key, remote.public)
    assert run.remote_confirm[1:] == spec_confirm(ss, h4, b"remote")
    assert run.pump_confirm[1:] == spec_confirm(ss, h4, b"pump")
    assert run.remote_confirm[1:] != run.pump_confirm[1:]


def test_code_skips_words_that_would_bias_it() -> None:
    """Rejection sampling (SPEC §9.3): a first word >= 4 294 000 000 is never used.

    Without it, codes 000000..967295 would be 1/4294 more likely than the
    rest.  About 1 hash in 4440 has such a first word; find some.
    """
    rng = random.Random(7)
    skipped = 0
    for _ in range(60_000):
        h4 = rng.randbytes(32)
        okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=h4, info=LABEL_PAIR_SAS).derive(b"")
        first, second = int.from_bytes(okm[0:4], "big"), int.from_bytes(okm[4:8], "big")
        if first < SAS_ACCEPT_BELOW:
            continue
        skipped += 1
        assert second < SAS_ACCEPT_BELOW  # (fails with probability 2.3e-4 per case)
        assert comparison_code(h4) == f"{second % SAS_MODULUS:06d}" == spec_code(h4)
        assert comparison_code(h4) != f"{first % SAS_MODULUS:06d}"
    assert skipped >= 5  # expected ~13.5


def test_code_matches_independent_implementation_and_looks_uniform() -> None:
    """Loose chi-square over 100 buckets; exactness comes from the test above."""
    rng = random.Random(8)
    buckets: Counter[int] = Counter()
    last_digit: Counter[str] = Counter()
    samples = 50_000
    for i in range(samples):
        h4 = rng.randbytes(32)
        code = comparison_code(h4)
        assert len(code) == 6
        assert code.isdigit()
        if i % 100 == 0:
            assert code == spec_code(h4)
        buckets[int(code) // 10_000] += 1
        last_digit[code[-1]] += 1
    assert chi_square(buckets, 100, samples) < 99 + 6 * 14  # df 99, sd ~14
    assert chi_square(last_digit, 10, samples) < 9 + 6 * 4.3  # df 9, sd ~4.3


def chi_square(counts: Counter[Any], cells: int, total: int) -> float:
    assert len(counts) <= cells
    expected = total / cells
    observed = [*counts.values(), *([0] * (cells - len(counts)))]
    return sum((o - expected) ** 2 / expected for o in observed)


# --- The man in the middle (SPEC §9.4) ---------------------------------------


@dataclass
class Mitm:
    """Both legs of one man-in-the-middle attempt, with the codes each user sees."""

    victim: PairingInitiator
    pump: PairingResponder
    as_pump: PairingResponder
    as_remote: PairingInitiator
    victim_nonce: bytes
    pump_nonce: bytes
    victim_code: str
    pump_code: str


def relaying(source: list[bytes], fallback: RandomBytes) -> RandomBytes:
    """A random source that hands out ``source``'s queued values first."""

    def random_bytes(n: int) -> bytes:
        if source:
            value = source.pop(0)
            assert len(value) == n
            return value
        return fallback(n)

    return random_bytes


def mitm_attempt(seed: int, *, relay_nonce: bool = False) -> Mitm:
    """The attacker M pairs with the victim remote R as a pump, and with the pump P as
    a remote, with keys of its own, relaying in the order SPEC §9.4 forces on it.

    With ``relay_nonce`` M uses R's nonce N_r as its own nonce towards P.
    """
    rng = seeded_random(seed)
    victim = PairingInitiator(x25519_private(rng(32)), rng)
    pump = PairingResponder(x25519_private(rng(32)), rng)
    queued: list[bytes] = []
    as_pump = PairingResponder(x25519_private(rng(32)), rng)
    as_remote = PairingInitiator(x25519_private(rng(32)), relaying(queued, rng))
    # R asks to pair; M asks P in its own name and gets P's commitment.
    victim_request = victim.start()
    pump_commit = pump.receive_request(as_remote.start())
    # M must answer R with a commitment before R reveals N_r.
    victim_nonce = victim.receive_commit(as_pump.receive_request(victim_request))
    if relay_nonce:
        queued.append(victim_nonce[1:])
    # M must reveal its nonce to P before P reveals N_p.
    attacker_nonce = as_remote.receive_commit(pump_commit)
    pump_nonce, pump_code = pump.receive_remote_nonce(attacker_nonce)
    assert as_remote.receive_pump_nonce(pump_nonce) == pump_code
    # Only now does M open its commitment towards R.
    reply, attacker_code = as_pump.receive_remote_nonce(victim_nonce)
    victim_code = victim.receive_pump_nonce(reply)
    assert victim_code == attacker_code
    if relay_nonce:
        assert attacker_nonce[1:] == victim_nonce[1:]
    return Mitm(victim, pump, as_pump, as_remote, victim_nonce, pump_nonce, victim_code, pump_code)


def test_mitm_codes_agree_only_by_chance() -> None:
    """2000 seeded attempts, two attacker strategies: the codes never agree.

    Expected agreements: 2000 x 10^-6 = 0.002.  A code with fewer digits,
    or one derived from fewer inputs than the whole transcript, shows up
    here as agreements (with 3 digits, about 2 expected).
    """
    codes: Counter[str] = Counter()
    agreements = 0
    for seed in range(2000):
        attempt = mitm_attempt(seed, relay_nonce=seed % 2 == 1)
        agreements += attempt.victim_code == attempt.pump_code
        codes[attempt.victim_code[0]] += 1
        codes[attempt.pump_code[0]] += 1
        # Neither side ever holds the other's real key.
        assert attempt.victim.state is PairingState.COMPARING
        assert attempt.pump.state is PairingState.COMPARING
    assert agreements == 0
    assert chi_square(codes, 10, 4000) < 9 + 6 * 4.3


def test_mitm_user_rejection_leaves_both_victims_unpaired() -> None:
    """After a mismatch the users refuse; neither victim completes with M's key."""
    attempt = mitm_attempt(11)
    assert attempt.victim_code != attempt.pump_code
    attempt.victim.abort()  # the remote's user saw two different codes
    with pytest.raises(LocalProtocolError):
        attempt.victim.confirm()
    # The pump's user rejects too; even if M's confirmation arrived first.
    attempt.pump.receive_remote_confirm(attempt.as_remote.confirm())
    attempt.pump.abort()
    with pytest.raises(LocalProtocolError):
        attempt.pump.user_confirmed()
    assert attempt.pump.state is attempt.victim.state is PairingState.FAILED


#: For ``grinding_setup()``'s keys and nonces, the first i with
#: SAS(h3_RM || 0x13 || N_i) equal to the pump's code, where
#: N_i = SHA-256("grind" || i as 4 bytes)[:16].  Found off line; the expected
#: cost is 10^6 tries (about 7 s of CPU here), this seed was lucky.
GRIND_SEED = 5
GRIND_INDEX = 2728


def grinding_setup() -> tuple[PairingInitiator, bytes, bytes, str, bytes]:
    """The victim at AWAIT_PUMP_NONCE; M's committed nonce, the ground one, P's code."""
    rng = seeded_random(GRIND_SEED)
    victim = PairingInitiator(x25519_private(rng(32)), rng)
    pump = PairingResponder(x25519_private(rng(32)), rng)
    as_pump = PairingResponder(x25519_private(rng(32)), rng)
    as_remote = PairingInitiator(x25519_private(rng(32)), rng)
    victim_request = victim.start()
    pump_commit = pump.receive_request(as_remote.start())
    attacker_commit = as_pump.receive_request(victim_request)
    victim_nonce = victim.receive_commit(attacker_commit)
    _, pump_code = pump.receive_remote_nonce(as_remote.receive_commit(pump_commit))
    committed, _ = as_pump.receive_remote_nonce(victim_nonce)
    h3 = transcript_hash(victim_request, attacker_commit, victim_nonce)
    ground = bytes((RecordType.PAIR_PUMP_NONCE,)) + grind_nonce(GRIND_INDEX)
    assert fast_spec_code(H(h3 + ground)) == pump_code
    return victim, committed, ground, pump_code, h3


def grind_nonce(index: int) -> bytes:
    return H(b"grind" + index.to_bytes(4, "big"))[:16]


def test_grinding_the_nonce_after_the_fact_would_win_without_the_commitment() -> None:
    """What the commitment is for: knowing both legs, M can grind a nonce that makes the
    codes equal in ~10^6 tries (seconds).  The victim refuses it: it does not open C."""
    victim, committed, ground, pump_code, h3 = grinding_setup()
    assert ground != committed
    # The ground nonce really gives the pump's code (independently and per protocol) ...
    assert comparison_code(H(h3 + ground)) == spec_code(H(h3 + ground)) == pump_code
    # ... and the honest opening does not.
    assert spec_code(H(h3 + committed)) != pump_code
    with pytest.raises(AuthenticationFailed):
        victim.receive_pump_nonce(ground)
    assert victim.state is PairingState.FAILED
    assert victim.code is None
    # Sticky: not even the honest opening is accepted now.
    with pytest.raises(LocalProtocolError):
        victim.receive_pump_nonce(committed)


def test_grinding_index_is_the_first_hit() -> None:
    """The constant above is the first success: no smaller index makes the codes equal."""
    _, _, _, pump_code, h3 = grinding_setup()
    for index in range(GRIND_INDEX):
        candidate = bytes((RecordType.PAIR_PUMP_NONCE,)) + grind_nonce(index)
        assert fast_spec_code(H(h3 + candidate)) != pump_code


def at_await_pump_nonce(seed: int) -> tuple[PairingInitiator, bytes]:
    """An honest remote waiting for N_p, and the pump's PAIR_PUMP_NONCE for it."""
    remote, pump = party(seed), party(seed + 1000)
    r, p = remote.initiator(), pump.responder()
    nonce = r.receive_commit(p.receive_request(r.start()))
    pump_nonce, _ = p.receive_remote_nonce(nonce)
    return r, pump_nonce


def flip(record: bytes, index: int, bit: int) -> bytes:
    changed = bytearray(record)
    changed[index] ^= 1 << bit
    return bytes(changed)


def test_commitment_binds_every_bit_of_the_pump_nonce() -> None:
    for index in range(1, 17):
        for bit in range(8):
            remote, pump_nonce = at_await_pump_nonce(20)
            with pytest.raises(AuthenticationFailed):
                remote.receive_pump_nonce(flip(pump_nonce, index, bit))
            assert remote.state is PairingState.FAILED
    remote, pump_nonce = at_await_pump_nonce(20)
    remote.receive_pump_nonce(pump_nonce)  # the unmodified one opens it


def test_commitment_binds_the_remote_key() -> None:
    """M cannot reuse P's commitment (made for S_m) towards R: it names S_r too."""
    rng = seeded_random(30)
    victim = PairingInitiator(x25519_private(rng(32)), rng)
    pump = PairingResponder(x25519_private(rng(32)), rng)
    as_remote = PairingInitiator(x25519_private(rng(32)), rng)
    victim.start()
    pump_commit = pump.receive_request(as_remote.start())
    # Relay P's genuine commit (its real key and commitment) to R ...
    victim_nonce = victim.receive_commit(pump_commit)
    # ... and R's nonce to P, then P's genuine nonce back to R.
    pump_nonce, _ = pump.receive_remote_nonce(as_remote.receive_commit(pump_commit))
    as_remote.receive_pump_nonce(pump_nonce)  # M's own leg with P completes
    assert victim_nonce[1:] != pump_nonce[1:]
    with pytest.raises(AuthenticationFailed):
        victim.receive_pump_nonce(pump_nonce)
    assert victim.state is PairingState.FAILED


def test_mitm_cannot_pass_on_the_pumps_nonce_as_its_own() -> None:
    """Relaying N_p to R would make R's transcript share both nonces with P's; R refuses
    it because M had to commit before N_p existed."""
    for seed in range(50):
        attempt_rng = seeded_random(seed + 40_000)
        victim = PairingInitiator(x25519_private(attempt_rng(32)), attempt_rng)
        pump = PairingResponder(x25519_private(attempt_rng(32)), attempt_rng)
        as_pump = PairingResponder(x25519_private(attempt_rng(32)), attempt_rng)
        as_remote = PairingInitiator(x25519_private(attempt_rng(32)), attempt_rng)
        victim_request = victim.start()
        pump_commit = pump.receive_request(as_remote.start())
        victim_nonce = victim.receive_commit(as_pump.receive_request(victim_request))
        pump_nonce, _ = pump.receive_remote_nonce(as_remote.receive_commit(pump_commit))
        with pytest.raises(AuthenticationFailed):
            victim.receive_pump_nonce(pump_nonce)
        assert victim.code is None
        assert victim_nonce[1:] != pump_nonce[1:]


def pump_awaiting_confirm(
    pump: Party, request: bytes, remote_nonce: bytes
) -> tuple[PairingResponder, bytes]:
    """A pump responder that took ``request`` and ``remote_nonce``, and its h4."""
    p = pump.responder()
    commit = p.receive_request(request)
    pump_nonce, _ = p.receive_remote_nonce(remote_nonce)
    return p, transcript_hash(request, commit, remote_nonce, pump_nonce)


def test_announcing_someone_elses_key_never_pairs() -> None:
    """M sends the victim remote's public key S_r in a PAIR_REQUEST of its own.  Even if
    the pump's user confirmed the code, M cannot compute M_r: it needs DH(s_r, S_p)."""
    victim, pump, attacker = party(50), party(51), party(52)
    request = bytes((RecordType.PAIR_REQUEST,)) + victim.public
    remote_nonce = bytes((RecordType.PAIR_REMOTE_NONCE,)) + attacker.random_bytes(16)
    earlier = run_honest(victim, pump)
    guesses: list[Callable[[bytes], bytes]] = [
        lambda h4: spec_confirm(raw_dh(attacker.key, pump.public), h4, b"remote"),
        lambda h4: spec_confirm(raw_dh(attacker.key, victim.public), h4, b"remote"),
        lambda h4: spec_confirm(bytes(32), h4, b"remote"),
        lambda h4: earlier.remote_confirm[1:],  # the victim's genuine M_r of another run
    ]
    for guess in guesses:
        p, h4 = pump_awaiting_confirm(pump, request, remote_nonce)
        with pytest.raises(AuthenticationFailed):
            p.receive_remote_confirm(bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + guess(h4))
        assert p.state is PairingState.FAILED
        assert not p.remote_confirmed
        with pytest.raises(LocalProtocolError):
            p.user_confirmed()
    # Control: the holder of s_r computes the tag the same way and is accepted.
    p, h4 = pump_awaiting_confirm(pump, request, remote_nonce)
    genuine = spec_confirm(raw_dh(victim.key, pump.public), h4, b"remote")
    p.receive_remote_confirm(bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + genuine)
    result, _ = p.user_confirmed()
    assert result.peer_static == victim.public


def test_the_pump_stores_nothing_before_the_remote_proved_its_key() -> None:
    remote, pump = party(53), party(54)
    r, p = remote.initiator(), pump.responder()
    nonce = r.receive_commit(p.receive_request(r.start()))
    pump_nonce, _ = p.receive_remote_nonce(nonce)
    r.receive_pump_nonce(pump_nonce)
    with pytest.raises(LocalProtocolError):
        p.user_confirmed()  # the user pressed "confirm" before M_r arrived
    assert p.state is PairingState.COMPARING  # a local misuse, not a failure: M_r may follow
    p.receive_remote_confirm(r.confirm())
    result, reply = p.user_confirmed()
    assert result.peer_static == remote.public
    assert r.receive_pump_confirm(reply).peer_static == pump.public


def test_remote_never_accepts_a_pump_key_its_sender_does_not_hold() -> None:
    """M puts the real pump's S_p in a commit of its own: R computes ss with the real
    pump, so M's PAIR_PUMP_CONFIRM cannot verify, whatever code the users saw."""
    victim, pump, attacker = party(60), party(61), party(62)
    r = victim.initiator()
    r.start()
    nonce = attacker.random_bytes(16)
    commit = (
        bytes((RecordType.PAIR_COMMIT,))
        + pump.public
        + H(LABEL_PAIR_COMMIT + pump.public + victim.public + nonce)
    )
    r.receive_commit(commit)
    r.receive_pump_nonce(bytes((RecordType.PAIR_PUMP_NONCE,)) + nonce)  # M's own nonce: opens
    r.confirm()
    forged = spec_confirm(raw_dh(attacker.key, victim.public), bytes(32), b"pump")
    with pytest.raises(AuthenticationFailed):
        r.receive_pump_confirm(bytes((RecordType.PAIR_PUMP_CONFIRM,)) + forged)
    assert r.state is PairingState.FAILED


# --- Replay -------------------------------------------------------------------


def test_replayed_remote_transcript_pairs_nothing() -> None:
    """The remote's three records of an honest pairing, replayed to the same pump later:
    the pump's fresh N_p changes h4, so the recorded M_r fails."""
    remote, pump = party(70), party(71)
    recorded = run_honest(remote, pump)
    p = pump.responder()
    p.receive_request(recorded.request)
    _, code = p.receive_remote_nonce(recorded.remote_nonce)
    assert code != recorded.pump_code
    with pytest.raises(AuthenticationFailed):
        p.receive_remote_confirm(recorded.remote_confirm)
    assert p.state is PairingState.FAILED
    with pytest.raises(LocalProtocolError):
        p.user_confirmed()


def test_replayed_pump_transcript_pairs_nothing() -> None:
    """The pump's three records replayed to the same remote: its fresh N_r changes h4,
    so the code differs from the recorded one and the recorded M_p fails."""
    remote, pump = party(72), party(73)
    recorded = run_honest(remote, pump)
    r = remote.initiator()
    r.start()
    r.receive_commit(recorded.commit)
    code = r.receive_pump_nonce(recorded.pump_nonce)  # C_p still opens: N_p is the same
    assert code != recorded.remote_code
    r.confirm()
    with pytest.raises(AuthenticationFailed):
        r.receive_pump_confirm(recorded.pump_confirm)
    assert r.state is PairingState.FAILED


def test_confirmations_do_not_transfer_between_roles() -> None:
    """M_r reflected back to the remote as M_p is refused (the role is in the MAC)."""
    remote, pump = party(74), party(75)
    r, p = remote.initiator(), pump.responder()
    nonce = r.receive_commit(p.receive_request(r.start()))
    pump_nonce, _ = p.receive_remote_nonce(nonce)
    r.receive_pump_nonce(pump_nonce)
    remote_confirm = r.confirm()
    reflected = bytes((RecordType.PAIR_PUMP_CONFIRM,)) + remote_confirm[1:]
    with pytest.raises(AuthenticationFailed):
        r.receive_pump_confirm(reflected)
    assert r.state is PairingState.FAILED


# --- Tampering: the code binds the whole transcript ---------------------------

#: The four records hashed into the code, in order.
TRANSCRIPT_RECORDS = ("request", "commit", "remote_nonce", "pump_nonce")


def run_tampered(which: str, index: int, bit: int) -> str:
    """An honest pairing where one bit of record ``which`` changes in transit.

    Returns "refused" if a side refused a record, else "differ" or "same"
    for the two codes the users would compare.
    """
    remote, pump = party(80), party(81)
    r, p = remote.initiator(), pump.responder()

    def transit(name: str, record: bytes) -> bytes:
        return flip(record, index, bit) if name == which else record

    try:
        commit = p.receive_request(transit("request", r.start()))
        remote_nonce = r.receive_commit(transit("commit", commit))
        pump_nonce, pump_code = p.receive_remote_nonce(transit("remote_nonce", remote_nonce))
        remote_code = r.receive_pump_nonce(transit("pump_nonce", pump_nonce))
    except (AuthenticationFailed, MalformedRecord):
        return "refused"
    return "same" if remote_code == pump_code else "differ"


@pytest.mark.parametrize("which", TRANSCRIPT_RECORDS)
def test_any_bit_changed_in_transit_is_refused_or_shows(which: str) -> None:
    length = {"request": 33, "commit": 65, "remote_nonce": 17, "pump_nonce": 17}[which]
    outcomes = Counter(run_tampered(which, index, index % 8) for index in range(length))
    assert outcomes["same"] == 0
    assert outcomes["refused"] >= 1  # the type byte at least
    assert run_tampered("none", 0, 0) == "same"  # control: untouched, the codes agree
    if which == "remote_nonce":
        assert outcomes["differ"] == length - 1  # N_r is unauthenticated: only the code shows it
    if which in ("commit", "pump_nonce"):
        assert outcomes["differ"] == 0  # S_p or C_p or N_p changed: the commitment fails


# --- Invalid public keys (SPEC §5, Wycheproof) --------------------------------

#: Flags whose public keys the protocol must refuse (SPEC §5; as test_primitives.py).
REFUSED_FLAGS = frozenset({"LowOrderPublic", "ZeroSharedSecret", "NonCanonicalPublic"})


def wycheproof_publics() -> tuple[list[str], list[str]]:
    """Distinct public keys of x25519_test.json: (must refuse, must accept)."""
    refused: dict[str, None] = {}
    accepted: dict[str, None] = {}
    for group in load_vectors("x25519_test")["testGroups"]:
        for test in group["tests"]:
            target = refused if REFUSED_FLAGS.intersection(test["flags"]) else accepted
            target[test["public"]] = None
    return list(refused), list(accepted)


REFUSED_KEYS, ACCEPTED_KEYS = wycheproof_publics()


def test_wycheproof_key_lists_are_not_empty() -> None:
    """The parametrized tests below cannot pass vacuously on a truncated file."""
    assert len(REFUSED_KEYS) >= 25
    assert len(ACCEPTED_KEYS) >= 400
    # Both kinds of refusal are present: small order (u < p) and non-canonical (u >= p).
    values = [int.from_bytes(bytes.fromhex(k), "little") for k in REFUSED_KEYS]
    assert any(u >= 2**255 - 19 for u in values)
    assert any(u < 2**255 - 19 for u in values)


@pytest.mark.parametrize("public", REFUSED_KEYS)
def test_pump_refuses_invalid_remote_static(public: str) -> None:
    p = party(90).responder()
    with pytest.raises(AuthenticationFailed):
        p.receive_request(bytes((RecordType.PAIR_REQUEST,)) + bytes.fromhex(public))
    assert p.state is PairingState.FAILED


@pytest.mark.parametrize("public", REFUSED_KEYS)
def test_remote_refuses_invalid_pump_static(public: str) -> None:
    r = party(91).initiator()
    r.start()
    key = bytes.fromhex(public)
    commitment = H(LABEL_PAIR_COMMIT + key + party(91).public + bytes(16))
    with pytest.raises(AuthenticationFailed):
        r.receive_commit(bytes((RecordType.PAIR_COMMIT,)) + key + commitment)
    assert r.state is PairingState.FAILED


def test_valid_and_twist_keys_are_accepted_by_both_sides() -> None:
    """No over-refusal: every other Wycheproof public key is usable as a static key."""
    for public in ACCEPTED_KEYS:
        key = bytes.fromhex(public)
        p = party(92).responder()
        p.receive_request(bytes((RecordType.PAIR_REQUEST,)) + key)
        assert p.state is PairingState.AWAIT_REMOTE_NONCE
        r = party(93).initiator()
        r.start()
        r.receive_commit(bytes((RecordType.PAIR_COMMIT,)) + key + bytes(32))
        assert r.state is PairingState.AWAIT_PUMP_NONCE


# --- State machine: order, stickiness, malformed records ----------------------


def attempts(
    r: PairingInitiator, p: PairingResponder, ref: Honest
) -> Iterator[tuple[str, PairingInitiator | PairingResponder, Callable[[], object]]]:
    """Every call either side can receive, with the records of an identical honest run."""
    yield "r.start", r, r.start
    yield "r.receive_commit", r, lambda: r.receive_commit(ref.commit)
    yield "r.receive_pump_nonce", r, lambda: r.receive_pump_nonce(ref.pump_nonce)
    yield "r.confirm", r, r.confirm
    yield "r.receive_pump_confirm", r, lambda: r.receive_pump_confirm(ref.pump_confirm)
    yield "p.receive_request", p, lambda: p.receive_request(ref.request)
    yield "p.receive_remote_nonce", p, lambda: p.receive_remote_nonce(ref.remote_nonce)
    yield "p.receive_remote_confirm", p, lambda: p.receive_remote_confirm(ref.remote_confirm)
    yield "p.user_confirmed", p, p.user_confirmed


#: The calls each state accepts.
EXPECTED = {
    PairingState.IDLE: {"r.start", "p.receive_request"},
    PairingState.AWAIT_COMMIT: {"r.receive_commit"},
    PairingState.AWAIT_REMOTE_NONCE: {"p.receive_remote_nonce"},
    PairingState.AWAIT_PUMP_NONCE: {"r.receive_pump_nonce"},
    PairingState.COMPARING: {"r.confirm", "p.receive_remote_confirm"},
    PairingState.AWAIT_PUMP_CONFIRM: {"r.receive_pump_confirm"},
    PairingState.PAIRED: set(),
}


def test_out_of_order_calls_are_refused_and_change_nothing() -> None:
    """Before every honest step, every call the state does not expect is tried on both
    sides.  Each raises, and the pairing then finishes exactly like an undisturbed one."""
    reference = run_honest(party(100), party(101))
    remote, pump = party(100), party(101)
    r, p = remote.initiator(), pump.responder()
    refused = 0
    records: dict[str, bytes] = {}

    def step_request() -> None:
        records["request"] = r.start()

    def step_commit() -> None:
        records["commit"] = p.receive_request(records["request"])

    def step_remote_nonce() -> None:
        records["remote_nonce"] = r.receive_commit(records["commit"])

    def step_pump_nonce() -> None:
        records["pump_nonce"], _ = p.receive_remote_nonce(records["remote_nonce"])

    def step_code() -> None:
        r.receive_pump_nonce(records["pump_nonce"])

    def step_remote_confirm() -> None:
        records["remote_confirm"] = r.confirm()

    def step_pump_takes_confirm() -> None:
        p.receive_remote_confirm(records["remote_confirm"])

    def step_user() -> None:
        _, records["pump_confirm"] = p.user_confirmed()

    def step_done() -> None:
        r.receive_pump_confirm(records["pump_confirm"])

    honest_steps = [
        step_request,
        step_commit,
        step_remote_nonce,
        step_pump_nonce,
        step_code,
        step_remote_confirm,
        step_pump_takes_confirm,
        step_user,
        step_done,
    ]
    for step in [*honest_steps, None]:
        for name, side, call in attempts(r, p, reference):
            if side_accepts(name, side):
                continue
            before = (side.state, side.code)
            with pytest.raises((MalformedRecord, LocalProtocolError)):
                call()
            assert (side.state, side.code) == before, name
            refused += 1
        if step is not None:
            step()
    assert (r.state, p.state) == (PairingState.PAIRED, PairingState.PAIRED)
    assert r.code == p.code == reference.remote_code
    assert records["pump_confirm"] == reference.pump_confirm
    assert refused >= 60


def side_accepts(name: str, side: PairingInitiator | PairingResponder) -> bool:
    """Whether ``name`` is the (or an) expected call for ``side`` now."""
    if isinstance(side, PairingResponder):
        if side.state is PairingState.COMPARING:
            if name == "p.user_confirmed":
                return side.remote_confirmed
            if name == "p.receive_remote_confirm":
                return True  # a repeated, valid M_r is harmless
        return name.startswith("p.") and name in EXPECTED[side.state]
    return name.startswith("r.") and name in EXPECTED[side.state]


def failing_runs() -> Iterator[tuple[str, PairingInitiator | PairingResponder]]:
    """Each way a side fails, left in its failed state."""
    bad_key = bytes.fromhex(REFUSED_KEYS[0])
    remote, pump = party(110), party(111)

    r = remote.initiator()
    r.start()
    with pytest.raises(AuthenticationFailed):
        r.receive_commit(bytes((RecordType.PAIR_COMMIT,)) + bad_key + bytes(32))
    yield "remote: invalid pump key", r

    r, commit_p = remote.initiator(), pump.responder()
    nonce = r.receive_commit(commit_p.receive_request(r.start()))
    pump_nonce, _ = commit_p.receive_remote_nonce(nonce)
    with pytest.raises(AuthenticationFailed):
        r.receive_pump_nonce(flip(pump_nonce, 5, 0))
    yield "remote: commitment not opened", r

    r, q = remote.initiator(), pump.responder()
    nonce = r.receive_commit(q.receive_request(r.start()))
    r.receive_pump_nonce(q.receive_remote_nonce(nonce)[0])
    r.confirm()
    with pytest.raises(AuthenticationFailed):
        r.receive_pump_confirm(bytes((RecordType.PAIR_PUMP_CONFIRM,)) + bytes(16))
    yield "remote: bad M_p", r

    r, q = remote.initiator(), pump.responder()
    nonce = r.receive_commit(q.receive_request(r.start()))
    r.receive_pump_nonce(q.receive_remote_nonce(nonce)[0])
    r.abort()
    yield "remote: user said the codes differ", r

    r = remote.initiator()
    r.start()
    with pytest.raises(MalformedRecord):
        r.receive_commit(bytes((RecordType.PAIR_COMMIT,)) + bytes(63))
    yield "remote: short commit", r

    q = pump.responder()
    with pytest.raises(AuthenticationFailed):
        q.receive_request(bytes((RecordType.PAIR_REQUEST,)) + bad_key)
    yield "pump: invalid remote key", q

    q = pump.responder()
    q.receive_request(remote.initiator().start())
    with pytest.raises(MalformedRecord):
        q.receive_remote_nonce(bytes((RecordType.PAIR_REMOTE_NONCE,)) + bytes(15))
    yield "pump: short nonce", q

    r, q = remote.initiator(), pump.responder()
    nonce = r.receive_commit(q.receive_request(r.start()))
    r.receive_pump_nonce(q.receive_remote_nonce(nonce)[0])
    with pytest.raises(AuthenticationFailed):
        q.receive_remote_confirm(bytes((RecordType.PAIR_REMOTE_CONFIRM,)) + bytes(16))
    yield "pump: bad M_r", q

    r, q = remote.initiator(), pump.responder()
    nonce = r.receive_commit(q.receive_request(r.start()))
    r.receive_pump_nonce(q.receive_remote_nonce(nonce)[0])
    q.receive_remote_confirm(r.confirm())
    q.abort()
    yield "pump: user rejected (or timeout) after a valid M_r", q


def test_failure_is_sticky() -> None:
    """After any failure every call raises LocalProtocolError, valid input included."""
    reference = run_honest(party(110), party(111))
    seen = 0
    for why, side in failing_runs():
        seen += 1
        assert side.state is PairingState.FAILED, why
        code = side.code
        r = side if isinstance(side, PairingInitiator) else party(110).initiator()
        p = side if isinstance(side, PairingResponder) else party(111).responder()
        for name, target, call in attempts(r, p, reference):
            if target is not side:
                continue
            with pytest.raises(LocalProtocolError):
                call()
            assert side.state is PairingState.FAILED, (why, name)
            assert side.code == code
    assert seen == 9


MALFORMED_CASES = [
    ("receive_commit", RecordType.PAIR_COMMIT, 64),
    ("receive_pump_nonce", RecordType.PAIR_PUMP_NONCE, 16),
    ("receive_pump_confirm", RecordType.PAIR_PUMP_CONFIRM, 16),
    ("receive_request", RecordType.PAIR_REQUEST, 32),
    ("receive_remote_nonce", RecordType.PAIR_REMOTE_NONCE, 16),
    ("receive_remote_confirm", RecordType.PAIR_REMOTE_CONFIRM, 16),
]


def side_at(method: str) -> PairingInitiator | PairingResponder:
    """A side of an honest run, in the state where ``method`` is expected."""
    remote, pump = party(120), party(121)
    r, p = remote.initiator(), pump.responder()
    request = r.start()
    if method == "receive_commit":
        return r
    if method == "receive_request":
        return p
    nonce = r.receive_commit(p.receive_request(request))
    if method == "receive_remote_nonce":
        return p
    pump_nonce, _ = p.receive_remote_nonce(nonce)
    if method == "receive_pump_nonce":
        return r
    r.receive_pump_nonce(pump_nonce)
    if method == "receive_remote_confirm":
        return p
    r.confirm()
    return r


@pytest.mark.parametrize(("method", "record_type", "body"), MALFORMED_CASES)
@pytest.mark.parametrize("defect", ["short", "long", "wrong type", "empty"])
def test_malformed_record_fails_the_side(
    method: str, record_type: RecordType, body: int, defect: str
) -> None:
    side = side_at(method)
    record = {
        "short": bytes((record_type,)) + bytes(body - 1),
        "long": bytes((record_type,)) + bytes(body + 1),
        "wrong type": bytes((RecordType.DATA,)) + bytes(body),
        "empty": b"",
    }[defect]
    with pytest.raises(MalformedRecord):
        getattr(side, method)(record)
    assert side.state is PairingState.FAILED
