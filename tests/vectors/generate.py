"""Generate ``tests/vectors/session_vectors.json``: handshake, record and frame vectors.

Covers docs/SPEC.md §6 (handshake and key schedule), §7 (DATA records and the
replay window) and §3 (link framing), with negative vectors for each.

Deterministic: static keys, ephemeral keys and plaintexts all come from
:class:`SeededRandom`, SHA-256 in counter mode over a fixed label, so running
this again yields byte-identical JSON (keys sorted, two-space indent).  It
must be run from a checkout and writes next to itself::

    python tests/vectors/generate.py           # (re)write the JSON
    python tests/vectors/generate.py --check   # exit 1 if the JSON is stale

Everything written is produced through the public ``protocol`` API, except
three inputs the API must refuse and so cannot produce: records at counters
COUNTER_LIMIT - 1 and COUNTER_LIMIT (sealed here with ``AESCCM`` following
SPEC §7's format) and handshake messages carrying a low-order ephemeral key
with a tag that would verify if the key were not checked (SPEC §6.5).  Each
crafting step is checked against a genuine message first.

``tests/test_vectors.py`` checks the file against the library in both
directions and with an independent implementation of the record format.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(_ROOT))

from pumpguard.protocol import (  # noqa: E402
    FrameDecoder,
    HandshakeInitiator,
    HandshakeResponder,
    PairedPeer,
    ProtocolError,
    SecureSession,
    SessionKeys,
    encode_frame,
    paired_peer,
    x25519_private,
    x25519_public_bytes,
)
from pumpguard.protocol.framing import cobs_encode, crc16  # noqa: E402
from pumpguard.protocol.primitives import hkdf_sha256, sha256  # noqa: E402
from pumpguard.protocol.wire import (  # noqa: E402
    AEAD_KEY_LEN,
    AEAD_NONCE_LEN,
    COUNTER_LIMIT,
    CRC_LEN,
    HASH_LEN,
    MAX_ENCODED_FRAME_LEN,
    MAX_PLAINTEXT_LEN,
    MAX_RECORD_LEN,
    REPLAY_WINDOW,
    SUITE_NAME,
    TAG_LEN,
    X25519_KEY_LEN,
    RecordType,
)

OUTPUT = Path(__file__).with_name("session_vectors.json")
GENERATOR = "tests/vectors/generate.py"

#: Every byte of "randomness" in the file is SHA-256(SEED || "/" || label || "/" || i).
SEED = b"pumpguard/1 session test vectors"

#: u = 325606...233504, a point of order 8 on Curve25519 (RFC 7748 §7): DH with
#: it gives all zeros for every clamped scalar.
LOW_ORDER_POINT = (
    325606250916557431795983626356110631294008115727848805560023387167927233504
).to_bytes(X25519_KEY_LEN, "little")

_HEADER = struct.Struct(">BI")
_ZERO_NONCE = bytes(AEAD_NONCE_LEN)
#: Counter of the last "window" record; counter WINDOW_TOP - REPLAY_WINDOW is just too old.
WINDOW_TOP = 100
#: Plaintexts sealed in each direction, by name: empty, 1 byte, one AES block, the maximum.
PLAINTEXT_SIZES = {"empty": 0, "one_byte": 1, "block": 16, "max": MAX_PLAINTEXT_LEN}

Json = dict[str, Any]


class SeededRandom:
    """A ``random_bytes`` callable: SHA-256 counter mode over a fixed label.

    Each call takes the next ``n`` bytes of the stream; ``calls`` records what
    every call returned, so the JSON can list the randomness each party drew.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.calls: list[bytes] = []
        self._pool = b""
        self._block = 0

    def __call__(self, n: int) -> bytes:
        while len(self._pool) < n:
            block = self._block.to_bytes(4, "big")
            self._pool += hashlib.sha256(SEED + b"/" + self.label.encode() + b"/" + block).digest()
            self._block += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        self.calls.append(out)
        return out


def replay_random(chunks: Sequence[bytes]) -> Callable[[int], bytes]:
    """A ``random_bytes`` that returns stored chunks in order (for re-running vectors)."""
    pending = list(chunks)

    def random_bytes(n: int) -> bytes:
        if not pending:
            raise AssertionError("vector ran out of stored randomness")
        chunk = pending.pop(0)
        if len(chunk) != n:
            raise AssertionError(f"asked for {n} random bytes, vector stores {len(chunk)}")
        return chunk

    return random_bytes


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 1 << bit
    return bytes(changed)


def _keys_json(keys: SessionKeys) -> Json:
    return {
        "send_key": keys.send_key.hex(),
        "send_iv": keys.send_iv.hex(),
        "receive_key": keys.receive_key.hex(),
        "receive_iv": keys.receive_iv.hex(),
        "session_hash": keys.session_hash.hex(),
    }


def craft_record(key: bytes, iv: bytes, counter: int, plaintext: bytes) -> bytes:
    """SPEC §7 by hand: 0x03 || counter_be32 || AES-CCM(key, nonce=header || iv, pt)."""
    header = _HEADER.pack(RecordType.DATA, counter)
    return header + AESCCM(key, tag_length=TAG_LEN).encrypt(header + iv, plaintext, None)


def _ccm_tag(key: bytes, transcript_hash: bytes) -> bytes:
    """SPEC §6.1 handshake tag: AEAD(k, 0^13, ad=h, pt="")."""
    return AESCCM(key, tag_length=TAG_LEN).encrypt(_ZERO_NONCE, b"", transcript_hash)


def craft_init(peer: PairedPeer, e_remote: bytes) -> bytes:
    """HANDSHAKE_INIT for any E_r with a valid tag1 (SPEC §6.2); needs the pairing's k1."""
    h = sha256(peer.prologue_hash + bytes((RecordType.HANDSHAKE_INIT,)) + e_remote)
    return bytes((RecordType.HANDSHAKE_INIT,)) + e_remote + _ccm_tag(peer.init_key, h)


def craft_resp(peer: PairedPeer, init: bytes, e_pump: bytes, dh: bytes) -> bytes:
    """HANDSHAKE_RESP for E_p whose tag2 verifies for the given es || ee || se (SPEC §6.3)."""
    h = sha256(sha256(peer.prologue_hash + init[: 1 + X25519_KEY_LEN]) + init[1 + X25519_KEY_LEN :])
    h = sha256(h + bytes((RecordType.HANDSHAKE_RESP,)) + e_pump)
    okm = hkdf_sha256(salt=peer.chaining_key, ikm=dh, info=b"", length=HASH_LEN + AEAD_KEY_LEN)
    return bytes((RecordType.HANDSHAKE_RESP,)) + e_pump + _ccm_tag(okm[HASH_LEN:], h)


def _dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def _negative(
    name: str,
    description: str,
    spec: str,
    receiver: str,
    session: str,
    input_: bytes,
    error: str,
    *,
    prefix: Sequence[tuple[bytes, bytes]] = (),
    follow_up: Sequence[tuple[bytes, bytes]] = (),
    random: Sequence[bytes] = (),
) -> Json:
    """One negative vector.

    ``prefix`` is fed (and must be accepted) before ``input``; ``follow_up`` must
    still be accepted after ``input`` was refused.  Both are (input, output)
    pairs whose meaning depends on ``receiver``: record -> plaintext for
    ``*_session``, HANDSHAKE_INIT -> HANDSHAKE_RESP for ``pump_responder``,
    HANDSHAKE_RESP -> session_hash for ``remote_initiator``, frame -> record
    for ``link``.  ``random`` is what the receiver's ``random_bytes`` returns.
    """
    return {
        "name": name,
        "description": description,
        "spec": spec,
        "receiver": receiver,
        "session": session,
        "random": [chunk.hex() for chunk in random],
        "prefix": [{"input": i.hex(), "output": o.hex()} for i, o in prefix],
        "input": input_.hex(),
        "error": error,
        "follow_up": [{"input": i.hex(), "output": o.hex()} for i, o in follow_up],
    }


def build() -> Json:
    """Compute every vector; asserts the library agrees with each crafted input."""
    # --- Static keys and pairing (SPEC §6.1) ---------------------------------
    remote_seed = SeededRandom("remote static")(X25519_KEY_LEN)
    pump_seed = SeededRandom("pump static")(X25519_KEY_LEN)
    remote_static = x25519_private(remote_seed)
    pump_static = x25519_private(pump_seed)
    remote_public = x25519_public_bytes(remote_static)
    pump_public = x25519_public_bytes(pump_static)
    remote_peer = paired_peer(remote_static, pump_public, local_is_remote=True)
    pump_peer = paired_peer(pump_static, remote_public, local_is_remote=False)
    for field in ("remote_static", "pump_static", "prologue_hash", "chaining_key", "init_key"):
        assert getattr(remote_peer, field) == getattr(pump_peer, field), field

    # --- Two handshakes, one long-lived responder (SPEC §6.2-§6.4) ----------
    pump_random = SeededRandom("pump ephemeral")
    responder = HandshakeResponder(local_static=pump_static, random_bytes=pump_random)
    handshakes: dict[str, Json] = {}
    keys: dict[str, tuple[SessionKeys, SessionKeys]] = {}
    messages: dict[str, tuple[bytes, bytes]] = {}
    ephemeral_seeds: dict[str, bytes] = {}
    for session in ("session1", "session2"):
        remote_random = SeededRandom(f"{session}/remote ephemeral")
        initiator = HandshakeInitiator(
            local_static=remote_static, peer=remote_peer, random_bytes=remote_random
        )
        init = initiator.start()
        drawn = len(pump_random.calls)
        accepted = responder.respond(init, [pump_peer])
        remote_keys = initiator.finish(accepted.reply)
        pump_keys = accepted.keys
        assert accepted.peer_index == 0
        assert remote_keys.send_key == pump_keys.receive_key
        assert remote_keys.send_iv == pump_keys.receive_iv
        assert remote_keys.receive_key == pump_keys.send_key
        assert remote_keys.receive_iv == pump_keys.send_iv
        assert remote_keys.session_hash == pump_keys.session_hash
        handshakes[session] = {
            "remote_random": [chunk.hex() for chunk in remote_random.calls],
            "pump_random": [chunk.hex() for chunk in pump_random.calls[drawn:]],
            "handshake_init": init.hex(),
            "handshake_resp": accepted.reply.hex(),
            "remote_ephemeral_public": init[1 : 1 + X25519_KEY_LEN].hex(),
            "pump_ephemeral_public": accepted.reply[1 : 1 + X25519_KEY_LEN].hex(),
            "peer_index": accepted.peer_index,
            "remote_keys": _keys_json(remote_keys),
            "pump_keys": _keys_json(pump_keys),
        }
        keys[session] = (remote_keys, pump_keys)
        messages[session] = (init, accepted.reply)
        (ephemeral_seeds[session],) = remote_random.calls
    assert handshakes["session1"]["remote_random"] != handshakes["session2"]["remote_random"]

    # --- DATA records (SPEC §7) ---------------------------------------------
    plaintext_random = SeededRandom("plaintext")
    plaintexts = {name: plaintext_random(size) for name, size in PLAINTEXT_SIZES.items()}
    records: list[Json] = []
    by_counter: dict[tuple[str, str], dict[int, bytes]] = {}

    def stream(
        session: str, direction: str, sender_keys: SessionKeys, stored: dict[int, tuple[str, bytes]]
    ) -> None:
        """Seal in counter order; ``stored`` maps counter -> (name, plaintext) to keep.

        Counters not in ``stored`` carry filler plaintexts and are not written.
        """
        sender = SecureSession(sender_keys, established_at=0.0)
        kept = by_counter.setdefault((session, direction), {})
        for counter in range(max(stored) + 1):
            assert sender.records_sent == counter
            if counter not in stored:
                sender.seal(f"counter {counter}".encode())
                continue
            name, plaintext = stored[counter]
            record = sender.seal(plaintext)
            kept[counter] = record
            records.append(
                {
                    "name": f"{session}/{direction}/{name}",
                    "session": session,
                    "direction": direction,
                    "counter": counter,
                    "plaintext": plaintext.hex(),
                    "record": record.hex(),
                }
            )

    named = {index: (name, plaintexts[name]) for index, name in enumerate(PLAINTEXT_SIZES)}
    window = {
        counter: (f"counter{counter}", f"counter {counter}".encode())
        for counter in (
            WINDOW_TOP - REPLAY_WINDOW,
            WINDOW_TOP - REPLAY_WINDOW + 1,
            WINDOW_TOP,
            WINDOW_TOP + 1,
        )
    }
    stream("session1", "remote_to_pump", keys["session1"][0], named | window)
    stream("session1", "pump_to_remote", keys["session1"][1], named)
    stream("session2", "remote_to_pump", keys["session2"][0], {0: ("first", b"session 2")})
    stream("session2", "pump_to_remote", keys["session2"][1], {0: ("first", b"session 2")})
    r2p = by_counter["session1", "remote_to_pump"]
    p2r = by_counter["session1", "pump_to_remote"]
    pt = {record["record"]: bytes.fromhex(record["plaintext"]) for record in records}

    def plain(record: bytes) -> bytes:
        return pt[record.hex()]

    # Records a sender never produces, crafted per SPEC §7 (checked against a genuine one).
    k_r2p, iv_r2p = keys["session1"][0].send_key, keys["session1"][0].send_iv
    assert craft_record(k_r2p, iv_r2p, 2, plaintexts["block"]) == r2p[2]
    at_limit = craft_record(k_r2p, iv_r2p, COUNTER_LIMIT, b"counter limit")
    below_limit = craft_record(k_r2p, iv_r2p, COUNTER_LIMIT - 1, b"counter limit - 1")
    pt[below_limit.hex()] = b"counter limit - 1"
    crafted_records = [
        {
            "name": f"session1/remote_to_pump/{name}",
            "session": "session1",
            "direction": "remote_to_pump",
            "counter": counter,
            "plaintext": plaintext.hex(),
            "record": record.hex(),
            "accepted": counter < COUNTER_LIMIT,
        }
        for name, counter, plaintext, record in (
            ("counter_limit_minus_1", COUNTER_LIMIT - 1, b"counter limit - 1", below_limit),
            ("counter_limit", COUNTER_LIMIT, b"counter limit", at_limit),
        )
    ]

    # --- Link frames (SPEC §3) ----------------------------------------------
    no_zero = bytes((RecordType.DATA,)) + bytes(index % 255 + 1 for index in range(255))
    frame_records = {
        "data_record_with_zero_bytes": r2p[0],
        "data_record_max_len": r2p[3],
        "handshake_init": messages["session1"][0],
        "no_zero_bytes_max_len": no_zero,
    }
    assert 0 in r2p[0]
    assert len(r2p[3]) == MAX_RECORD_LEN
    assert 0 not in no_zero
    frames = []
    for name, record in frame_records.items():
        frame = encode_frame(record)
        assert frame.index(0) == len(frame) - 1
        frames.append({"name": name, "record": record.hex(), "frame": frame.hex()})
    good_frame = encode_frame(r2p[0])

    # A frame whose CRC alone is wrong: COBS re-applied so only the CRC check fails.
    bad_crc = (crc16(r2p[0]) ^ 1).to_bytes(CRC_LEN, "big")
    crc_error = cobs_encode(r2p[0] + bad_crc) + b"\x00"
    # A COBS-valid frame one byte over MAX_ENCODED_FRAME_LEN: 257 non-zero record
    # bytes whose CRC has no zero byte either, so COBS adds exactly two code bytes.
    filler = 1
    while True:
        oversized_record = bytes((RecordType.DATA,)) + bytes([filler]) * MAX_RECORD_LEN
        if 0 not in crc16(oversized_record).to_bytes(CRC_LEN, "big"):
            break
        filler += 1
    oversized_raw = oversized_record + crc16(oversized_record).to_bytes(CRC_LEN, "big")
    oversize = cobs_encode(oversized_raw) + b"\x00"
    assert len(oversize) - 1 == MAX_ENCODED_FRAME_LEN + 1

    # --- Handshake messages the responder / initiator must refuse (SPEC §6.5) -
    init1, resp1 = messages["session1"]
    init2, resp2 = messages["session2"]
    seed1 = ephemeral_seeds["session1"]
    e_pump1 = resp1[1 : 1 + X25519_KEY_LEN]
    es = _dh(seed1, pump_public)
    genuine_dh = es + _dh(seed1, e_pump1) + _dh(remote_seed, e_pump1)
    assert craft_init(remote_peer, init1[1 : 1 + X25519_KEY_LEN]) == init1
    assert craft_resp(remote_peer, init1, e_pump1, genuine_dh) == resp1
    low_order_init = craft_init(remote_peer, LOW_ORDER_POINT)
    # With a low-order E_p, ee and se are all zeros: this tag2 verifies unless E_p is refused.
    low_order_resp = craft_resp(remote_peer, init1, LOW_ORDER_POINT, es + bytes(2 * HASH_LEN))
    pump_random_1 = [bytes.fromhex(c) for c in handshakes["session1"]["pump_random"]]
    pump_random_2 = [bytes.fromhex(c) for c in handshakes["session2"]["pump_random"]]
    session_hash1 = keys["session1"][0].session_hash

    pump, remote, link = "pump_session", "remote_session", "link"
    responder_, initiator_ = "pump_responder", "remote_initiator"
    negative = [
        _negative(
            "record_replay",
            "an accepted record delivered again",
            "§7.3",
            pump,
            "session1",
            r2p[0],
            "ReplayRefused",
            prefix=[(r2p[0], plain(r2p[0]))],
            follow_up=[(r2p[1], plain(r2p[1]))],
        ),
        _negative(
            "record_header_type_bitflip",
            "record type 0x03 -> 0x02",
            "§4, §7.3",
            pump,
            "session1",
            _flip(r2p[2], 0),
            "MalformedRecord",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_header_counter_bitflip",
            "top bit of the counter flipped (counter 2 -> 0x80000002): the nonce changes",
            "§7.2",
            pump,
            "session1",
            _flip(r2p[2], 1, 7),
            "AuthenticationFailed",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_ciphertext_bitflip",
            "first ciphertext bit flipped",
            "§7",
            pump,
            "session1",
            _flip(r2p[2], 5),
            "AuthenticationFailed",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_tag_bitflip",
            "last tag bit flipped",
            "§7",
            pump,
            "session1",
            _flip(r2p[2], -1, 7),
            "AuthenticationFailed",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_truncated_last_byte",
            "last byte dropped",
            "§7",
            pump,
            "session1",
            r2p[2][:-1],
            "AuthenticationFailed",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_truncated_tag",
            "whole tag dropped (still >= 13 bytes, so the AEAD call rejects it)",
            "§7",
            pump,
            "session1",
            r2p[2][:-TAG_LEN],
            "AuthenticationFailed",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_truncated_below_minimum",
            "empty-plaintext record minus its last byte: shorter than header + tag",
            "§7",
            pump,
            "session1",
            r2p[0][:-1],
            "MalformedRecord",
            follow_up=[(r2p[0], plain(r2p[0])), (r2p[1], plain(r2p[1]))],
        ),
        _negative(
            "record_extended",
            "one zero byte appended",
            "§7",
            pump,
            "session1",
            r2p[2] + b"\x00",
            "AuthenticationFailed",
            follow_up=[(r2p[2], plain(r2p[2])), (r2p[3], plain(r2p[3]))],
        ),
        _negative(
            "record_reflected_to_pump",
            "a pump -> remote record given back to the pump",
            "§6.4, §7",
            pump,
            "session1",
            p2r[0],
            "AuthenticationFailed",
            follow_up=[(r2p[0], plain(r2p[0]))],
        ),
        _negative(
            "record_reflected_to_remote",
            "a remote -> pump record given back to the remote",
            "§6.4, §7",
            remote,
            "session1",
            r2p[0],
            "AuthenticationFailed",
            follow_up=[(p2r[0], plain(p2r[0]))],
        ),
        _negative(
            "record_from_old_session",
            "session 1's first remote -> pump record given to session 2's pump",
            "§6.4, §7",
            pump,
            "session2",
            r2p[0],
            "AuthenticationFailed",
            follow_up=[
                (
                    by_counter["session2", "remote_to_pump"][0],
                    plain(by_counter["session2", "remote_to_pump"][0]),
                )
            ],
        ),
        _negative(
            "record_older_than_window",
            f"counter {WINDOW_TOP} accepted, then counter {WINDOW_TOP - REPLAY_WINDOW}",
            "§7.3",
            pump,
            "session1",
            r2p[WINDOW_TOP - REPLAY_WINDOW],
            "ReplayRefused",
            prefix=[(r2p[WINDOW_TOP], plain(r2p[WINDOW_TOP]))],
            follow_up=[
                (r2p[WINDOW_TOP - REPLAY_WINDOW + 1], plain(r2p[WINDOW_TOP - REPLAY_WINDOW + 1])),
                (r2p[WINDOW_TOP + 1], plain(r2p[WINDOW_TOP + 1])),
            ],
        ),
        _negative(
            "record_counter_at_limit",
            "counter COUNTER_LIMIT (0xFFFFFFFF), crafted with AESCCM per §7; "
            "the follow-up at COUNTER_LIMIT - 1 is the highest a receiver accepts",
            "§7.3, §11",
            pump,
            "session1",
            at_limit,
            "ReplayRefused",
            follow_up=[(below_limit, plain(below_limit))],
        ),
        _negative(
            "handshake_init_bad_tag",
            "last bit of tag1 flipped",
            "§6.2, §6.5",
            responder_,
            "session1",
            _flip(init1, -1, 7),
            "AuthenticationFailed",
            random=pump_random_1,
            follow_up=[(init1, resp1)],
        ),
        _negative(
            "handshake_init_wrong_length",
            "HANDSHAKE_INIT minus its last byte",
            "§6.2, §6.5",
            responder_,
            "session1",
            init1[:-1],
            "MalformedRecord",
            random=pump_random_1,
            follow_up=[(init1, resp1)],
        ),
        _negative(
            "handshake_init_replay",
            "an accepted HANDSHAKE_INIT delivered again",
            "§6.5",
            responder_,
            "session1",
            init1,
            "HandshakeRefused",
            random=pump_random_1 + pump_random_2,
            prefix=[(init1, resp1)],
            follow_up=[(init2, resp2)],
        ),
        _negative(
            "handshake_init_low_order_ephemeral",
            "E_r of order 8 with a tag1 that verifies (made with the pairing's k1)",
            "§5, §6.5",
            responder_,
            "session1",
            low_order_init,
            "AuthenticationFailed",
            random=pump_random_1,
            follow_up=[(init1, resp1)],
        ),
        _negative(
            "handshake_resp_bad_tag",
            "last bit of tag2 flipped",
            "§6.3",
            initiator_,
            "session1",
            _flip(resp1, -1, 7),
            "AuthenticationFailed",
            random=[seed1],
            follow_up=[(resp1, session_hash1)],
        ),
        _negative(
            "handshake_resp_from_other_handshake",
            "session 2's HANDSHAKE_RESP given to session 1's initiator",
            "§6.3",
            initiator_,
            "session1",
            resp2,
            "AuthenticationFailed",
            random=[seed1],
            follow_up=[(resp1, session_hash1)],
        ),
        _negative(
            "handshake_resp_low_order_ephemeral",
            "E_p of order 8 with the tag2 that verifies when ee = se = 0",
            "§5, §6.3",
            initiator_,
            "session1",
            low_order_resp,
            "AuthenticationFailed",
            random=[seed1],
            follow_up=[(resp1, session_hash1)],
        ),
        _negative(
            "frame_crc_error",
            "valid COBS, CRC with its low bit flipped",
            "§3",
            link,
            "session1",
            crc_error,
            "FramingError",
            follow_up=[(good_frame, r2p[0])],
        ),
        _negative(
            "frame_cobs_error",
            "COBS code byte 0x05 points past the end of the frame",
            "§3",
            link,
            "session1",
            bytes.fromhex("05030100"),
            "FramingError",
            follow_up=[(good_frame, r2p[0])],
        ),
        _negative(
            "frame_oversize",
            "valid COBS of a 257-byte record: MAX_ENCODED_FRAME_LEN + 1 bytes",
            "§3, §11",
            link,
            "session1",
            oversize,
            "FramingError",
            follow_up=[(good_frame, r2p[0])],
        ),
        _negative(
            "frame_shorter_than_crc",
            "a frame holding two bytes: a CRC and no record",
            "§3",
            link,
            "session1",
            cobs_encode(bytes.fromhex("1234")) + b"\x00",
            "FramingError",
            follow_up=[(good_frame, r2p[0])],
        ),
    ]
    context = {
        "remote_static": remote_static,
        "pump_static": pump_static,
        "keys": keys,
        "messages": messages,
        "ephemeral_seeds": ephemeral_seeds,
        "remote_peer": remote_peer,
        "pump_peer": pump_peer,
    }
    for vector in negative:
        _self_check(vector, context)

    return {
        "provenance": {
            "generator": GENERATOR,
            "regenerate": f"python {GENERATOR}",
            "spec": "docs/SPEC.md §3 (link framing), §6 (handshake), §7 (DATA records)",
            "randomness": (
                "every private key, ephemeral seed and plaintext is "
                f"SHA-256({SEED.decode()!r} || '/' || label || '/' || uint32_be(i)), "
                "i = 0, 1, ..., consumed in order per label"
            ),
            "checked_by": "tests/test_vectors.py",
        },
        "parameters": {
            "suite": SUITE_NAME.decode(),
            "counter_limit": COUNTER_LIMIT,
            "replay_window": REPLAY_WINDOW,
            "max_plaintext_len": MAX_PLAINTEXT_LEN,
            "max_record_len": MAX_RECORD_LEN,
            "max_encoded_frame_len": MAX_ENCODED_FRAME_LEN,
        },
        "static_keys": {
            "remote": {"private": remote_seed.hex(), "public": remote_public.hex()},
            "pump": {"private": pump_seed.hex(), "public": pump_public.hex()},
        },
        "paired_peer": {
            "remote_static": remote_peer.remote_static.hex(),
            "pump_static": remote_peer.pump_static.hex(),
            "prologue_hash": remote_peer.prologue_hash.hex(),
            "chaining_key": remote_peer.chaining_key.hex(),
            "init_key": remote_peer.init_key.hex(),
        },
        "handshakes": handshakes,
        "records": records,
        "crafted_records": crafted_records,
        "frames": frames,
        "negative": negative,
    }


def _receiver(vector: Json, context: dict[str, Any]) -> Callable[[bytes], bytes]:
    """A fresh receiver for one negative vector: input bytes -> output bytes."""
    session = vector["session"]
    receiver = vector["receiver"]
    random = replay_random([bytes.fromhex(chunk) for chunk in vector["random"]])
    if receiver in {"pump_session", "remote_session"}:
        remote_keys, pump_keys = context["keys"][session]
        state = SecureSession(
            pump_keys if receiver == "pump_session" else remote_keys, established_at=0.0
        )
        return state.open
    if receiver == "pump_responder":
        responder = HandshakeResponder(local_static=context["pump_static"], random_bytes=random)
        peers = [context["pump_peer"]]
        return lambda record: responder.respond(record, peers).reply
    if receiver == "remote_initiator":
        initiator = HandshakeInitiator(
            local_static=context["remote_static"], peer=context["remote_peer"], random_bytes=random
        )
        assert initiator.start() == context["messages"][session][0]
        return lambda record: initiator.finish(record).session_hash
    assert receiver == "link"
    decoder = FrameDecoder()

    def next_record(frame: bytes) -> bytes:
        decoder.receive_data(frame)
        record = decoder.next_record()
        assert record is not None
        return record

    return next_record


def _self_check(vector: Json, context: dict[str, Any]) -> None:
    """Run one negative vector through the library before writing it."""
    step = _receiver(vector, context)
    for item in vector["prefix"]:
        assert step(bytes.fromhex(item["input"])) == bytes.fromhex(item["output"])
    refused: ProtocolError | None = None
    try:
        step(bytes.fromhex(vector["input"]))
    except ProtocolError as exc:
        refused = exc
    if type(refused).__name__ != vector["error"]:
        raise AssertionError(f"{vector['name']}: expected {vector['error']}, got {refused!r}")
    for item in vector["follow_up"]:
        assert step(bytes.fromhex(item["input"])) == bytes.fromhex(item["output"]), vector["name"]


def render() -> str:
    """The JSON text, byte for byte as stored."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the stored JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale; run python {GENERATOR}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
