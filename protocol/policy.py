"""Limits policies signed by a prescriber key (SPEC §12.5, property S6).

The remote's session key can carry a policy to the pump but cannot make
one: a policy is valid only with an Ed25519 signature by the prescriber key
enrolled on the pump's front panel.  A policy names the pump it is for and
carries a version that must increase, so an old policy cannot be replayed to
loosen or roll back the limits::

    policy    = {1: pump-id (bstr .size 8), 2: version (uint),
                 3: max-bolus-pulses, 4: max-1h-pulses, 5: max-24h-pulses}
    signature = Ed25519(prescriber, LABEL_POLICY || deterministic-CBOR(policy))

The keys are ``wire.POLICY_KEY_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import AuthenticationFailed, LocalProtocolError, PolicyInvalid
from .primitives import sha256
from .wire import (
    ABSOLUTE_MAX_24H_PULSES,
    ABSOLUTE_MAX_BOLUS_PULSES,
    ED25519_PUBLIC_LEN,
    FACTORY_MAX_1H_PULSES,
    FACTORY_MAX_24H_PULSES,
    FACTORY_MAX_BOLUS_PULSES,
    LABEL_POLICY,
    MAX_POLICY_LEN,
    POLICY_KEY_MAX_1H,
    POLICY_KEY_MAX_24H,
    POLICY_KEY_MAX_BOLUS,
    POLICY_KEY_PUMP_ID,
    POLICY_KEY_VERSION,
    PUMP_ID_LEN,
    UINT32_MAX,
)

__all__ = [
    "LimitPolicy",
    "PolicyInvalid",
    "encode_policy",
    "pump_id",
    "sign_policy",
    "verify_policy",
]

#: The keys after the pump id, in the order of :class:`LimitPolicy`'s fields.
_LIMIT_KEYS: Final = (
    POLICY_KEY_VERSION,
    POLICY_KEY_MAX_BOLUS,
    POLICY_KEY_MAX_1H,
    POLICY_KEY_MAX_24H,
)


def pump_id(pump_static_public: bytes) -> bytes:
    """The pump's public identifier: SHA-256 of its static key, first 8 bytes."""
    return sha256(pump_static_public)[:PUMP_ID_LEN]


@dataclass(frozen=True)
class LimitPolicy:
    """Bolus limits in pulses.  Version 0 is the factory policy."""

    version: int
    max_bolus_pulses: int
    max_1h_pulses: int
    max_24h_pulses: int

    @classmethod
    def factory(cls) -> LimitPolicy:
        return cls(0, FACTORY_MAX_BOLUS_PULSES, FACTORY_MAX_1H_PULSES, FACTORY_MAX_24H_PULSES)

    def check_bounds(self) -> None:
        """Raise :class:`PolicyInvalid` unless 0 < bolus <= 1 h <= 24 h <= absolute maxima."""
        if not (
            0 < self.max_bolus_pulses <= ABSOLUTE_MAX_BOLUS_PULSES
            and self.max_bolus_pulses <= self.max_1h_pulses <= self.max_24h_pulses
            and self.max_24h_pulses <= ABSOLUTE_MAX_24H_PULSES
            and 0 <= self.version <= UINT32_MAX
        ):
            raise PolicyInvalid("limits out of bounds")


def encode_policy(policy: LimitPolicy, *, for_pump: bytes) -> bytes:
    policy.check_bounds()
    if len(for_pump) != PUMP_ID_LEN:
        raise LocalProtocolError(f"pump id must be {PUMP_ID_LEN} bytes")
    return cbor2.dumps(
        {
            POLICY_KEY_PUMP_ID: for_pump,
            POLICY_KEY_VERSION: policy.version,
            POLICY_KEY_MAX_BOLUS: policy.max_bolus_pulses,
            POLICY_KEY_MAX_1H: policy.max_1h_pulses,
            POLICY_KEY_MAX_24H: policy.max_24h_pulses,
        },
        canonical=True,
    )


def sign_policy(policy_bytes: bytes, prescriber: Ed25519PrivateKey) -> bytes:
    return prescriber.sign(LABEL_POLICY + policy_bytes)


def verify_policy(
    policy_bytes: bytes, signature: bytes, *, prescriber_public: bytes, for_pump: bytes
) -> LimitPolicy:
    """Check the signature first, then parse; return the policy.

    It does not compare versions: the pump does that against its stored one.

    Raises:
        AuthenticationFailed: the signature does not verify under the prescriber key.
        PolicyInvalid: authentic but malformed, out of bounds, or for another pump.
    """
    if len(prescriber_public) != ED25519_PUBLIC_LEN or len(policy_bytes) > MAX_POLICY_LEN:
        raise PolicyInvalid("policy or prescriber key has the wrong size")
    try:
        Ed25519PublicKey.from_public_bytes(prescriber_public).verify(
            signature, LABEL_POLICY + policy_bytes
        )
    except (InvalidSignature, ValueError):
        raise AuthenticationFailed("policy signature does not verify") from None
    try:
        body = cbor2.loads(policy_bytes)
    except Exception:  # signed by the prescriber but still undecodable
        raise PolicyInvalid("policy is not CBOR") from None
    if not isinstance(body, dict) or set(body) != {POLICY_KEY_PUMP_ID, *_LIMIT_KEYS}:
        raise PolicyInvalid("policy must have exactly keys 1..5")
    if body[POLICY_KEY_PUMP_ID] != for_pump:
        raise PolicyInvalid("policy is for another pump")
    values = [body[key] for key in _LIMIT_KEYS]
    if any(type(value) is not int for value in values):
        raise PolicyInvalid("policy limits must be integers")
    policy = LimitPolicy(*values)
    # One signed byte string means one policy to every parser: anything but
    # the deterministic encoding (duplicate or unsorted keys, long-form
    # lengths, indefinite items, tags, 1.0 for 1) is refused, so two
    # implementations can never read different limits from the same signature.
    if encode_policy(policy, for_pump=for_pump) != policy_bytes:
        raise PolicyInvalid("policy is not in deterministic CBOR")
    return policy
