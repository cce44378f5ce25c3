"""Signed limits policies: ``protocol/policy.py`` against SPEC §12.5 (property S6).

SPEC §12.5: limits change only by a policy

    policy    = {1: pump-id, 2: version: uint, 3: max-bolus: pulses, 4: max-1h: pulses,
                 5: max-24h: pulses}            ; deterministic CBOR, signed as
    signature = Ed25519(prescriber, LABEL_POLICY ‖ policy)

signed by the prescriber key enrolled from the front panel, for this pump
(``pump-id`` = first 8 bytes of H(S_p)), within ``ABSOLUTE_MAX_*``.

What these tests pin down:

* golden bytes of the policy body and its signature, written from the CDDL
  and RFC 8949 / RFC 8032, and the pump id of SPEC §12.5;
* the signature is checked first, over ``LABEL_POLICY ‖ policy`` and nothing
  else: forged, truncated, relabelled or other-key signatures are refused with
  AuthenticationFailed, and an unauthenticated body is never parsed, so the
  sender learns nothing about why (SPEC §10.2, S12);
* an authentic policy that is malformed, for another pump or out of bounds is
  refused with PolicyInvalid, at every bound (min, max, one past each);
* Hypothesis: whatever the bytes, ``verify_policy`` returns a policy or
  raises AuthenticationFailed / PolicyInvalid -- never anything else (SPEC §10.1).

Version *ordering* (no rollback, SPEC §12.5) is the pump's decision against
its stored policy: ``verify_policy`` returns the version as signed, and
``tests/test_limits.py`` (the ledger) and ``tests/test_pump.py`` (over the
link, across reboots) test the refusal of rollbacks.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import cbor2
import pytest
from cbor_reference import cbor, cbor_items, head
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpguard.protocol import (
    AuthenticationFailed,
    LimitPolicy,
    LocalProtocolError,
    PolicyInvalid,
    RemoteProtocolError,
    encode_policy,
    pump_id,
    sign_policy,
    verify_policy,
    wire,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: SPEC §11: the signature context, spelled out rather than imported.
LABEL: Final = b"pumpguard/1 limits policy"
#: The prescriber of these tests: the Ed25519 key with seed 00 01 .. 1f.
PRESCRIBER: Final = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PRESCRIBER_PUBLIC: Final = bytes.fromhex(
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
)
OTHER_KEY: Final = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUMP: Final = bytes(range(8))
OTHER_PUMP: Final = bytes(range(1, 9))

#: SPEC §12.5 (CDDL) in deterministic CBOR, by hand: a map of 5 pairs (0xa5),
#: keys 1..5 in order, pump-id as an 8-byte string (0x48), then uints.
GOLDEN_BODY: Final = bytes.fromhex("a5 01 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8")
GOLDEN_POLICY: Final = LimitPolicy(1, 200, 300, 1000)
#: Ed25519 (RFC 8032, deterministic) of LABEL ‖ GOLDEN_BODY under PRESCRIBER.
GOLDEN_SIGNATURE: Final = bytes.fromhex(
    "86b91c342ac6f5c58de6b13c63f5fdebc055fdda1f6073c40d49f5b7ce811636"
    "2f018f2ddec9d25b2b4bb72fe588dfd788e333ced079fab4e5406c08e8ec6a04"
)


def body(
    version: object = 1,
    bolus: object = 200,
    hour: object = 300,
    day: object = 1000,
    *,
    pump: object = PUMP,
) -> bytes:
    """A policy body in deterministic CBOR (tests/cbor_reference.py), any values."""
    return cbor({1: pump, 2: version, 3: bolus, 4: hour, 5: day})


def verify(policy_bytes: bytes, signature: bytes | None = None, **overrides: Any) -> LimitPolicy:
    """``verify_policy`` for PUMP under PRESCRIBER; signs with PRESCRIBER by default."""
    if signature is None:
        signature = PRESCRIBER.sign(LABEL + policy_bytes)
    arguments: dict[str, Any] = {"prescriber_public": PRESCRIBER_PUBLIC, "for_pump": PUMP}
    arguments.update(overrides)
    return verify_policy(policy_bytes, signature, **arguments)


# --- Golden bytes (SPEC §12.5) -----------------------------------------------------------


def test_the_prescriber_key_is_the_one_named() -> None:
    assert PRESCRIBER.public_key().public_bytes_raw() == PRESCRIBER_PUBLIC


def test_pump_id_is_the_first_8_bytes_of_sha256_of_the_pump_key() -> None:
    """SPEC §12.5: pump-id = first 8 bytes of H(S_p)."""
    assert pump_id(bytes(32)) == bytes.fromhex("66687aadf862bd77")  # SHA-256 of 32 zero bytes
    static = X25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()
    assert pump_id(static) == hashlib.sha256(static).digest()[:8]
    assert len(pump_id(static)) == wire.PUMP_ID_LEN


def test_encode_policy_golden_bytes() -> None:
    """SPEC §12.5: the body is the deterministic CBOR map with keys 1..5."""
    assert encode_policy(GOLDEN_POLICY, for_pump=PUMP) == GOLDEN_BODY
    widest = LimitPolicy(0xFFFF_FFFF, 500, 4000, 4000)
    assert encode_policy(widest, for_pump=PUMP) == bytes.fromhex(
        "a5 01 48 0001020304050607 02 1affffffff 03 1901f4 04 190fa0 05 190fa0"
    )


def test_sign_policy_golden_signature_over_the_label_then_the_body() -> None:
    """SPEC §12.5: signature = Ed25519(prescriber, LABEL_POLICY ‖ policy)."""
    signature = sign_policy(GOLDEN_BODY, PRESCRIBER)
    assert signature == GOLDEN_SIGNATURE
    Ed25519PublicKey.from_public_bytes(PRESCRIBER_PUBLIC).verify(signature, LABEL + GOLDEN_BODY)
    assert verify(GOLDEN_BODY, GOLDEN_SIGNATURE) == GOLDEN_POLICY


@FUZZ
@given(
    version=st.integers(0, 0xFFFF_FFFF),
    bolus=st.integers(1, wire.ABSOLUTE_MAX_BOLUS_PULSES),
    extra_hour=st.integers(0, wire.ABSOLUTE_MAX_24H_PULSES),
    extra_day=st.integers(0, wire.ABSOLUTE_MAX_24H_PULSES),
    pump=st.binary(min_size=8, max_size=8),
)
def test_every_valid_policy_round_trips(
    version: int, bolus: int, extra_hour: int, extra_day: int, pump: bytes
) -> None:
    """encode_policy is the deterministic CBOR of the CDDL map; verify_policy inverts it."""
    hour = min(bolus + extra_hour, wire.ABSOLUTE_MAX_24H_PULSES)
    day = min(hour + extra_day, wire.ABSOLUTE_MAX_24H_PULSES)
    policy = LimitPolicy(version, bolus, hour, day)
    encoded = encode_policy(policy, for_pump=pump)
    assert encoded == body(version, bolus, hour, day, pump=pump)
    assert len(encoded) <= wire.MAX_POLICY_LEN  # fits a policy-upload (SPEC §12.2)
    signature = sign_policy(encoded, PRESCRIBER)
    assert verify(encoded, signature, for_pump=pump) == policy


@pytest.mark.parametrize("length", [0, 7, 9, 32])
def test_encode_policy_needs_an_8_byte_pump_id(length: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_policy(GOLDEN_POLICY, for_pump=bytes(length))


# --- Bounds (SPEC §12.5: within ABSOLUTE_MAX_*; policy.py: bolus <= 1 h <= 24 h) ----------

U32: Final = 0xFFFF_FFFF
MAX_BOLUS: Final = wire.ABSOLUTE_MAX_BOLUS_PULSES
MAX_DAY: Final = wire.ABSOLUTE_MAX_24H_PULSES
BOUNDS: Final[list[tuple[str, tuple[int, int, int, int], bool]]] = [
    ("version=0", (0, 200, 300, 1000), True),
    ("version=max", (U32, 200, 300, 1000), True),
    ("version=max+1", (U32 + 1, 200, 300, 1000), False),
    ("version=-1", (-1, 200, 300, 1000), False),
    ("bolus=0", (1, 0, 300, 1000), False),
    ("bolus=1", (1, 1, 1, 1), True),
    ("bolus=absolute-max", (1, MAX_BOLUS, MAX_BOLUS, MAX_BOLUS), True),
    ("bolus=absolute-max+1", (1, MAX_BOLUS + 1, MAX_DAY, MAX_DAY), False),
    ("bolus=-1", (1, -1, 300, 1000), False),
    ("hour=bolus", (1, 200, 200, 1000), True),
    ("hour=bolus-1", (1, 200, 199, 1000), False),
    ("hour=day", (1, 200, 1000, 1000), True),
    ("hour=day+1", (1, 200, 1001, 1000), False),
    ("day=absolute-max", (1, 200, 300, MAX_DAY), True),
    ("day=absolute-max+1", (1, 200, 300, MAX_DAY + 1), False),
    ("all=absolute-max", (1, MAX_BOLUS, MAX_DAY, MAX_DAY), True),
]


@pytest.mark.parametrize(("values", "ok"), [b[1:] for b in BOUNDS], ids=[b[0] for b in BOUNDS])
def test_bounds_of_every_limit_both_ways(values: tuple[int, int, int, int], ok: bool) -> None:
    """Each limit at its edges, authentic, through verify_policy and encode_policy."""
    authentic = body(*values)
    policy = LimitPolicy(*values)
    if ok:
        assert verify(authentic) == policy
        assert encode_policy(policy, for_pump=PUMP) == authentic
    else:
        with pytest.raises(PolicyInvalid):
            verify(authentic)
        with pytest.raises(PolicyInvalid):
            encode_policy(policy, for_pump=PUMP)


# --- The signature first (SPEC §12.5, §10.2; S6, S12) ------------------------------------


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


FORGERIES: Final[dict[str, tuple[bytes, bytes]]] = {
    "other-key": (GOLDEN_BODY, OTHER_KEY.sign(LABEL + GOLDEN_BODY)),
    "no-label": (GOLDEN_BODY, PRESCRIBER.sign(GOLDEN_BODY)),
    "other-label": (GOLDEN_BODY, PRESCRIBER.sign(b"pumpguard/1 audit" + GOLDEN_BODY)),
    "zero-signature": (GOLDEN_BODY, bytes(64)),
    "truncated-signature": (GOLDEN_BODY, GOLDEN_SIGNATURE[:63]),
    "extended-signature": (GOLDEN_BODY, GOLDEN_SIGNATURE + b"\x00"),
    "empty-signature": (GOLDEN_BODY, b""),
    "signature-bit-0": (GOLDEN_BODY, flip(GOLDEN_SIGNATURE, 0)),
    "signature-bit-63": (GOLDEN_BODY, flip(GOLDEN_SIGNATURE, 63)),
    "body-bit-version": (flip(GOLDEN_BODY, 12), GOLDEN_SIGNATURE),
    "body-bit-max-24h": (flip(GOLDEN_BODY, len(GOLDEN_BODY) - 1), GOLDEN_SIGNATURE),
    "body-trailing-byte": (GOLDEN_BODY + b"\x00", GOLDEN_SIGNATURE),
    # Authentic would be refused as PolicyInvalid; unauthenticated, the reason
    # must not show (SPEC §10.2).
    "garbage-body": (b"\xff\x00", GOLDEN_SIGNATURE),
    "other-pump-body": (body(pump=OTHER_PUMP), GOLDEN_SIGNATURE),
    "out-of-bounds-body": (body(1, MAX_BOLUS + 1, MAX_DAY, MAX_DAY), GOLDEN_SIGNATURE),
    "empty-body": (b"", GOLDEN_SIGNATURE),
}


@pytest.mark.parametrize(("policy_bytes", "signature"), FORGERIES.values(), ids=list(FORGERIES))
def test_forged_signatures_are_refused_before_the_body_is_read(
    policy_bytes: bytes, signature: bytes
) -> None:
    """Only PRESCRIBER's signature over exactly LABEL_POLICY ‖ body counts, and
    nothing about an unauthenticated body is revealed: always AuthenticationFailed."""
    with pytest.raises(AuthenticationFailed):
        verify(policy_bytes, signature)


def test_only_the_enrolled_prescriber_key_verifies() -> None:
    other_public = OTHER_KEY.public_key().public_bytes_raw()
    with pytest.raises(AuthenticationFailed):
        verify(GOLDEN_BODY, GOLDEN_SIGNATURE, prescriber_public=other_public)
    # A 32-byte string that is not a point on the curve verifies nothing.
    with pytest.raises(AuthenticationFailed):
        verify(GOLDEN_BODY, GOLDEN_SIGNATURE, prescriber_public=b"\xff" * 32)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_prescriber_key_of_the_wrong_size_is_refused(length: int) -> None:
    with pytest.raises(PolicyInvalid):
        verify(GOLDEN_BODY, GOLDEN_SIGNATURE, prescriber_public=bytes(length))


def test_a_body_longer_than_max_policy_len_is_refused_on_its_size() -> None:
    """SPEC §11, §12.2: a policy is at most MAX_POLICY_LEN (96) bytes; a longer one
    is refused on its size alone, signed or not, before any signature work."""
    padded = cbor({1: PUMP, 2: 1, 3: 200, 4: 300, 5: 1000, 6: bytes(70)})
    assert len(padded) == wire.MAX_POLICY_LEN + 1
    with pytest.raises(PolicyInvalid):
        verify(padded)
    with pytest.raises(PolicyInvalid):
        verify(padded, bytes(64))
    # One byte shorter, the size passes and the (zero) signature is what fails.
    with pytest.raises(AuthenticationFailed):
        verify(padded[:-1], bytes(64))


# --- Authentic but invalid (SPEC §12.5) --------------------------------------------------

AUTHENTIC_INVALID: Final[dict[str, bytes]] = {
    "for-another-pump": body(pump=OTHER_PUMP),
    "pump-id-of-7-bytes": body(pump=PUMP[:7]),
    "pump-id-of-9-bytes": body(pump=PUMP + b"\x00"),
    "pump-id-as-text": body(pump=PUMP.decode("latin-1")),
    "pump-id-missing": cbor({2: 1, 3: 200, 4: 300, 5: 1000}),
    "max-24h-missing": cbor({1: PUMP, 2: 1, 3: 200, 4: 300}),
    "extra-key-6": cbor({1: PUMP, 2: 1, 3: 200, 4: 300, 5: 1000, 6: 0}),
    "extra-key-0": cbor({0: 0, 1: PUMP, 2: 1, 3: 200, 4: 300, 5: 1000}),
    "text-keys": cbor({"1": PUMP, "2": 1, "3": 200, "4": 300, "5": 1000}),
    "an-array": cbor([PUMP, 1, 200, 300, 1000]),
    "an-array-of-1-to-5": cbor([1, 2, 3, 4, 5]),
    "an-integer": cbor(5),
    "a-byte-string": cbor(b"\x01\x02\x03\x04\x05"),
    "empty-map": cbor({}),
    "empty": b"",
    "not-cbor": b"\xff",
    "truncated": GOLDEN_BODY[:-1],
    "version-true": body(version=True),
    "version-float": body(version=1.0),
    "version-null": body(version=None),
    "version-bytes": body(version=b"\x01"),
    "bolus-float": body(bolus=200.0),
    "bolus-false": body(bolus=False),
    "hour-text": body(hour="300"),
    "day-negative": body(day=-1000),
    "day-array": body(day=[1000]),
    "version-2^64": body(version=1 << 64),  # a bignum (tag 2)
}


@pytest.mark.parametrize("policy_bytes", AUTHENTIC_INVALID.values(), ids=list(AUTHENTIC_INVALID))
def test_authentic_but_invalid_policies_are_refused(policy_bytes: bytes) -> None:
    """Signed by the prescriber, yet not a policy for this pump: PolicyInvalid."""
    with pytest.raises(PolicyInvalid):
        verify(policy_bytes)


#: Signed, well-formed in meaning, but not the deterministic encoding SPEC §12.5
#: asks for.  ``verify_policy`` parses with ``cbor2.loads`` and checks no byte
#: form, so it accepts these today (found by this file; policy.py is outside
#: this change).  Duplicate keys are the dangerous one: two values for a limit,
#: and which one counts depends on the parser -- a C port taking the first and
#: this implementation taking the last enforce different limits from the same
#: signed bytes.
NON_DETERMINISTIC: Final[dict[str, str]] = {
    "duplicate-key-different-values": "a6 01 48 0001020304050607 02 01 03 18c8 04 19012c"
    " 05 1903e8 05 1903e9",
    "duplicate-key-same-value": "a6 01 48 0001020304050607 02 01 03 18c8 04 19012c"
    " 05 1903e8 05 1903e8",
    "unsorted-keys": "a5 02 01 01 48 0001020304050607 03 18c8 04 19012c 05 1903e8",
    "trailing-byte": GOLDEN_BODY.hex() + "00",
    "non-minimal-version": "a5 01 48 0001020304050607 02 1801 03 18c8 04 19012c 05 1903e8",
    "non-minimal-map-length": "b805 01 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8",
    "non-minimal-bstr-length": "a5 01 5808 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8",
    "indefinite-map": "bf 01 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8 ff",
    "indefinite-pump-id": "a5 01 5f 48 0001020304050607 ff 02 01 03 18c8 04 19012c 05 1903e8",
    "key-true-for-1": "a5 f5 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8",
    "key-1.0-for-1": "a5 f93c00 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8",
    "bignum-version": "a5 01 48 0001020304050607 02 c24101 03 18c8 04 19012c 05 1903e8",
    "tagged-map": "d81c a5 01 48 0001020304050607 02 01 03 18c8 04 19012c 05 1903e8",
}


@pytest.mark.parametrize("hex_bytes", NON_DETERMINISTIC.values(), ids=list(NON_DETERMINISTIC))
def test_only_the_deterministic_encoding_of_a_policy_is_accepted(hex_bytes: str) -> None:
    """SPEC §12.5: the policy is deterministic CBOR; any other byte form is refused,
    even when signed, so every signed policy means one thing to every parser."""
    with pytest.raises(PolicyInvalid):
        verify(bytes.fromhex(hex_bytes))


def test_the_non_deterministic_forms_above_differ_from_the_golden_body_only_in_form() -> None:
    """The cases above mean the golden policy to a lenient parser: they are refused
    for their byte form alone, not for what they say."""
    golden = cbor2.loads(GOLDEN_BODY)
    for name, hex_bytes in NON_DETERMINISTIC.items():
        if name != "duplicate-key-different-values":
            assert cbor2.loads(bytes.fromhex(hex_bytes)) == golden, name


# --- Properties (SPEC §10.1) ---------------------------------------------------------------


def policy_like() -> st.SearchStrategy[bytes]:
    """Maps that look like policies: keys 0..6, any values, some in deterministic form."""
    values = st.one_of(
        st.integers(-5, 5000),
        st.sampled_from([0, U32, U32 + 1, 1 << 64]),
        st.binary(max_size=10),
        st.sampled_from([PUMP, OTHER_PUMP]),
        st.booleans(),
        st.none(),
        st.floats(),
        st.text(max_size=4),
    )
    deterministic = st.dictionaries(st.integers(0, 6), values, max_size=7).map(cbor)
    raw_pairs = st.lists(st.tuples(cbor_items(), cbor_items()), max_size=6).map(
        lambda pairs: head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    )
    near_valid = st.builds(
        body,
        st.integers(-1, U32 + 1),
        st.integers(-1, MAX_BOLUS + 1),
        st.integers(-1, MAX_DAY + 1),
        st.integers(-1, MAX_DAY + 1),
        pump=st.sampled_from([PUMP, OTHER_PUMP]),
    )
    return st.one_of(
        near_valid, deterministic, raw_pairs, cbor_items(), st.binary(max_size=100)
    ).filter(lambda data: len(data) <= 120)


@FUZZ
@given(policy_like())
def test_any_signed_bytes_give_a_policy_or_policy_invalid(policy_bytes: bytes) -> None:
    """Authentic input: a LimitPolicy within bounds, or PolicyInvalid -- nothing else."""
    try:
        policy = verify(policy_bytes)
    except PolicyInvalid:
        return
    policy.check_bounds()
    assert len(policy_bytes) <= wire.MAX_POLICY_LEN


@FUZZ
@given(policy_bytes=st.binary(max_size=120), signature=st.binary(max_size=70))
def test_any_unsigned_bytes_are_refused_as_documented(
    policy_bytes: bytes, signature: bytes
) -> None:
    """Unauthenticated input: AuthenticationFailed (or PolicyInvalid on size alone)."""
    with pytest.raises(RemoteProtocolError) as info:
        verify(policy_bytes, signature)
    assert type(info.value) in (AuthenticationFailed, PolicyInvalid)
    if len(policy_bytes) <= wire.MAX_POLICY_LEN:
        assert type(info.value) is AuthenticationFailed
