"""The session handshake: mutual authentication and forward secrecy (SPEC §6).

Two messages, 82 bytes in all, between a remote and a pump that already hold
each other's static X25519 public keys (from pairing, SPEC §9)::

    HANDSHAKE_INIT  remote -> pump   0x01 || E_r (32) || tag1 (8)
    HANDSHAKE_RESP  pump -> remote   0x02 || E_p (32) || tag2 (8)

The pattern is Noise KK (``-> s  <- s ... -> e, es, ss  <- e, ee, se``) with
two changes that matter on a pump, both argued in SPEC §6.1:

* ``ss`` is mixed *first*, from a value cached at pairing, so the pump checks
  tag1 with symmetric crypto alone and refuses a forged HANDSHAKE_INIT before
  any public-key work (S9).
* ``es``, ``ee`` and ``se`` are mixed together into one HKDF when the second
  message is built, and tags are 8 bytes.  Fewer HKDF calls, fewer bytes.

Both sides contribute a fresh ephemeral key, so a recorded handshake replayed
later leads nowhere: the replayer cannot compute ``ee`` for the pump's new
ephemeral.  The pump treats the remote as authenticated only when the first
DATA record under the new keys verifies (key confirmation, SPEC §6.4).

Key schedule, quoted step by step from SPEC §6 in the code below.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .errors import AuthenticationFailed, HandshakeRefused, LocalProtocolError, MalformedRecord
from .primitives import (
    RandomBytes,
    aead,
    check_x25519_public,
    hkdf_sha256,
    sha256,
    x25519,
    x25519_private,
    x25519_public_bytes,
)
from .session import SessionKeys
from .wire import (
    AEAD_KEY_LEN,
    AEAD_NONCE_LEN,
    HANDSHAKE_INIT_LEN,
    HANDSHAKE_RESP_LEN,
    HASH_LEN,
    IV_LEN,
    LABEL_SPLIT,
    RECENT_HANDSHAKES,
    SUITE_NAME,
    X25519_KEY_LEN,
    RecordType,
)

_ZERO_NONCE = bytes(AEAD_NONCE_LEN)
_INIT = bytes((RecordType.HANDSHAKE_INIT,))
_RESP = bytes((RecordType.HANDSHAKE_RESP,))


def _mix_key(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """``ck, k = HKDF(salt=ck, ikm, info="", L=48)`` split 32 / 16 (SPEC §6.1)."""
    okm = hkdf_sha256(salt=chaining_key, ikm=ikm, info=b"", length=HASH_LEN + AEAD_KEY_LEN)
    return okm[:HASH_LEN], okm[HASH_LEN:]


def _tag(key: bytes, transcript_hash: bytes) -> bytes:
    """An 8-byte tag over the transcript hash: AEAD(k, 0^13, ad=h, pt="")."""
    return aead(key).encrypt(_ZERO_NONCE, b"", transcript_hash)


def _verify_tag(key: bytes, transcript_hash: bytes, tag: bytes) -> bool:
    try:
        aead(key).decrypt(_ZERO_NONCE, tag, transcript_hash)
    except InvalidTag:
        return False
    return True


@dataclass(frozen=True, repr=False)
class PairedPeer:
    """Everything one side keeps about one pairing, precomputed once (SPEC §6.1).

    Build it with :func:`paired_peer`.  ``ss`` never changes for a pairing, so
    the first chaining key and tag key are computed here, at pairing or boot
    time, and never per handshake.
    """

    remote_static: bytes
    pump_static: bytes
    #: h after the pre-messages: SHA-256(SHA-256(SHA-256(SUITE) || S_remote) || S_pump).
    prologue_hash: bytes
    #: ck and k after MixKey(ck, ss).
    chaining_key: bytes
    init_key: bytes

    def __repr__(self) -> str:
        return (
            f"PairedPeer(remote={self.remote_static[:4].hex()}, pump={self.pump_static[:4].hex()})"
        )


def paired_peer(
    local_static: X25519PrivateKey, peer_static: bytes, *, local_is_remote: bool
) -> PairedPeer:
    """Precompute the pairing-constant part of the key schedule.

    Raises:
        AuthenticationFailed: ``peer_static`` is not a valid X25519 key.
    """
    local_public = x25519_public_bytes(local_static)
    remote_static, pump_static = (
        (local_public, peer_static) if local_is_remote else (peer_static, local_public)
    )
    # h = SHA-256(SUITE_NAME); ck = h
    h = sha256(SUITE_NAME)
    ck = h
    # h = SHA-256(h || S_remote); h = SHA-256(h || S_pump)      (pre-messages)
    h = sha256(h + remote_static)
    h = sha256(h + pump_static)
    # ck, k1 = MixKey(ck, ss)                                    (ss = DH(s_remote, S_pump))
    ck, k1 = _mix_key(ck, x25519(local_static, peer_static))
    return PairedPeer(
        remote_static=remote_static,
        pump_static=pump_static,
        prologue_hash=h,
        chaining_key=ck,
        init_key=k1,
    )


def _split(chaining_key: bytes, transcript_hash: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """okm = HKDF(salt=ck, ikm=h, info=LABEL_SPLIT, L=48):
    k_r2p (16) || iv_r2p (8) || k_p2r (16) || iv_p2r (8)."""
    okm = hkdf_sha256(
        salt=chaining_key, ikm=transcript_hash, info=LABEL_SPLIT, length=2 * (AEAD_KEY_LEN + IV_LEN)
    )
    k_r2p = okm[:AEAD_KEY_LEN]
    iv_r2p = okm[AEAD_KEY_LEN : AEAD_KEY_LEN + IV_LEN]
    rest = okm[AEAD_KEY_LEN + IV_LEN :]
    return k_r2p, iv_r2p, rest[:AEAD_KEY_LEN], rest[AEAD_KEY_LEN:]


class HandshakeInitiator:
    """The remote's side: :meth:`start`, then :meth:`finish` with the pump's reply.

    Single use: a new handshake needs a new initiator.
    """

    def __init__(
        self, *, local_static: X25519PrivateKey, peer: PairedPeer, random_bytes: RandomBytes
    ) -> None:
        self._static = local_static
        self._peer = peer
        self._random_bytes = random_bytes
        self._ephemeral: X25519PrivateKey | None = None
        self._hash = b""
        self._done = False

    def start(self) -> bytes:
        """Return the HANDSHAKE_INIT record."""
        if self._ephemeral is not None or self._done:
            raise LocalProtocolError("handshake already started; an initiator is single use")
        self._ephemeral = x25519_private(self._random_bytes(X25519_KEY_LEN))
        e_public = x25519_public_bytes(self._ephemeral)
        # h = SHA-256(h || 0x01 || E_r); tag1 = AEAD(k1, 0, ad=h, ""); h = SHA-256(h || tag1)
        h = sha256(self._peer.prologue_hash + _INIT + e_public)
        tag1 = _tag(self._peer.init_key, h)
        self._hash = sha256(h + tag1)
        return _INIT + e_public + tag1

    def finish(self, record: bytes) -> SessionKeys:
        """Check the pump's HANDSHAKE_RESP and return the session keys.

        Raises:
            MalformedRecord: wrong length or type.
            AuthenticationFailed: invalid ephemeral key or bad tag.
            LocalProtocolError: :meth:`start` not called, or already finished.
        """
        if self._ephemeral is None or self._done:
            raise LocalProtocolError("finish() needs exactly one start() first")
        if len(record) != HANDSHAKE_RESP_LEN or record[:1] != _RESP:
            raise MalformedRecord("not a HANDSHAKE_RESP")
        e_pump = record[1 : 1 + X25519_KEY_LEN]
        tag2 = record[1 + X25519_KEY_LEN :]
        # es || ee || se, from the remote's side: DH(e_r, S_p) || DH(e_r, E_p) || DH(s_r, E_p)
        dh = (
            x25519(self._ephemeral, self._peer.pump_static)
            + x25519(self._ephemeral, e_pump)
            + x25519(self._static, e_pump)
        )
        keys = _complete(self._peer.chaining_key, self._hash, e_pump, dh, tag2)
        self._done = True
        self._ephemeral = None
        return SessionKeys(
            send_key=keys[0],
            send_iv=keys[1],
            receive_key=keys[2],
            receive_iv=keys[3],
            session_hash=keys[4],
        )


def _complete(
    chaining_key: bytes, h: bytes, e_pump: bytes, dh: bytes, tag2: bytes | None
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """Second half of the schedule, shared by both sides.

    h = SHA-256(h || 0x02 || E_p); ck, k2 = MixKey(ck, es || ee || se);
    tag2 = AEAD(k2, 0, ad=h, ""); h = SHA-256(h || tag2); split.

    With ``tag2`` given (remote side) it is verified; with ``None`` (pump
    side) it is computed.  Returns the four directional values in r2p, p2r
    order, the final transcript hash and tag2.
    """
    h = sha256(h + _RESP + e_pump)
    ck, k2 = _mix_key(chaining_key, dh)
    if tag2 is None:
        tag2 = _tag(k2, h)
    elif not _verify_tag(k2, h, tag2):
        raise AuthenticationFailed("HANDSHAKE_RESP tag did not verify")
    h = sha256(h + tag2)
    k_r2p, iv_r2p, k_p2r, iv_p2r = _split(ck, h)
    return k_r2p, iv_r2p, k_p2r, iv_p2r, h, tag2


def _find_peer(
    peers: Sequence[PairedPeer], e_remote: bytes, tag1: bytes
) -> tuple[int, PairedPeer, bytes]:
    """The paired peer whose cached key verifies tag1, with its transcript hash.

    Trial verification keeps remotes anonymous on the link (no key id is
    sent) and costs one SHA-256 and one AES-CCM per paired remote
    (at most MAX_REMOTES).
    """
    for index, peer in enumerate(peers):
        h = sha256(peer.prologue_hash + _INIT + e_remote)
        if _verify_tag(peer.init_key, h, tag1):
            return index, peer, h
    raise AuthenticationFailed("HANDSHAKE_INIT from no paired remote")


@dataclass(frozen=True, repr=False)
class HandshakeAccepted:
    """A HANDSHAKE_INIT that verified: the reply to send and the new keys.

    The keys are *pending* until the remote's first DATA record under them
    verifies (SPEC §6.4); until then the pump keeps any older session.
    """

    reply: bytes
    keys: SessionKeys
    #: Index into the ``peers`` sequence the responder was given.
    peer_index: int

    def __repr__(self) -> str:
        return f"HandshakeAccepted(peer_index={self.peer_index}, keys={self.keys!r})"


class HandshakeResponder:
    """The pump's side.  Long-lived: one per pump, answering any paired remote.

    It remembers the last :data:`~protocol.wire.RECENT_HANDSHAKES` initiator
    ephemerals and refuses a repeat before any public-key work, so replaying
    a recorded HANDSHAKE_INIT costs the pump one hash and a few AES blocks.
    """

    def __init__(self, *, local_static: X25519PrivateKey, random_bytes: RandomBytes) -> None:
        self._static = local_static
        self._random_bytes = random_bytes
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    def respond(self, record: bytes, peers: Sequence[PairedPeer]) -> HandshakeAccepted:
        """Answer a HANDSHAKE_INIT from one of ``peers``.

        Order of checks (SPEC §6.5): length and type; tag1 against each
        peer's cached key (symmetric only); repeat of a recent ephemeral;
        then, and only then, the X25519 operations.

        Raises:
            MalformedRecord: wrong length or type.
            AuthenticationFailed: no paired peer's tag matches, or the
                ephemeral key is invalid.
            HandshakeRefused: this ephemeral was seen recently (a replay).
        """
        if len(record) != HANDSHAKE_INIT_LEN or record[:1] != _INIT:
            raise MalformedRecord("not a HANDSHAKE_INIT")
        e_remote = record[1 : 1 + X25519_KEY_LEN]
        tag1 = record[1 + X25519_KEY_LEN :]
        index, peer, h = _find_peer(peers, e_remote, tag1)
        if e_remote in self._recent:
            raise HandshakeRefused("HANDSHAKE_INIT replayed")
        check_x25519_public(e_remote)
        self._recent[e_remote] = None
        if len(self._recent) > RECENT_HANDSHAKES:
            self._recent.popitem(last=False)
        h = sha256(h + tag1)
        ephemeral = x25519_private(self._random_bytes(X25519_KEY_LEN))
        e_pump = x25519_public_bytes(ephemeral)
        # es || ee || se, from the pump's side: DH(s_p, E_r) || DH(e_p, E_r) || DH(e_p, S_r)
        dh = (
            x25519(self._static, e_remote)
            + x25519(ephemeral, e_remote)
            + x25519(ephemeral, peer.remote_static)
        )
        k_r2p, iv_r2p, k_p2r, iv_p2r, session_hash, tag2 = _complete(
            peer.chaining_key, h, e_pump, dh, None
        )
        keys = SessionKeys(
            send_key=k_p2r,
            send_iv=iv_p2r,
            receive_key=k_r2p,
            receive_iv=iv_r2p,
            session_hash=session_hash,
        )
        return HandshakeAccepted(reply=_RESP + e_pump + tag2, keys=keys, peer_index=index)
