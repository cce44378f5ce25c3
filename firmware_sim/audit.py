"""The pump's tamper-evident audit log (S10; SPEC §13.4).

Every delivery and every security event is appended here, signed by the
pump's audit key and hash-chained, and is durable before
:meth:`AuditLog.append` returns -- so before the command it records is
acknowledged.  The host reads the entries and checks them with
:func:`verify_entries`, which needs only the pump's audit public key.

Entry
-----

An entry is the deterministic CBOR (RFC 8949 §4.2 core deterministic
encoding, ``cbor2.dumps(..., canonical=True)``) of a map with integer keys::

    audit-entry = {
      1 => uint .le 4294967295,          ; seq: 0, 1, 2, ... never reused
      2 => uint,                         ; uptime_ms: pump uptime (resets at boot)
      3 => tstr .size (1..32),           ; event, e.g. "delivery", "rejections"
      4 => { * tstr .size (1..32) => int / tstr .size (0..64) / bstr .size (0..64) / bool },
      5 => bstr .size 32,                ; prev_hash: SHA-256 of the previous entry's
    }                                    ;   bytes; 32 zero bytes before seq 0

at most :data:`~pumpguard.protocol.wire.MAX_AUDIT_ENTRY_LEN` (136) bytes, and
its signature is Ed25519 by the pump's audit key over ``SHA-256(entry)`` (64
bytes): the format, the signing rule (:func:`sign_entry`) and verification
(:func:`verify_entries`) are all in ``protocol/audit_entry.py``.  The *signed form*
handed to the host and to :func:`verify_entries` is ``entry || signature``,
at most 200 bytes: one entry fits one History message (whose ``entry`` is
``bstr .size (0..200)``).  Field values that are bytes (a 16-byte command id)
cost less than their hex text; :meth:`AuditEntry.to_json` shows them as hex.

Frame on flash
--------------

::

    offset   size  field
    0        2     length  u16 big-endian: entry bytes, 1 .. 136 (0xFFFF = no frame)
    2        n     entry   the CBOR above
    2 + n    64    sig     Ed25519 signature
    66 + n   4     crc     CRC-32/ISO-HDLC (zlib.crc32) of length || entry || sig,
                           u32 big-endian

Frames are packed from offset 0 of a sector and never span sectors; the rest
of a sector is erased.  A frame is one program, then read back.

Ring
----

The region's ``sector_count >= 2`` sectors are used in turn.  An entry goes
right after the newest entry if its sector is clean there (erased to the
end) and the frame fits; otherwise into the next sector, which is erased
first -- evicting the oldest entries, a whole sector at a time.  The log
therefore always holds at least the last ``(sector_count - 1) * floor(
sector_size / frame_len)`` entries (:func:`retained_entries`), ``frame_len``
being the largest frame written.  A bolus entry (``{"pulses", "requested_pulses",
"cmd_id": 16 bytes}``) is about 117 bytes, a 187-byte frame: 21 per 4 KiB
sector, so 8 sectors keep at least 147 of them; the largest possible frame
(206 bytes) gives 19 per sector.  Each power cut during an append costs up to
one sector of that, since the next entry starts a fresh sector.

Boot
----

Every sector is read and walked frame by frame (a frame with a wrong crc is
skipped by its length if that is plausible, else the walk stops).  The
newest entry (highest seq) gives the next seq and the tail hash; its sector
is where appends continue if it is clean after it.  A torn last entry has a
wrong crc and is ignored: its seq is reused by the next entry, which chains
onto the last durable one.  In ring order the oldest sector may hold the
remains of an interrupted erase; its entries are kept only if they run on
into the next sector's first seq.  Any other gap is damage and stays visible
to :func:`verify_entries`.

Floods
------

Neither refused link input (:meth:`AuditLog.note_rejection`) nor a command
a paired remote sent and the pump refused after authenticating it
(:meth:`AuditLog.note_refusal`: over a limit, a bad or old policy) is written
one entry each.  Each is counted in RAM by its own :class:`_Tally` -- at most
3 named kinds (names of at most 12 characters), any further kind counted as
``"other"``, counts saturating at 2**32 - 1, so the fullest entry is 131
bytes -- and written as one ``"rejections"`` or ``"refusals"`` entry
``{kind: count, ...}``: before any other entry, and otherwise (by the next
count or :meth:`AuditLog.poll`) once the interval since its last write has
passed: 60 s, doubling after each write with no other entry in between
(reset by any other entry, capped at 2**31 ms, about 24.8 days).  A flood
lasting ``T`` alone therefore writes about ``2 + log2(T / 60 s)`` entries of
each kind: 12 in a day, about 30 in a year.  Counts not yet written are lost
in a power cut.

These two are the *low-priority* events; every other entry (deliveries,
policy, pairing, boot, alarms...) is *protected*.  A low-priority entry is
written only if it evicts no protected entry -- into the current sector's
free space, or by erasing a sector holding no protected entry -- and only
while the ring holds fewer than :func:`low_priority_quota` (one sector's
worth) of them; otherwise its counts stay pending, and are written when
allowed.  So only protected entries ever evict protected entries, and the
ring always holds the newest :func:`retained_protected` of them.

Unread records
--------------

An entry handed out by :meth:`AuditLog.entry_at_or_after` to a host reading
on from where it last read counts as read (RAM only: after a boot nothing
does, which only makes the alert come earlier).  Each time the ring opens a
sector, if the sector the next erase will evict holds protected entries not
yet read, ``on_alert`` is called: the user is told about one sector ahead.

Worn sectors
------------

A sector whose erase fails with :class:`~firmware_sim.flash.FlashWorn` is
retired: its index entries are dropped (as if evicted), the next usable
sector is erased instead, and a scan reads a worn sector as empty (it wore
out when it was to be evicted).  With only the current sector left usable,
:meth:`AuditLog.append` raises :class:`~firmware_sim.flash.StorageWorn`.

What verification proves
------------------------

Each entry is authentic, the entries form one unbroken chain, and nothing in
the middle was removed, changed, reordered or inserted.  The first retained
entry's ``prev_hash`` cannot be checked unless it is seq 0; its seq says how
many entries came before it (``evicted_before``).  Removing entries from the
*end* is only visible against a later seq the host has seen.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pumpguard.protocol.audit_entry import (
    GENESIS_HASH,
    RESERVED_NAMES,
    AuditEntry,
    AuditVerificationError,
    EntryMalformed,
    FieldValue,
    VerifiedLog,
    check_fields,
    check_name,
    check_uint,
    decode_entry,
    encode_entry,
    sign_entry,
    verify_entries,
)
from pumpguard.protocol.wire import (
    ED25519_SIGNATURE_LEN,
    MAX_AUDIT_ENTRY_LEN,
    MAX_AUDIT_SEQ,
    UINT32_MAX,
)

from .flash import Flash, FlashError, FlashWorn, StorageError, StorageWorn, is_erased

__all__ = [
    "LOW_PRIORITY_EVENTS",
    "REFUSALS_EVENT",
    "REJECTIONS_EVENT",
    "AuditEntry",
    "AuditLog",
    "AuditVerificationError",
    "FieldValue",
    "StorageWorn",
    "VerifiedLog",
    "low_priority_quota",
    "retained_entries",
    "retained_protected",
    "verify_entries",
]

_LENGTH: Final = struct.Struct(">H")
LENGTH_LEN: Final = _LENGTH.size
CRC_LEN: Final = 4
#: Bytes a frame adds to its entry.
FRAME_OVERHEAD: Final = LENGTH_LEN + ED25519_SIGNATURE_LEN + CRC_LEN
MAX_FRAME_LEN: Final = MAX_AUDIT_ENTRY_LEN + FRAME_OVERHEAD
_NO_FRAME: Final = 0xFFFF

# --- Aggregated entries ---------------------------------------------------------

#: Counts of refused link input (firmware_sim/link.py: bad frames, bad tags, replays).
REJECTIONS_EVENT: Final = "rejections"
#: Counts of commands a paired remote sent that the pump refused after
#: authenticating them (over a limit, a bad or old policy).
REFUSALS_EVENT: Final = "refusals"
#: The low-priority events: aggregated counts, which may never evict a
#: delivery or security record (the "protected" entries: every other event).
LOW_PRIORITY_EVENTS: Final = frozenset({REJECTIONS_EVENT, REFUSALS_EVENT})
#: An aggregated entry is written at most this often by the timer ...
REJECTION_INTERVAL_MS: Final = 60_000
#: ... the interval doubling up to this while no other entry is written.
MAX_REJECTION_INTERVAL_MS: Final = 1 << 31
#: Distinct kinds counted by name; further kinds are counted as "other".
#: With kind names of at most 12 characters the fullest aggregated entry
#: is 131 bytes, within :data:`~pumpguard.protocol.wire.MAX_AUDIT_ENTRY_LEN`.
MAX_REJECTION_KINDS: Final = 3
MAX_KIND_LEN: Final = 12
OTHER_KIND: Final = "other"
_COUNT_LIMIT: Final = UINT32_MAX


class _Tally:
    """Counts of one aggregated event, in RAM, and when they are next due.

    One class for both aggregated events: link rejections and authenticated
    refusals count, bound and pace their entries the same way (module
    docstring, "Floods").
    """

    def __init__(self, event: str) -> None:
        self.event = event
        self.pending: dict[str, int] = {}
        self.last_write_ms: int | None = None
        self.interval_ms = REJECTION_INTERVAL_MS

    def count(self, kind: str) -> None:
        if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_KIND_LEN:
            raise ValueError(f"rejection kind must be text of 1..{MAX_KIND_LEN} characters")
        if kind in RESERVED_NAMES:
            raise ValueError(f"rejection kind {kind!r} is reserved")
        named = len(self.pending) - (OTHER_KIND in self.pending)
        if kind not in self.pending and named >= MAX_REJECTION_KINDS:
            kind = OTHER_KIND
        self.pending[kind] = min(self.pending.get(kind, 0) + 1, _COUNT_LIMIT)

    def due(self, now_ms: int) -> bool:
        last = self.last_write_ms
        return bool(self.pending) and (last is None or now_ms - last >= self.interval_ms)

    def written(self, now_ms: int, *, by_timer: bool) -> None:
        self.pending.clear()
        self.last_write_ms = now_ms
        if by_timer:
            self.interval_ms = min(self.interval_ms * 2, MAX_REJECTION_INTERVAL_MS)


def _frame(entry: bytes, signature: bytes) -> bytes:
    head = _LENGTH.pack(len(entry)) + entry + signature
    return head + zlib.crc32(head).to_bytes(CRC_LEN, "big")


def _entry_in_frame(frame: bytes) -> AuditEntry | None:
    """The entry a whole frame holds, or None if its crc or its entry is wrong."""
    body_end = len(frame) - CRC_LEN
    if zlib.crc32(frame[:body_end]) != int.from_bytes(frame[body_end:], "big"):
        return None
    try:
        return decode_entry(
            frame[LENGTH_LEN : body_end - ED25519_SIGNATURE_LEN],
            frame[-ED25519_SIGNATURE_LEN - CRC_LEN : body_end],
        )
    except EntryMalformed:
        # A frame with a good crc that holds no entry: damage, skipped like a bad crc.
        return None


def retained_entries(sector_size: int, sector_count: int, frame_len: int) -> int:
    """Entries of ``frame_len`` bytes (entry + 70) the ring always retains."""
    return (sector_count - 1) * (sector_size // frame_len)


# --- The log on the pump ----------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    entry: AuditEntry
    sector: int
    offset: int
    end: int


@dataclass(frozen=True)
class _Scan:
    #: The retained entries in seq order, with where they lie.
    entries: tuple[_Located, ...]
    #: Where the next frame may go in the newest entry's sector, or None.
    append_at: int | None


@dataclass(frozen=True)
class _Indexed:
    """Where one retained entry lies, and whether it is protected."""

    seq: int
    sector: int
    offset: int
    protected: bool


def _protected(event: str) -> bool:
    return event not in LOW_PRIORITY_EVENTS


def low_priority_quota(sector_size: int) -> int:
    """Most low-priority entries the ring retains at once: one sector's worth."""
    return max(1, sector_size // MAX_FRAME_LEN)


def retained_protected(sector_size: int, sector_count: int, frame_len: int) -> int:
    """Protected entries of ``frame_len`` bytes the ring retains whatever else is written."""
    return retained_entries(sector_size, sector_count, frame_len) - low_priority_quota(sector_size)


class AuditLog:
    """The audit log in ``first_sector .. first_sector + sector_count - 1``.

    Construction is the boot step: it rebuilds the next seq and tail hash
    from flash.  ``next_seq_source`` is called only if the region holds no
    valid entry, for the first seq (default 0) -- a firmware that keeps a
    high-water mark elsewhere uses it so that a wiped log continues its
    numbering instead of restarting.

    ``on_alert`` (settable) is called with one line for the user when
    records the host has not read are about to be overwritten (module
    docstring, "Unread records").
    """

    def __init__(
        self,
        flash: Flash,
        first_sector: int,
        sector_count: int,
        signing_key: Ed25519PrivateKey,
        *,
        next_seq_source: Callable[[], int] | None = None,
        on_alert: Callable[[str], None] | None = None,
    ) -> None:
        if sector_count < 2:
            raise ValueError("an audit log needs at least 2 sectors")
        if first_sector < 0 or first_sector + sector_count > flash.sector_count:
            raise ValueError(
                f"sectors {first_sector}..{first_sector + sector_count - 1} "
                f"are outside the flash's {flash.sector_count}"
            )
        if flash.sector_size < MAX_FRAME_LEN:
            raise ValueError(f"audit sectors must hold a {MAX_FRAME_LEN}-byte frame")
        self._flash = flash
        self._first = first_sector
        self._count = sector_count
        self._size = flash.sector_size
        self._key = signing_key
        self._next_seq_source = next_seq_source
        self.on_alert = on_alert
        self._quota = low_priority_quota(flash.sector_size)
        self._next_seq = 0
        self._tail_hash = GENESIS_HASH
        self._current: int | None = None
        self._append_at: int | None = None
        #: Each retained entry, in seq order: one item per entry the ring can
        #: hold.  A C port may walk the flash instead.
        self._index: list[_Indexed] = []
        self._loaded = False
        self._rejections = _Tally(REJECTIONS_EVENT)
        self._refusals = _Tally(REFUSALS_EVENT)
        #: The host has read every retained entry up to this seq (RAM only:
        #: after a boot nothing counts as read, which only alerts earlier).
        self._read_through = -1
        self._boot()

    # --- public API ---------------------------------------------------------

    @property
    def public_key_bytes(self) -> bytes:
        """The audit public key (raw 32 bytes) that :func:`verify_entries` takes."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def next_seq(self) -> int:
        """The seq the next entry will get."""
        self._ensure_loaded()
        return self._next_seq

    @property
    def pending_rejections(self) -> Mapping[str, int]:
        """Link rejection counts not yet written (a copy)."""
        return dict(self._rejections.pending)

    @property
    def pending_refusals(self) -> Mapping[str, int]:
        """Authenticated refusal counts not yet written (a copy)."""
        return dict(self._refusals.pending)

    @property
    def usable_sectors(self) -> int:
        """Sectors of the ring that are not worn out."""
        return sum(1 for sector in range(self._count) if not self._worn(sector))

    @property
    def unread_at_risk(self) -> int:
        """Protected entries the host has not read in the sector the next erase evicts."""
        self._ensure_loaded()
        victim = self._next_sector()
        if victim is None:
            return 0
        return sum(
            1
            for item in self._index
            if item.sector == victim and item.protected and item.seq > self._read_through
        )

    def append(self, event: str, fields: Mapping[str, FieldValue], now_ms: int) -> int:
        """Append one entry; it is durable when this returns.

        Pending aggregated counts are written first, as their own entries,
        unless that would evict a protected entry or pass the low-priority
        quota; then they stay pending (module docstring, "Floods").

        Returns:
            The entry's seq.

        Raises:
            ValueError: ``event`` or ``fields`` break the entry's bounds
                (checked before anything is written), or ``event`` is one of
                the aggregated events.
            StorageError: the seq would pass 2**32 - 1.
            StorageWorn: no sector but the current one can still be erased.
            FlashError: the flash refused a write or read back wrong.
            PowerLoss: the power was cut; the entry may or may not be there.
        """
        try:
            check_name(event, "event")
            checked = check_fields(fields)
            check_uint(now_ms, "now_ms")
        except EntryMalformed as exc:
            raise ValueError(str(exc)) from None
        if event in LOW_PRIORITY_EVENTS:
            raise ValueError(f"{event!r} entries are written by the aggregation only")
        worst = encode_entry(MAX_AUDIT_SEQ, now_ms, event, checked, GENESIS_HASH)
        if len(worst) > MAX_AUDIT_ENTRY_LEN:
            raise ValueError(f"entry of {len(worst)} bytes exceeds {MAX_AUDIT_ENTRY_LEN}")
        self._flush(now_ms)
        seq = self._write(event, checked, now_ms)
        assert seq is not None  # a protected entry is never deferred
        self._rejections.interval_ms = REJECTION_INTERVAL_MS
        self._refusals.interval_ms = REJECTION_INTERVAL_MS
        return seq

    def note_rejection(self, kind: str, now_ms: int) -> int | None:
        """Count one rejected frame or record of ``kind``; write if due.

        Returns:
            The seq of an entry if this call wrote one.

        Raises:
            ValueError: ``kind`` is not 1..12 characters of text, or reserved.
            As :meth:`append` when it writes.
        """
        self._rejections.count(kind)
        return self.poll(now_ms)

    def note_refusal(self, kind: str, now_ms: int) -> int | None:
        """Count one authenticated command the pump refused (``kind``, e.g.
        ``"over_limit"``); write if due.  As :meth:`note_rejection`."""
        self._refusals.count(kind)
        return self.poll(now_ms)

    def poll(self, now_ms: int) -> int | None:
        """Write the pending counts whose interval has passed.

        The firmware calls this from its main loop so that the last counts of
        a flood are written even if no further one arrives.

        Returns:
            The seq of the last entry written, if any.
        """
        try:
            check_uint(now_ms, "now_ms")
        except EntryMalformed as exc:
            raise ValueError(str(exc)) from None
        seq = None
        for tally in (self._rejections, self._refusals):
            if tally.due(now_ms):
                written = self._write_tally(tally, now_ms, by_timer=True)
                seq = written if written is not None else seq
        return seq

    def entry_at_or_after(self, from_seq: int) -> tuple[bytes, int]:
        """For a History request: the signed form of the first retained entry
        with seq >= ``from_seq``, and the seq to ask for next.

        An entry handed out to a host reading on from where it last read
        (``from_seq`` at most one past the read mark) counts as read.

        Returns:
            ``(signed, seq + 1)``, or ``(b"", next_seq)`` when there is no
            such entry -- so the host also learns where the log ends.
        """
        self._ensure_loaded()
        position = bisect.bisect_left(self._index, from_seq, key=lambda item: item.seq)
        for item in self._index[position:]:
            entry = self._read_entry(item.sector, item.offset)
            if entry is not None and entry.seq == item.seq:
                if from_seq <= self._read_through + 1:
                    self._read_through = max(self._read_through, item.seq)
                return entry.signed, item.seq + 1
            # Damaged since boot: skip it; the host's verification sees the gap.
        return b"", self._next_seq

    def entries(self) -> list[AuditEntry]:
        """The retained entries, oldest first, read from flash.

        Raises:
            PowerLoss: the flash has no power.
        """
        return [located.entry for located in self._scan().entries]

    # --- internals ----------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._boot()

    def _worn(self, sector: int) -> bool:
        return self._flash.is_worn(self._first + sector)

    def _boot(self) -> None:
        self._loaded = False
        scan = self._scan()
        self._index = [
            _Indexed(item.entry.seq, item.sector, item.offset, _protected(item.entry.event))
            for item in scan.entries
        ]
        if scan.entries:
            newest = scan.entries[-1]
            self._next_seq = newest.entry.seq + 1
            self._tail_hash = newest.entry.digest
            self._current = newest.sector
            self._append_at = scan.append_at
        else:
            first = 0 if self._next_seq_source is None else self._next_seq_source()
            self._next_seq = check_uint(first, "first seq", MAX_AUDIT_SEQ)
            self._tail_hash = GENESIS_HASH
            self._current = None
            self._append_at = None
        self._loaded = True

    def _flush(self, now_ms: int) -> None:
        """Write every pending count now, where allowed (before another entry)."""
        for tally in (self._rejections, self._refusals):
            if tally.pending:
                self._write_tally(tally, now_ms, by_timer=False)

    def _write_tally(self, tally: _Tally, now_ms: int, *, by_timer: bool) -> int | None:
        seq = self._write(tally.event, dict(tally.pending), now_ms)
        if seq is not None:
            tally.written(now_ms, by_timer=by_timer)
        return seq

    def _next_sector(self) -> int | None:
        """The sector a fresh-sector write would erase: the next usable one
        after the current sector in ring order (None if there is none)."""
        if self._current is None:
            candidates = range(self._count)
        else:
            candidates = range(self._current + 1, self._current + self._count)
        for candidate in candidates:
            sector = candidate % self._count
            if not self._worn(sector):
                return sector
        return None

    def _low_priority_allowed(self, frame_len: int) -> bool:
        """Whether a low-priority frame may be written now (module docstring, "Floods")."""
        if self._fits(frame_len):
            evicted: list[_Indexed] = []
        else:
            victim = self._next_sector()
            if victim is None:
                return False
            evicted = [item for item in self._index if item.sector == victim]
            if any(item.protected for item in evicted):
                return False
        low = sum(1 for item in self._index if not item.protected)
        low -= sum(1 for item in evicted if not item.protected)
        return low < self._quota

    def _fits(self, frame_len: int) -> bool:
        return (
            self._current is not None
            and self._append_at is not None
            and self._append_at + frame_len <= self._size
        )

    def _write(self, event: str, fields: Mapping[str, FieldValue], now_ms: int) -> int | None:
        """Write one entry; None if it is low-priority and may not be written now."""
        self._ensure_loaded()
        seq = self._next_seq
        if seq > MAX_AUDIT_SEQ:
            raise StorageError("audit sequence number exhausted")
        protected = _protected(event)
        if not protected:
            # Decide before signing: a deferred entry costs no signature.
            raw = encode_entry(seq, now_ms, event, fields, self._tail_hash)
            if not self._low_priority_allowed(len(raw) + FRAME_OVERHEAD):
                return None
        entry = sign_entry(seq, now_ms, event, fields, self._tail_hash, signing_key=self._key)
        frame = _frame(entry.raw, entry.signature)
        self._loaded = False  # Until the frame is known to be complete.
        if self._fits(len(frame)):
            assert self._current is not None
            assert self._append_at is not None
            sector, offset = self._current, self._append_at
        else:
            sector, offset = self._open_sector(), 0
        address = (self._first + sector) * self._size + offset
        self._flash.program(address, frame)
        if self._flash.read(address, len(frame)) != frame:
            raise FlashError(f"audit frame at {address} read back wrong")
        self._index.append(_Indexed(seq, sector, offset, protected))
        self._next_seq = seq + 1
        self._tail_hash = entry.digest
        self._current = sector
        self._append_at = offset + len(frame)
        self._loaded = True
        if offset == 0:
            self._warn_unread()
        return seq

    def _open_sector(self) -> int:
        """Erase the next usable sector (evicting the oldest entries, or
        starting the log) and return it; a sector that wears out on the way
        is retired and the next one tried.

        Raises:
            StorageWorn: no usable sector is left but the current one.
        """
        while True:
            sector = self._next_sector()
            if sector is None or sector == self._current:
                raise StorageWorn("audit log: every sector but the current one is worn out")
            self._index = [item for item in self._index if item.sector != sector]
            try:
                self._flash.erase(self._first + sector)
            except FlashWorn:
                # Retired: its entries count as evicted, here and at the next boot.
                continue
            return sector

    def _warn_unread(self) -> None:
        at_risk = self.unread_at_risk
        if at_risk and self.on_alert is not None:
            self.on_alert(
                f"audit log nearly full: {at_risk} record(s) not yet read will be "
                "overwritten soon - read the history from your remote"
            )

    def _read_entry(self, sector: int, offset: int) -> AuditEntry | None:
        address = (self._first + sector) * self._size + offset
        (length,) = _LENGTH.unpack(self._flash.read(address, LENGTH_LEN))
        if not 1 <= length <= MAX_AUDIT_ENTRY_LEN or offset + length + FRAME_OVERHEAD > self._size:
            return None
        return _entry_in_frame(self._flash.read(address, length + FRAME_OVERHEAD))

    def _scan(self) -> _Scan:
        """Read every usable sector and apply the boot rules (module docstring)."""
        per_sector: list[list[_Located]] = []
        clean_after: list[int | None] = []
        for sector in range(self._count):
            if self._worn(sector):
                # Retired: whatever it still holds was to be evicted.
                per_sector.append([])
                clean_after.append(None)
                continue
            found, end_clean = self._scan_sector(sector)
            per_sector.append(found)
            clean_after.append(end_clean)
        newest: _Located | None = None
        for found in per_sector:
            for candidate in found:
                if newest is None or candidate.entry.seq > newest.entry.seq:
                    newest = candidate
        if newest is None:
            return _Scan((), None)
        current = newest.sector
        order = [(current + 1 + i) % self._count for i in range(self._count)]
        runs = [per_sector[sector] for sector in order if per_sector[sector]]
        # The oldest non-empty sector may be an erase cut short: keep its
        # entries only if they run on into the next sector's.
        if len(runs) > 1 and runs[0][-1].entry.seq + 1 != runs[1][0].entry.seq:
            runs = runs[1:]
        retained = tuple(located for run in runs for located in run)
        append_at = newest.end if clean_after[current] == newest.end else None
        return _Scan(retained, append_at)

    def _scan_sector(self, sector: int) -> tuple[list[_Located], int | None]:
        """A sector's valid entries, and the end of its last one if erased after it."""
        data = self._flash.read((self._first + sector) * self._size, self._size)
        found: list[_Located] = []
        last_end = 0
        pos = 0
        while pos + LENGTH_LEN <= self._size:
            (length,) = _LENGTH.unpack_from(data, pos)
            if length == _NO_FRAME:
                break
            end = pos + length + FRAME_OVERHEAD
            if not 1 <= length <= MAX_AUDIT_ENTRY_LEN or end > self._size:
                break
            entry = _entry_in_frame(data[pos:end])
            if entry is not None:
                found.append(_Located(entry, sector, pos, end))
                last_end = end
            pos = end
        clean_from = last_end if is_erased(data[last_end:]) else None
        return found, clean_from
