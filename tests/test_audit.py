"""The audit log (S10): signed, hash-chained, durable, flood-proof.

Attacks and faults these tests stop:

* tampering: changing any byte of any stored entry or its signature,
  reordering, deleting or duplicating entries in the middle, splicing in an
  entry signed by another key, or forging a fresh start (seq 0) -- every one
  is caught by :func:`verify_entries`, which names where the log breaks;
* power cuts at every program and erase of a run of appends that wraps the
  ring: no entry that ``append`` returned for is lost (unless the ring
  evicted it by its stated policy), a torn entry is ignored, and the chain
  continues after the reboot;
* a rejection flood (100 000 refused frames) writing more than a handful of
  entries or evicting delivery records;
* entries that break the format's bounds being written at all.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from pumpguard.firmware_sim.audit import (
    MAX_KIND_LEN,
    REJECTION_INTERVAL_MS,
    REJECTIONS_EVENT,
    AuditLog,
    retained_entries,
)
from pumpguard.firmware_sim.flash import Flash, PowerLoss
from pumpguard.protocol import LocalProtocolError, RemoteProtocolError
from pumpguard.protocol.audit_entry import (
    GENESIS_HASH,
    AuditEntry,
    AuditVerificationError,
    EntryMalformed,
    FieldValue,
    decode_entry,
    entry_digest,
    sign_entry,
    verify_entries,
)
from pumpguard.protocol.wire import MAX_AUDIT_ENTRY_LEN, MAX_AUDIT_SIGNED_LEN

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SECTOR = 512
SECTORS = 4


def public(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def audit_flash(seed: int = 0) -> Flash:
    # Sector 0 is someone else's: the log must stay out of it.
    return Flash.in_memory(sector_size=SECTOR, sector_count=SECTORS + 1, seed=seed)


def open_log(flash: Flash, key: Ed25519PrivateKey = KEY) -> AuditLog:
    return AuditLog(flash, 1, SECTORS, key)


def delivery(n: int) -> dict[str, FieldValue]:
    return {"units": 5 * n, "cmd_id": bytes([n % 256]) * 16, "remote": "a1b2c3d4"}


def signed(entries: list[AuditEntry]) -> list[bytes]:
    return [entry.signed for entry in entries]


def filled_log(count: int = 6) -> tuple[Flash, AuditLog]:
    flash = audit_flash()
    log = open_log(flash)
    for n in range(count):
        log.append("delivery", delivery(n), now_ms=1000 * n)
    return flash, log


# --- Format and round trip ---------------------------------------------------------


def test_entries_round_trip_and_verify() -> None:
    flash, log = filled_log()
    entries = log.entries()
    assert [entry.seq for entry in entries] == list(range(6))
    verified = verify_entries(signed(entries), log.public_key_bytes)
    assert verified.evicted_before == 0
    assert verified.last_seq == 5
    assert verified.tail_hash == hashlib.sha256(entries[-1].raw).digest()
    assert entries[3].fields == delivery(3)
    assert entries[3].uptime_ms == 3000
    assert log.next_seq == 6
    assert flash.read(0, SECTOR) == b"\xff" * SECTOR, "the log stays in its region"


def test_to_json_is_flat_with_seq_event_and_fields() -> None:
    _flash, log = filled_log(3)
    record = log.entries()[2].to_json()
    assert record["seq"] == 2
    assert record["event"] == "delivery"
    assert record["units"] == 10
    assert record["cmd_id"] == (bytes([2]) * 16).hex()
    assert record["remote"] == "a1b2c3d4"
    assert record["uptime_ms"] == 2000


def test_entry_and_frame_are_as_documented() -> None:
    """Golden structure from the module docstring, rebuilt independently."""
    flash, log = filled_log(2)
    first, second = log.entries()
    expected = cbor2.dumps(
        {1: 0, 2: 0, 3: "delivery", 4: delivery(0), 5: bytes(32)}, canonical=True
    )
    assert first.raw == expected
    assert second.prev_hash == hashlib.sha256(first.raw).digest()
    KEY.public_key().verify(first.signature, hashlib.sha256(first.raw).digest())
    head = len(first.raw).to_bytes(2, "big") + first.raw + first.signature
    frame = head + zlib.crc32(head).to_bytes(4, "big")
    assert flash.read(SECTOR, len(frame)) == frame, "frame at the start of the region"
    assert flash.read(SECTOR + len(frame), 2) == len(second.raw).to_bytes(2, "big")
    assert len(first.signed) <= MAX_AUDIT_SIGNED_LEN


#: Signed forms (``entry || signature``) of the first two entries a pump with
#: :data:`KEY` writes, pinned when the signing rule moved from
#: ``firmware_sim/audit.py`` into ``protocol/audit_entry.py``: the same bytes
#: must result, and Ed25519 is deterministic (RFC 8032 §5.1.6).
GOLDEN_SIGNED = [
    bytes.fromhex(
        "a50100021904d2036d626f6c75735f7374617274656404a266636d645f69645000010203040506"
        "0708090a0b0c0d0e0f6670756c736573182f0558200000000000000000000000000000000000000000"
        "0000000000000000000000007b406ef586b1b49a088df74c7f4ffa113c8c23ae4a937d636a39d81717"
        "3a73f522f73a96a599a457647d3c445fcd25b46d82ec1af120b5f376936929ec9be505"
    ),
    bytes.fromhex(
        "a501010219162e0364626f6f7404a164626f6f74020558202ad9bd3b36e8a63a0f2e8e713fb0838e75"
        "3bb14c9618fed2aa61ee802c3961c525cf8ed2b812415be6804e1220dd69c93140c7f9c52cad08f0dd"
        "d30019d40b5e393c3c5ab2c00ec847e27eb1b0a670e9be380ad8f7561c219661949903efcf0c"
    ),
]
GOLDEN_CONTENTS: list[tuple[str, dict[str, FieldValue], int]] = [
    ("bolus_started", {"pulses": 47, "cmd_id": bytes(range(16))}, 1234),
    ("boot", {"boot": 2}, 5678),
]


def test_signing_matches_the_golden_entries_in_both_directions() -> None:
    """The pump's log and :func:`sign_entry` give the pinned bytes, and they verify."""
    flash = audit_flash()
    log = open_log(flash)
    for event, fields, now_ms in GOLDEN_CONTENTS:
        log.append(event, fields, now_ms=now_ms)
    assert signed(log.entries()) == GOLDEN_SIGNED
    prev_hash = GENESIS_HASH
    for seq, (event, fields, now_ms) in enumerate(GOLDEN_CONTENTS):
        entry = sign_entry(seq, now_ms, event, fields, prev_hash, signing_key=KEY)
        assert entry.signed == GOLDEN_SIGNED[seq]
        assert entry == decode_entry(entry.raw, entry.signature)
        assert entry_digest(entry.raw) == hashlib.sha256(entry.raw).digest()
        prev_hash = entry.digest
    assert verify_entries(GOLDEN_SIGNED, public(KEY)).tail_hash == prev_hash


def history(log: AuditLog, from_seq: int = 0) -> list[bytes]:
    """What host/client.py's history() collects, one request per entry."""
    out: list[bytes] = []
    while True:
        entry, from_seq = log.entry_at_or_after(from_seq)
        if not entry:
            return out
        out.append(entry)


def test_entry_at_or_after_serves_history() -> None:
    flash, log = filled_log(4)
    entry, next_seq = log.entry_at_or_after(2)
    assert entry == log.entries()[2].signed
    assert next_seq == 3
    assert log.entry_at_or_after(9) == (b"", 4), "past the end: where the log ends"
    for n in range(4, 60):  # Wrap the ring several times.
        log.append("delivery", delivery(n), now_ms=n)
        assert history(log) == signed(log.entries())
    assert history(open_log(flash)) == signed(log.entries())
    assert history(log, 55) == signed(log.entries())[-5:]


# --- Tampering -----------------------------------------------------------------------


def test_tampering_with_any_byte_of_any_entry_is_detected() -> None:
    _flash, log = filled_log(5)
    good = signed(log.entries())
    key = log.public_key_bytes
    for index, blob in enumerate(good):
        for position in range(len(blob)):
            for mask in (0x01, 0x80):
                forged = bytearray(blob)
                forged[position] ^= mask
                tampered = [*good[:index], bytes(forged), *good[index + 1 :]]
                with pytest.raises(AuditVerificationError) as caught:
                    verify_entries(tampered, key)
                assert caught.value.index == index, f"entry {index} byte {position}"


@pytest.mark.parametrize(
    ("order", "breaks_at_seq"),
    [
        ([0, 2, 1, 3, 4], 2),  # swapped
        ([0, 1, 3, 4], 3),  # deleted from the middle
        ([0, 1, 1, 2, 3], 1),  # duplicated
        ([0, 1, 2, 4], 4),  # one gone before the last
    ],
    ids=["reordered", "deleted", "duplicated", "gap"],
)
def test_reordering_or_deleting_entries_is_detected(order: list[int], breaks_at_seq: int) -> None:
    _flash, log = filled_log(5)
    good = signed(log.entries())
    with pytest.raises(AuditVerificationError) as caught:
        verify_entries([good[i] for i in order], log.public_key_bytes)
    assert caught.value.seq == breaks_at_seq
    assert f"seq {breaks_at_seq}" in str(caught.value)


def test_an_entry_signed_by_another_key_is_detected() -> None:
    _flash, log = filled_log(3)
    foreign = open_log(audit_flash(), OTHER_KEY)
    for n in range(3):
        foreign.append("delivery", delivery(n), now_ms=1000 * n)
    assert foreign.entries()[1].raw == log.entries()[1].raw  # Same content ...
    spliced = signed(log.entries())
    spliced[1] = foreign.entries()[1].signed  # ... but the wrong signer.
    with pytest.raises(AuditVerificationError, match="bad signature"):
        verify_entries(spliced, log.public_key_bytes)
    with pytest.raises(AuditVerificationError, match="bad signature"):
        verify_entries(signed(log.entries()), public(OTHER_KEY))


def test_a_forged_fresh_start_is_detected() -> None:
    """Seq 0 must chain from the genesis hash, even when validly signed."""
    raw = cbor2.dumps({1: 0, 2: 0, 3: "boot", 4: {}, 5: b"\x01" * 32}, canonical=True)
    forged = raw + KEY.sign(hashlib.sha256(raw).digest())
    with pytest.raises(AuditVerificationError, match="genesis"):
        verify_entries([forged], public(KEY))


def test_a_validly_signed_entry_from_another_history_is_detected() -> None:
    """Right key, right seq, wrong predecessor: only the hash chain catches it."""
    _flash, log = filled_log(3)
    good = signed(log.entries())
    raw = cbor2.dumps(
        {1: 1, 2: 1000, 3: "delivery", 4: delivery(1), 5: b"\x02" * 32}, canonical=True
    )
    forked = raw + KEY.sign(hashlib.sha256(raw).digest())
    with pytest.raises(AuditVerificationError, match="prev_hash") as caught:
        verify_entries([good[0], forked, *good[2:]], public(KEY))
    assert caught.value.seq == 1


@pytest.mark.parametrize(
    "body",
    [
        {1: 0, 2: 0, 3: "boot", 4: {}},  # a key missing
        {1: 0, 2: 0, 3: "boot", 4: {}, 5: bytes(32), 6: 0},  # an extra key
        {1: -1, 2: 0, 3: "boot", 4: {}, 5: bytes(32)},  # negative seq
        {1: 0, 2: 0, 3: "", 4: {}, 5: bytes(32)},  # empty event
        {1: 0, 2: 0, 3: "boot", 4: {"x": 1.5}, 5: bytes(32)},  # a float field
        {1: 0, 2: 0, 3: "boot", 4: {1: 1}, 5: bytes(32)},  # a non-text field name
        {1: 0, 2: 0, 3: "boot", 4: {}, 5: bytes(31)},  # short prev_hash
    ],
    ids=["missing", "extra", "negative", "empty-event", "float", "int-name", "short-hash"],
)
def test_validly_signed_malformed_entries_are_refused(body: dict[int, object]) -> None:
    raw = cbor2.dumps(body, canonical=True)
    with pytest.raises(AuditVerificationError):
        verify_entries([raw + KEY.sign(hashlib.sha256(raw).digest())], public(KEY))


def test_a_non_deterministic_encoding_is_refused() -> None:
    body = {1: 0, 2: 0, 3: "boot", 4: {}, 5: bytes(32)}
    raw = cbor2.dumps(body, canonical=True)
    # The same map with its seq as a two-byte integer: valid CBOR, not canonical.
    loose = raw[:2] + b"\x18\x00" + raw[3:]
    assert cbor2.loads(loose) == body
    with pytest.raises(AuditVerificationError, match="deterministic"):
        verify_entries([loose + KEY.sign(hashlib.sha256(loose).digest())], public(KEY))


@settings(max_examples=300, deadline=None)
@given(blobs=st.lists(st.binary(max_size=260), max_size=4))
def test_verify_refuses_garbage_with_its_own_error_only(blobs: list[bytes]) -> None:
    """h11's fuzz invariant: verified, or AuditVerificationError -- nothing else."""
    try:
        verify_entries(blobs, public(KEY))
    except AuditVerificationError:
        return
    assert blobs == [], "garbage verified"


def test_verify_checks_the_public_key_length() -> None:
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        verify_entries([], bytes(31))
    assert verify_entries([], public(KEY)).first_seq is None


def test_bad_entries_are_remote_protocol_errors() -> None:
    """SPEC §10.1: the bytes are the pump's, so a host can catch one branch."""
    with pytest.raises(RemoteProtocolError) as malformed:
        decode_entry(b"\xa0", bytes(64))
    assert isinstance(malformed.value, EntryMalformed)
    with pytest.raises(RemoteProtocolError) as broken:
        verify_entries([b"\xa0" + bytes(64)], public(KEY))
    assert isinstance(broken.value, AuditVerificationError)
    assert (broken.value.seq, broken.value.index) == (None, 0)


# --- Ring and reboot -----------------------------------------------------------------


def test_the_ring_evicts_whole_old_sectors_and_still_verifies() -> None:
    flash = audit_flash()
    log = open_log(flash)
    for n in range(80):
        log.append("delivery", delivery(n), now_ms=n)
    entries = log.entries()
    frame_len = max(len(entry.signed) for entry in entries) + 6
    assert len(entries) >= retained_entries(SECTOR, SECTORS, frame_len)
    assert entries[-1].seq == 79
    verified = verify_entries(signed(entries), log.public_key_bytes)
    assert verified.evicted_before == entries[0].seq > 0
    # Dropping the oldest entries looks like eviction, and says how much.
    assert verify_entries(signed(entries[3:]), log.public_key_bytes).evicted_before == (
        entries[0].seq + 3
    )


def test_a_reboot_continues_the_chain() -> None:
    flash, log = filled_log(30)
    last = log.entries()[-1]
    rebooted = open_log(flash)
    assert rebooted.next_seq == 30
    rebooted.append("boot", {"boot": 2}, now_ms=0)
    entries = rebooted.entries()
    assert entries[-1].seq == 30
    assert entries[-1].prev_hash == last.digest
    verify_entries(signed(entries), rebooted.public_key_bytes)


def test_next_seq_source_only_starts_an_empty_log() -> None:
    flash = audit_flash()
    log = AuditLog(flash, 1, SECTORS, KEY, next_seq_source=lambda: 500)
    assert log.append("boot", {}, now_ms=0) == 500
    assert verify_entries(signed(log.entries()), public(KEY)).evicted_before == 500
    again = AuditLog(flash, 1, SECTORS, KEY, next_seq_source=lambda: 7)
    assert again.next_seq == 501


def test_a_torn_entry_is_ignored_and_its_seq_reused() -> None:
    flash, log = filled_log(4)
    flash.cut_power_at(1, keep=0.5)
    with pytest.raises(PowerLoss):
        log.append("delivery", delivery(99), now_ms=99)
    flash.power_on()
    rebooted = open_log(flash)
    assert [entry.seq for entry in rebooted.entries()] == [0, 1, 2, 3]
    assert rebooted.append("delivery", delivery(4), now_ms=4) == 4
    verify_entries(signed(rebooted.entries()), public(KEY))


Step = tuple[str, Mapping[str, FieldValue]]
#: A run of appends that wraps a 4-sector ring about twice, with a rejection
#: entry flushed in between.
SCENARIO: list[Step] = [("delivery", delivery(n)) for n in range(45)]


def run_appends(flash: Flash) -> tuple[dict[int, bytes], Step | None]:
    """Append the scenario until the power fails: (durable by seq, in flight)."""
    log = open_log(flash)
    durable: dict[int, bytes] = {}
    for n, (event, fields) in enumerate(SCENARIO):
        try:
            if n in (0, 20):
                # The first rejection is written at once; the second waits
                # for its interval and is flushed by the next append.
                log.note_rejection("replay", now_ms=n)
            seq = log.append(event, fields, now_ms=n)
        except PowerLoss:
            return durable, (event, fields)
        durable = {entry.seq: entry.signed for entry in log.entries() if entry.seq <= seq}
    return durable, None


@pytest.mark.parametrize(
    ("seed", "keep"),
    [(0, None), (1, None), (2, None), (0, 0.0), (0, 0.5), (0, 1.0)],
    ids=str,
)
def test_audit_power_cut_at_every_operation(seed: int, keep: float | None) -> None:
    reference = audit_flash()
    run_appends(reference)
    total = reference.operations
    for k in range(1, total + 1):
        flash = audit_flash(seed)
        flash.cut_power_at(k, keep=keep)
        durable, in_flight = run_appends(flash)
        assert in_flight is not None
        flash.power_on()
        log = open_log(flash)
        entries = log.entries()
        verify_entries(signed(entries), public(KEY))
        last_durable = max(durable, default=-1)
        newest_seq = entries[-1].seq if entries else -1
        assert newest_seq >= last_durable, f"cut {k}: a durable entry was lost"
        # Beyond the durable entries: only what the cut append was writing,
        # whole -- the flushed rejection count, then the entry asked for.
        extra = [(entry.event, dict(entry.fields)) for entry in entries if entry.seq > last_durable]
        flushed = (REJECTIONS_EVENT, {"replay": 1})
        allowed = [[], [in_flight], [flushed], [flushed, in_flight]]
        assert extra in allowed, f"cut {k}: unexpected entries {extra}"
        for entry in entries:
            if entry.seq in durable:
                assert entry.signed == durable[entry.seq], f"cut {k}: entry {entry.seq} changed"
        frame_len = max((len(blob) for blob in durable.values()), default=0) + 6
        # A cut erase may take the sector being evicted, no more.
        floor = last_durable - (SECTORS - 2) * (SECTOR // frame_len) + 1
        missing = [seq for seq in durable if seq >= floor and seq not in {e.seq for e in entries}]
        assert not missing, f"cut {k}: durable entries {missing} lost"
        # And the log goes on, chained to what survived.
        for n in range(3):
            log.append("delivery", delivery(100 + n), now_ms=n)
        after = open_log(flash).entries()
        verify_entries(signed(after), public(KEY))
        assert after[-1].seq == newest_seq + 3


# --- Rejection floods ----------------------------------------------------------------


def roomy_log() -> AuditLog:
    """A ring of 3 x 2 KiB: about 40 delivery entries retained."""
    return AuditLog(Flash.in_memory(sector_size=2048, sector_count=3), 0, 3, KEY)


def test_a_flood_of_rejections_writes_a_handful_of_entries_and_evicts_nothing() -> None:
    log = roomy_log()
    for n in range(20):
        log.append("delivery", delivery(n), now_ms=n)
    deliveries = signed(log.entries())
    before = log.next_seq
    now = 1000
    for n in range(100_000):
        now = 1000 + 5 * n  # 500 s of flood.
        log.note_rejection("auth" if n % 3 else "replay", now_ms=now)
    log.poll(now + REJECTION_INTERVAL_MS * 100)
    written = log.next_seq - before
    assert written <= 6, f"{written} entries for one flood"
    entries = log.entries()
    assert signed(entries[:20]) == deliveries, "a delivery record was evicted"
    counts = [entry.fields for entry in entries[20:]]
    assert all(entry.event == REJECTIONS_EVENT for entry in entries[20:])
    total = sum(int(value) for fields in counts for value in fields.values())
    assert total == 100_000, "every rejection is counted exactly once"
    verify_entries(signed(entries), public(KEY))


def test_a_flood_lasting_days_stays_logarithmic() -> None:
    log = roomy_log()
    log.append("delivery", delivery(1), now_ms=0)
    first = log.entries()[0].signed
    for n in range(100_000):
        log.note_rejection("framing", now_ms=10_000 * n)  # 11.6 days
    assert log.next_seq - 1 <= 16
    assert log.entries()[0].signed == first


def test_pending_rejections_are_written_before_any_other_entry() -> None:
    flash = audit_flash()
    log = open_log(flash)
    assert log.note_rejection("auth", now_ms=0) == 0, "the first of a flood is written at once"
    assert log.note_rejection("auth", now_ms=1000) is None
    assert log.note_rejection("replay", now_ms=2000) is None
    assert log.pending_rejections == {"auth": 1, "replay": 1}
    log.append("delivery", delivery(1), now_ms=3000)
    events = [(entry.event, dict(entry.fields)) for entry in log.entries()]
    assert events == [
        (REJECTIONS_EVENT, {"auth": 1}),
        (REJECTIONS_EVENT, {"auth": 1, "replay": 1}),
        ("delivery", delivery(1)),
    ]
    assert log.pending_rejections == {}


def test_rejection_kinds_are_bounded_and_the_fullest_entry_fits() -> None:
    flash = audit_flash()
    log = open_log(flash)
    log.note_rejection("first", now_ms=0)
    for n in range(20):
        log.note_rejection(f"kind-{n:07d}", now_ms=1)  # 12 characters each
    assert len(log.pending_rejections) == 4
    assert log.pending_rejections["other"] == 17
    log.poll(REJECTION_INTERVAL_MS)
    fullest = log.entries()[-1]
    assert len(fullest.raw) <= MAX_AUDIT_ENTRY_LEN
    with pytest.raises(ValueError, match=r"1\.\.12"):
        log.note_rejection("x" * (MAX_KIND_LEN + 1), now_ms=0)
    with pytest.raises(ValueError, match="reserved"):
        log.note_rejection("seq", now_ms=0)


# --- Bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "fields", "reason"),
    [
        ("", {}, "event"),
        ("e" * 33, {}, "event"),
        ("delivery", {"units": 1.5}, "float"),
        ("delivery", {"units": None}, "NoneType"),
        ("delivery", {"seq": 1}, "reserved"),
        ("delivery", {"event": "x"}, "reserved"),
        ("delivery", {"blob": bytes(65)}, "longer than 64"),
        ("delivery", {"big": 1 << 64}, "64-bit"),
        ("delivery", {f"f{n}": n for n in range(17)}, "at most 16"),
        ("delivery", {"a": "x" * 60, "b": "y" * 60}, "exceeds 136"),
    ],
    ids=[
        "empty-event",
        "long-event",
        "float",
        "none",
        "reserved-seq",
        "reserved-event",
        "long-bytes",
        "big-int",
        "many-fields",
        "oversized",
    ],
)
def test_entries_outside_the_format_are_refused_before_any_write(
    event: str, fields: dict[str, FieldValue], reason: str
) -> None:
    flash = audit_flash()
    log = open_log(flash)
    with pytest.raises(ValueError, match=reason):
        log.append(event, fields, now_ms=0)
    assert flash.operations == 0
    assert log.next_seq == 0


def test_geometry_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        AuditLog(audit_flash(), 1, 1, KEY)
    with pytest.raises(ValueError, match="outside"):
        AuditLog(audit_flash(), 2, SECTORS, KEY)
    with pytest.raises(ValueError, match="frame"):
        AuditLog(Flash.in_memory(sector_size=128, sector_count=4), 0, 2, KEY)


def test_the_log_on_a_file_flash_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.img"
    with Flash.open_file(path, sector_size=SECTOR, sector_count=SECTORS + 1) as flash:
        log = open_log(flash)
        for n in range(10):
            log.append("delivery", delivery(n), now_ms=n)
        written = signed(log.entries())
    with Flash.open_file(
        path, sector_size=SECTOR, sector_count=SECTORS + 1, read_only=True
    ) as flash:
        reopened = open_log(flash)
        assert signed(reopened.entries()) == written
        assert reopened.next_seq == 10
    verify_entries(written, public(KEY))


def test_public_key_matches_the_signing_key() -> None:
    _flash, log = filled_log(1)
    assert log.public_key_bytes == public(KEY)
    Ed25519PublicKey.from_public_bytes(log.public_key_bytes)
