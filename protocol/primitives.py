"""Thin, checked wrappers over the cryptographic primitives (SPEC §5).

Every primitive the protocol uses goes through this module, and
``tests/test_primitives.py`` runs the Wycheproof vectors against these
wrappers -- not against the library underneath -- so the checks we add
(refusing low-order and non-canonical X25519 keys) are tested too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .errors import AuthenticationFailed, LocalProtocolError
from .wire import AEAD_KEY_LEN, HASH_LEN, TAG_LEN, X25519_KEY_LEN

#: Where every random byte comes from, injected by the caller: ``os.urandom``
#: in production, a seeded generator in tests (STYLE §1).  Called with a
#: count, it returns that many bytes.
RandomBytes = Callable[[int], bytes]

_P25519 = 2**255 - 19

#: u-coordinates of the points of small order on Curve25519 that are below p
#: (RFC 7748 §7; the other small-order encodings are >= p and refused as
#: non-canonical).  A Diffie-Hellman with any of them yields a value the
#: attacker knows, so they are refused before use.
_LOW_ORDER_U = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P25519 - 1,
    }
)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hkdf_sha256(*, salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): Extract then Expand."""
    if not 0 < length <= 255 * HASH_LEN:
        raise LocalProtocolError("HKDF output length out of range")
    prk = hmac.digest(salt or bytes(HASH_LEN), ikm, "sha256")
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        okm += block
        counter += 1
    return okm[:length]


def aead(key: bytes) -> AESCCM:
    """The suite's AEAD, AES-CCM-16-64-128: build once per key, reuse per frame."""
    if len(key) != AEAD_KEY_LEN:
        raise LocalProtocolError("AEAD key must be 16 bytes")
    return AESCCM(key, tag_length=TAG_LEN)


def check_x25519_public(public: bytes) -> None:
    """Refuse a peer's X25519 public key unless canonical and not of small order.

    Raises:
        AuthenticationFailed: the key is the wrong length, non-canonical
            (u >= p, which includes any key with the top bit set), or one of
            the small-order points.
    """
    if len(public) != X25519_KEY_LEN:
        raise AuthenticationFailed("X25519 public key has the wrong length")
    u = int.from_bytes(public, "little")
    if u >= _P25519:
        raise AuthenticationFailed("X25519 public key is not canonical")
    if u in _LOW_ORDER_U:
        raise AuthenticationFailed("X25519 public key has small order")


def x25519(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 with the peer key checked first and an all-zero result refused."""
    check_x25519_public(peer_public)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # the library's own all-zero check
        raise AuthenticationFailed("X25519 produced the all-zero value") from exc
    if not any(shared):
        raise AuthenticationFailed("X25519 produced the all-zero value")
    return shared


def x25519_private(seed: bytes) -> X25519PrivateKey:
    """An X25519 private key from 32 bytes of injected randomness."""
    if len(seed) != X25519_KEY_LEN:
        raise LocalProtocolError("X25519 private key needs 32 random bytes")
    return X25519PrivateKey.from_private_bytes(seed)


def x25519_public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
