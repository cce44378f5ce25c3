"""Golden vectors for the handshake (docs/SPEC.md §6), DATA records (§7) and link
framing (§3), stored in ``tests/vectors/session_vectors.json``.

The file is written by ``tests/vectors/generate.py`` from fixed keys and fixed
"randomness".  It is checked in both directions (STYLE.md §5):

(a) the library, given the stored inputs (static keys, ephemeral seeds,
    plaintexts), produces exactly the stored handshake messages, keys,
    records and frames, and the generator reproduces the file byte for byte;
(b) each receiver accepts the positive vectors with the stored output and
    refuses every negative vector with exactly the stored exception class;
(c) a refusal changes no state: ``highest_received`` is unchanged, and the
    genuine record with the refused one's counter, the next counter, the
    genuine handshake message or the next frame are all still accepted.

An independent implementation of SPEC §6's key schedule and §7's record
format (``cryptography`` and ``hashlib`` only, no ``protocol`` code) checks
the vectors too, so they are not merely self-consistent.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from vectors_util import VECTORS_DIR, load_vectors, vector_path

from pumpguard.protocol import (
    FrameDecoder,
    HandshakeInitiator,
    HandshakeResponder,
    PairedPeer,
    ProtocolError,
    SecureSession,
    SessionKeys,
    decode_frame,
    encode_frame,
    errors,
    paired_peer,
    wire,
    x25519_private,
    x25519_public_bytes,
)
from pumpguard.protocol.framing import cobs_encode, crc16

Json = dict[str, Any]
Step = Callable[[bytes], bytes]

V = load_vectors("session_vectors")


def _b(text: str) -> bytes:
    return bytes.fromhex(text)


def _keys(stored: Json) -> SessionKeys:
    return SessionKeys(
        send_key=_b(stored["send_key"]),
        send_iv=_b(stored["send_iv"]),
        receive_key=_b(stored["receive_key"]),
        receive_iv=_b(stored["receive_iv"]),
        session_hash=_b(stored["session_hash"]),
    )


def _replay_random(chunks: Sequence[str]) -> Callable[[int], bytes]:
    """``random_bytes`` returning the stored chunks in order, checking each size."""
    pending = [_b(chunk) for chunk in chunks]

    def random_bytes(n: int) -> bytes:
        assert pending, "the library drew more randomness than the vector stores"
        chunk = pending.pop(0)
        assert len(chunk) == n
        return chunk

    return random_bytes


def _statics() -> tuple[X25519PrivateKey, X25519PrivateKey]:
    keys = V["static_keys"]
    remote = x25519_private(_b(keys["remote"]["private"]))
    return remote, x25519_private(_b(keys["pump"]["private"]))


def _peers() -> tuple[PairedPeer, PairedPeer]:
    remote, pump = _statics()
    return (
        paired_peer(remote, x25519_public_bytes(pump), local_is_remote=True),
        paired_peer(pump, x25519_public_bytes(remote), local_is_remote=False),
    )


def _session_keys(session: str, side: str) -> SessionKeys:
    return _keys(V["handshakes"][session][f"{side}_keys"])


def _receiver_keys(record: Json) -> SessionKeys:
    side = "pump" if record["direction"] == "remote_to_pump" else "remote"
    return _session_keys(record["session"], side)


def _streams(records: list[Json]) -> dict[tuple[str, str], list[Json]]:
    streams: dict[tuple[str, str], list[Json]] = {}
    for record in records:
        streams.setdefault((record["session"], record["direction"]), []).append(record)
    return streams


# --- An independent implementation of SPEC §6 and §7 --------------------------
# Written from the SPEC's formulas with cryptography / hashlib alone; it shares
# no code with protocol/, so the vectors are checked against a second reading.

_REF_SUITE = b"pumpguard/1 KK-X25519 AES-CCM-16-64-128 SHA-256"
_REF_SPLIT = b"pumpguard/1 split"


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _ref_hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm, counter = okm + block, counter + 1
    return okm[:length]


def _ref_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _ref_dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def _ref_tag(key: bytes, transcript_hash: bytes) -> bytes:
    return AESCCM(key, tag_length=8).encrypt(bytes(13), b"", transcript_hash)


def _ref_handshake(s_r: bytes, s_p: bytes, e_r: bytes, e_p: bytes) -> dict[str, bytes]:
    """SPEC §6: Noise-KK-like schedule, ss first, then es || ee || se, then split."""
    big_s_r, big_s_p, big_e_r, big_e_p = map(_ref_public, (s_r, s_p, e_r, e_p))
    ck = h = _sha(_REF_SUITE)
    h = _sha(_sha(h + big_s_r) + big_s_p)
    prologue = h
    okm = _ref_hkdf(ck, _ref_dh(s_r, big_s_p), b"", 48)
    ck, k1 = okm[:32], okm[32:]
    ck1 = ck
    h = _sha(h + b"\x01" + big_e_r)
    tag1 = _ref_tag(k1, h)
    h = _sha(_sha(h + tag1) + b"\x02" + big_e_p)
    dh = _ref_dh(e_r, big_s_p) + _ref_dh(e_r, big_e_p) + _ref_dh(s_r, big_e_p)
    okm = _ref_hkdf(ck, dh, b"", 48)
    ck, k2 = okm[:32], okm[32:]
    tag2 = _ref_tag(k2, h)
    h = _sha(h + tag2)
    split = _ref_hkdf(ck, h, _REF_SPLIT, 48)
    return {
        "prologue_hash": prologue,
        "chaining_key": ck1,
        "init_key": k1,
        "handshake_init": b"\x01" + big_e_r + tag1,
        "handshake_resp": b"\x02" + big_e_p + tag2,
        "k_r2p": split[:16],
        "iv_r2p": split[16:24],
        "k_p2r": split[24:40],
        "iv_p2r": split[40:48],
        "session_hash": h,
    }


def _ref_seal(key: bytes, iv: bytes, counter: int, plaintext: bytes) -> bytes:
    """SPEC §7: 0x03 || counter_be32 || AES-CCM-16-64-128(nonce = header || iv)."""
    header = struct.pack(">BI", 0x03, counter)
    return header + AESCCM(key, tag_length=8).encrypt(header + iv, plaintext, None)


def _ref_open(key: bytes, iv: bytes, record: bytes) -> tuple[int, bytes]:
    """Inverse of :func:`_ref_seal` without a replay window: (counter, plaintext)."""
    if len(record) < 5 + 8 or record[0] != 0x03:
        raise ValueError("not a DATA record")
    plaintext = AESCCM(key, tag_length=8).decrypt(record[:5] + iv, record[5:], None)
    return struct.unpack(">I", record[1:5])[0], plaintext


def _ref_crc16(data: bytes) -> int:
    """CRC-16/GENIBUS, bit by bit (SPEC §3)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc ^ 0xFFFF


def _ref_frame(record: bytes) -> bytes:
    """COBS(record || CRC16_be) || 0x00 (SPEC §3), one byte at a time."""
    out, block = bytearray(), bytearray()
    for byte in record + _ref_crc16(record).to_bytes(2, "big"):
        if byte:
            block.append(byte)
            if len(block) == 254:
                out += b"\xff" + block
                block.clear()
        else:
            out += bytes([len(block) + 1]) + block
            block.clear()
    return bytes(out + bytes([len(block) + 1]) + block + b"\x00")


# --- Provenance and regeneration (a) -------------------------------------------


def test_provenance() -> None:
    provenance = V["provenance"]
    assert provenance["generator"] == "tests/vectors/generate.py"
    assert (VECTORS_DIR / "generate.py").is_file()
    for section in ("§3", "§6", "§7"):
        assert section in provenance["spec"]
    assert V["parameters"] == {
        "suite": wire.SUITE_NAME.decode(),
        "counter_limit": wire.COUNTER_LIMIT,
        "replay_window": wire.REPLAY_WINDOW,
        "max_plaintext_len": wire.MAX_PLAINTEXT_LEN,
        "max_record_len": wire.MAX_RECORD_LEN,
        "max_encoded_frame_len": wire.MAX_ENCODED_FRAME_LEN,
    }
    assert wire.SUITE_NAME == _REF_SUITE
    assert wire.LABEL_SPLIT == _REF_SPLIT


def test_generator_reproduces_file_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location(
        "pumpguard_vector_generator", VECTORS_DIR / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    stored = vector_path("session_vectors").read_text(encoding="utf-8")
    assert generator.render() == stored, "run python tests/vectors/generate.py"


def test_static_keys_and_paired_peer() -> None:
    """SPEC §6.1: both sides precompute the same pairing constants."""
    remote, pump = _statics()
    assert x25519_public_bytes(remote) == _b(V["static_keys"]["remote"]["public"])
    assert x25519_public_bytes(pump) == _b(V["static_keys"]["pump"]["public"])
    stored = V["paired_peer"]
    for peer in _peers():
        assert peer.remote_static == _b(stored["remote_static"])
        assert peer.pump_static == _b(stored["pump_static"])
        assert peer.prologue_hash == _b(stored["prologue_hash"])
        assert peer.chaining_key == _b(stored["chaining_key"])
        assert peer.init_key == _b(stored["init_key"])


def _assert_keys(keys: SessionKeys, stored: Json) -> None:
    assert keys.send_key == _b(stored["send_key"])
    assert keys.send_iv == _b(stored["send_iv"])
    assert keys.receive_key == _b(stored["receive_key"])
    assert keys.receive_iv == _b(stored["receive_iv"])
    assert keys.session_hash == _b(stored["session_hash"])


@pytest.mark.parametrize("session", sorted(V["handshakes"]))
def test_handshake_regenerates(session: str) -> None:
    """SPEC §6.2-§6.4: stored seeds in, stored messages and keys out, on both sides."""
    stored = V["handshakes"][session]
    remote, pump = _statics()
    remote_peer, pump_peer = _peers()
    initiator = HandshakeInitiator(
        local_static=remote, peer=remote_peer, random_bytes=_replay_random(stored["remote_random"])
    )
    responder = HandshakeResponder(
        local_static=pump, random_bytes=_replay_random(stored["pump_random"])
    )
    init = initiator.start()
    assert init == _b(stored["handshake_init"])
    assert len(init) == wire.HANDSHAKE_INIT_LEN
    accepted = responder.respond(init, [pump_peer])
    assert accepted.reply == _b(stored["handshake_resp"])
    assert len(accepted.reply) == wire.HANDSHAKE_RESP_LEN
    assert accepted.peer_index == stored["peer_index"]
    _assert_keys(accepted.keys, stored["pump_keys"])
    _assert_keys(initiator.finish(accepted.reply), stored["remote_keys"])
    assert init[1:33] == _b(stored["remote_ephemeral_public"])
    assert accepted.reply[1:33] == _b(stored["pump_ephemeral_public"])


def test_handshakes_differ() -> None:
    one, two = V["handshakes"]["session1"], V["handshakes"]["session2"]
    for field in ("remote_random", "pump_random", "handshake_init", "handshake_resp"):
        assert one[field] != two[field]
    assert one["remote_keys"]["session_hash"] != two["remote_keys"]["session_hash"]


@pytest.mark.parametrize("session", sorted(V["handshakes"]))
def test_handshake_independent_key_schedule(session: str) -> None:
    """The independent §6 schedule reproduces the stored messages and keys."""
    stored = V["handshakes"][session]
    (e_r,) = stored["remote_random"]
    (e_p,) = stored["pump_random"]
    ref = _ref_handshake(
        _b(V["static_keys"]["remote"]["private"]),
        _b(V["static_keys"]["pump"]["private"]),
        _b(e_r),
        _b(e_p),
    )
    for field in ("prologue_hash", "chaining_key", "init_key"):
        assert ref[field] == _b(V["paired_peer"][field]), field
    assert ref["handshake_init"] == _b(stored["handshake_init"])
    assert ref["handshake_resp"] == _b(stored["handshake_resp"])
    remote, pump = stored["remote_keys"], stored["pump_keys"]
    assert ref["k_r2p"] == _b(remote["send_key"]) == _b(pump["receive_key"])
    assert ref["iv_r2p"] == _b(remote["send_iv"]) == _b(pump["receive_iv"])
    assert ref["k_p2r"] == _b(pump["send_key"]) == _b(remote["receive_key"])
    assert ref["iv_p2r"] == _b(pump["send_iv"]) == _b(remote["receive_iv"])
    assert ref["session_hash"] == _b(remote["session_hash"]) == _b(pump["session_hash"])


def test_records_cover_the_required_plaintexts() -> None:
    streams = _streams(V["records"])
    assert set(streams) == {
        ("session1", "remote_to_pump"),
        ("session1", "pump_to_remote"),
        ("session2", "remote_to_pump"),
        ("session2", "pump_to_remote"),
    }
    for direction in ("remote_to_pump", "pump_to_remote"):
        sizes = [len(_b(r["plaintext"])) for r in streams["session1", direction]]
        assert sizes[:4] == [0, 1, 16, wire.MAX_PLAINTEXT_LEN]
        assert len(_b(streams["session1", direction][3]["record"])) == wire.MAX_RECORD_LEN


@pytest.mark.parametrize(("session", "direction"), sorted(_streams(V["records"])))
def test_records_regenerate(session: str, direction: str) -> None:
    """SPEC §7: sealing the stored plaintexts in counter order yields the stored records."""
    sender_side = "remote" if direction == "remote_to_pump" else "pump"
    sender = SecureSession(_session_keys(session, sender_side), established_at=0.0)
    for record in _streams(V["records"])[session, direction]:
        while sender.records_sent < record["counter"]:
            sender.seal(b"")  # counters the file does not store
        assert sender.seal(_b(record["plaintext"])) == _b(record["record"]), record["name"]


@pytest.mark.parametrize(("session", "direction"), sorted(_streams(V["records"])))
def test_records_open_in_order(session: str, direction: str) -> None:
    """(b) The receiver accepts every stored record, in counter order."""
    stream = _streams(V["records"])[session, direction]
    receiver = SecureSession(_receiver_keys(stream[0]), established_at=0.0)
    assert receiver.highest_received == -1
    for record in stream:
        assert receiver.open(_b(record["record"])) == _b(record["plaintext"]), record["name"]
        assert receiver.highest_received == record["counter"]


@pytest.mark.parametrize("record", V["records"] + V["crafted_records"], ids=lambda r: r["name"])
def test_records_independent_verifier(record: Json) -> None:
    """The independent §7 implementation seals and opens the stored records identically."""
    sender_keys = _session_keys(
        record["session"], "remote" if record["direction"] == "remote_to_pump" else "pump"
    )
    receiver_keys = _receiver_keys(record)
    sealed = _ref_seal(
        sender_keys.send_key, sender_keys.send_iv, record["counter"], _b(record["plaintext"])
    )
    assert sealed == _b(record["record"])
    counter, plaintext = _ref_open(receiver_keys.receive_key, receiver_keys.receive_iv, sealed)
    assert (counter, plaintext) == (record["counter"], _b(record["plaintext"]))
    # The direction is bound by the key: the sender's own receive key does not open it.
    with pytest.raises(InvalidTag):
        _ref_open(sender_keys.receive_key, sender_keys.receive_iv, sealed)


def test_crafted_records_at_the_counter_limit() -> None:
    """SPEC §7.3: COUNTER_LIMIT - 1 is the last counter accepted, COUNTER_LIMIT is refused."""
    crafted = {record["counter"]: record for record in V["crafted_records"]}
    assert set(crafted) == {wire.COUNTER_LIMIT - 1, wire.COUNTER_LIMIT}
    below = crafted[wire.COUNTER_LIMIT - 1]
    at = crafted[wire.COUNTER_LIMIT]
    assert below["accepted"] is True
    assert at["accepted"] is False
    receiver = SecureSession(_receiver_keys(at), established_at=0.0)
    with pytest.raises(errors.ReplayRefused):
        receiver.open(_b(at["record"]))
    assert receiver.highest_received == -1
    assert receiver.open(_b(below["record"])) == _b(below["plaintext"])
    assert receiver.highest_received == wire.COUNTER_LIMIT - 1


# --- Link frames (SPEC §3) ------------------------------------------------------


def test_frames_cover_the_required_cases() -> None:
    records = [_b(frame["record"]) for frame in V["frames"]]
    assert any(0 in record for record in records)
    assert any(0 not in record and len(record) == wire.MAX_RECORD_LEN for record in records)
    assert any(len(record) == wire.MAX_RECORD_LEN and 0 in record for record in records)


@pytest.mark.parametrize("frame", V["frames"], ids=lambda f: f["name"])
def test_frame_both_directions(frame: Json) -> None:
    record, encoded = _b(frame["record"]), _b(frame["frame"])
    assert encode_frame(record) == encoded
    assert _ref_frame(record) == encoded
    assert encoded.index(0) == len(encoded) - 1
    assert decode_frame(encoded[:-1]) == record
    # Whole, byte by byte, and with trailing data (STYLE.md §6).
    decoder = FrameDecoder()
    for index in range(len(encoded)):
        assert decoder.next_record() is None
        decoder.receive_data(encoded[index : index + 1])
    assert decoder.next_record() == record
    decoder.receive_data(encoded + encoded[:3])
    assert decoder.next_record() == record
    assert decoder.next_record() is None


# --- Negative vectors (b) and (c) ----------------------------------------------

NEGATIVE: list[Json] = V["negative"]


def _receiver(vector: Json) -> tuple[Step, SecureSession | None]:
    """A fresh receiver for one vector, and its session when it has one."""
    session = vector["session"]
    receiver = vector["receiver"]
    random = _replay_random(vector["random"])
    remote, pump = _statics()
    remote_peer, pump_peer = _peers()
    if receiver in {"pump_session", "remote_session"}:
        side = "pump" if receiver == "pump_session" else "remote"
        state = SecureSession(_session_keys(session, side), established_at=0.0)
        return state.open, state
    if receiver == "pump_responder":
        responder = HandshakeResponder(local_static=pump, random_bytes=random)
        return (lambda record: responder.respond(record, [pump_peer]).reply), None
    if receiver == "remote_initiator":
        initiator = HandshakeInitiator(local_static=remote, peer=remote_peer, random_bytes=random)
        assert initiator.start() == _b(V["handshakes"][session]["handshake_init"])
        return (lambda record: initiator.finish(record).session_hash), None
    assert receiver == "link"
    decoder = FrameDecoder()

    def next_record(frame: bytes) -> bytes:
        decoder.receive_data(frame)
        record = decoder.next_record()
        assert record is not None
        return record

    return next_record, None


def _error_class(name: str) -> type[ProtocolError]:
    cls = getattr(errors, name)
    assert isinstance(cls, type)
    assert issubclass(cls, errors.RemoteProtocolError)
    return cls


@pytest.mark.parametrize("vector", NEGATIVE, ids=lambda v: v["name"])
def test_negative_vector_refused_without_state_change(vector: Json) -> None:
    step, session = _receiver(vector)
    for item in vector["prefix"]:
        assert step(_b(item["input"])) == _b(item["output"])
    before = session.highest_received if session is not None else None
    expected = _error_class(vector["error"])
    with pytest.raises(ProtocolError) as refused:
        step(_b(vector["input"]))
    assert type(refused.value) is expected, (vector["name"], refused.value)
    if session is not None:
        assert session.highest_received == before, "a refused record moved the window"
    assert vector["follow_up"], "each negative vector checks the receiver still works"
    for item in vector["follow_up"]:
        assert step(_b(item["input"])) == _b(item["output"]), vector["name"]


@pytest.mark.parametrize(
    "vector",
    [v for v in NEGATIVE if v["receiver"].endswith("_session")],
    ids=lambda v: v["name"],
)
def test_negative_records_independent_verifier(vector: Json) -> None:
    """Forgeries fail the independent AEAD check; replays are authentic and fail only
    the window, so a receiver without one would accept them (SPEC §7.3)."""
    side = "pump" if vector["receiver"] == "pump_session" else "remote"
    keys = _session_keys(vector["session"], side)
    record = _b(vector["input"])
    if vector["error"] == "ReplayRefused":
        counter, _ = _ref_open(keys.receive_key, keys.receive_iv, record)
        # Refused by state alone: past the limit, or judged against what the prefix delivered.
        assert counter >= wire.COUNTER_LIMIT or vector["prefix"]
    else:
        with pytest.raises((InvalidTag, ValueError)):
            _ref_open(keys.receive_key, keys.receive_iv, record)


@pytest.mark.parametrize(
    "vector", [v for v in NEGATIVE if v["receiver"] == "link"], ids=lambda v: v["name"]
)
def test_negative_frames_refused_by_decode_frame(vector: Json) -> None:
    frame = _b(vector["input"])
    assert frame.endswith(b"\x00")
    with pytest.raises(errors.FramingError):
        decode_frame(frame[:-1])


def test_negative_vectors_cover_the_brief() -> None:
    names = {vector["name"] for vector in NEGATIVE}
    assert len(names) == len(NEGATIVE) >= 25
    required = {
        "record_replay",
        "record_header_type_bitflip",
        "record_header_counter_bitflip",
        "record_ciphertext_bitflip",
        "record_tag_bitflip",
        "record_truncated_last_byte",
        "record_truncated_tag",
        "record_extended",
        "record_reflected_to_pump",
        "record_from_old_session",
        "record_older_than_window",
        "record_counter_at_limit",
        "handshake_init_bad_tag",
        "handshake_init_replay",
        "handshake_resp_low_order_ephemeral",
        "frame_crc_error",
        "frame_cobs_error",
        "frame_oversize",
    }
    assert required <= names
    errors_seen = {vector["error"] for vector in NEGATIVE}
    assert errors_seen == {
        "AuthenticationFailed",
        "FramingError",
        "HandshakeRefused",
        "MalformedRecord",
        "ReplayRefused",
    }
    for vector in NEGATIVE:
        assert vector["spec"].startswith("§")
        _error_class(vector["error"])


def test_window_vector_is_exactly_one_past_the_edge() -> None:
    """SPEC §7.3: with top = T, counter T - 64 is refused and T - 63 accepted."""
    (vector,) = (v for v in NEGATIVE if v["name"] == "record_older_than_window")
    (top,) = (int.from_bytes(_b(item["input"])[1:5], "big") for item in vector["prefix"])
    refused = int.from_bytes(_b(vector["input"])[1:5], "big")
    edge = int.from_bytes(_b(vector["follow_up"][0]["input"])[1:5], "big")
    assert top - refused == wire.REPLAY_WINDOW
    assert top - edge == wire.REPLAY_WINDOW - 1


def test_low_order_handshake_vectors_carry_a_low_order_key() -> None:
    """The crafted E_r / E_p is the order-8 point of RFC 7748 §7 (also in Wycheproof's
    x25519_test.json), for which X25519 yields all zeros."""
    order_8 = _b("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    private = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    with pytest.raises(ValueError, match="shared key"):  # the library's all-zero refusal
        private.exchange(X25519PublicKey.from_public_bytes(order_8))
    for name in ("handshake_init_low_order_ephemeral", "handshake_resp_low_order_ephemeral"):
        (vector,) = (v for v in NEGATIVE if v["name"] == name)
        assert _b(vector["input"])[1:33] == order_8


# --- SPEC §3: the record-length bound holds on the receive side too ------------


def test_decode_frame_refuses_record_longer_than_max() -> None:
    record = bytes([wire.RecordType.DATA]) + bytes(range(1, 200)) + b"\x00" + bytes(range(1, 57))
    assert len(record) == wire.MAX_RECORD_LEN + 1
    encoded = cobs_encode(record + crc16(record).to_bytes(wire.CRC_LEN, "big"))
    assert len(encoded) <= wire.MAX_ENCODED_FRAME_LEN
    with pytest.raises(errors.FramingError):
        decode_frame(encoded)
