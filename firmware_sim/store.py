"""Crash-safe atomic commit of the pump's persistent state (SPEC §13.2).

:class:`SnapshotStore` keeps one opaque payload (the firmware's state, a CBOR
blob of a few KiB) in a region of ``sector_count >= 2`` flash sectors.  Each
:meth:`~SnapshotStore.commit` appends a whole new copy; :meth:`~SnapshotStore.load`
returns the newest intact one.  A power cut at any program or erase leaves
either the old payload or the new one -- never a mix, and never nothing once
something was committed.

Record format
-------------

Records are packed from offset 0 of a sector, each right after the previous
one; all bytes after the last record are erased (``0xFF``)::

    offset   size  field
    0        2     magic   0x50 0x47 ("PG"), programmed LAST: the commit mark
    2        4     seq     u32 big-endian: 1 for the first commit, then +1
    6        2     length  u16 big-endian: payload bytes, 0 .. sector_size - 12
    8        n     payload
    8 + n    4     crc     CRC-32/ISO-HDLC (zlib.crc32) of seq || length || payload,
                           u32 big-endian (the magic is not covered)

A record never spans sectors.  Integers are big-endian, as on the wire.

Commit
------

1. Choose the place: right after the newest record if its sector is *clean*
   there (every byte to the sector's end erased) and the record fits;
   otherwise the next sector of the region (cyclically), erased first.  The
   sector holding the newest record is never erased or written over, so the
   old payload survives any cut until the new one is committed.
2. Program bytes 2 .. end (seq, length, payload, crc), the magic still
   erased.
3. Program the magic.  This 2-byte program is the commit point.
4. Read the record back and compare.

Reading a record
----------------

=========== ============================================ ====================
state       bytes at the record's position               meaning
=========== ============================================ ====================
blank       the 8 header bytes are ``0xFF``              end of records
uncommitted magic ``0xFFFF``, header not blank           a commit cut before
                                                         step 3: ignored
valid       magic is "PG" or a partly programmed "PG"    committed (a cut
            (every 1 bit of "PG" still 1), the length    *during* step 3
            fits the sector, the crc matches             counts: the body is
                                                         whole)
damaged     anything else (magic programmed, crc wrong)  never left by a
                                                         power cut in a
                                                         written sector
=========== ============================================ ====================

The load rule: the valid record with the highest seq.  If there is none,
a blank region is factory new (``None``), and so is a region whose only
content is the torn first commit (the region's first sector starts with an
uncommitted record, nothing lies beyond the extent its length field allows,
and the other sectors are blank).  Anything else raises
:class:`StorageCorrupt`: the firmware must enter its safe state, never take
factory defaults.

After a torn commit
-------------------

An uncommitted (torn) record is ignored, and the *next* commit does not go
after it: it goes to the next sector.  The torn record's length field cannot
be trusted (the cut may have landed inside it), so nothing after it could be
found again reliably; and starting a fresh sector keeps the property that a
sector's records were all written, in order, after one complete erase.  That
property is what lets a damaged record be told from a torn one: in the
sector of the newest valid record, a *damaged* record right after it can
only be a later commit that was completed and then corrupted, so
:meth:`~SnapshotStore.load` raises :class:`StorageCorrupt` instead of
silently rolling back to the older payload.  A damaged record elsewhere is
older than the newest valid record (or the remains of an interrupted erase)
and is ignored.  The one rollback the store cannot see is corruption of the
first record of a freshly erased sector, which looks exactly like an erase
cut short: ``load`` then returns the previous payload.

Worn sectors
------------

A sector that fails its erase with :class:`~firmware_sim.flash.FlashWorn`
is retired: the commit erases the next sector instead (never the newest
record's), and loading reads a worn sector as blank -- it wore out when it
was to be erased, so what it still holds is older than the newest record
and was meant to go.  The region keeps working while one sector besides the
newest record's can still be erased; after that :meth:`~SnapshotStore.commit`
raises :class:`~firmware_sim.flash.StorageWorn` and writes nothing (the
payload committed last stays loadable).

Scanning is bounded: every sector is read once and walked record by record;
after an unreadable position the walk resynchronises at the next "PG" and
accepts only a fully valid record there.  A collision of CRC-32 (2**-32 per
damaged record) is the residual risk of accepting a damaged record.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from .flash import ERASED, Flash, FlashError, FlashWorn, StorageError, StorageWorn, is_erased

__all__ = ["RECORD_OVERHEAD", "SnapshotStore", "StorageCorrupt"]

MAGIC: Final = b"PG"
_MAGIC_BITS: Final = int.from_bytes(MAGIC, "big")
MAGIC_LEN: Final = 2
#: magic (2) || seq (4) || length (2).
_HEADER: Final = struct.Struct(">2sIH")
HEADER_LEN: Final = _HEADER.size
CRC_LEN: Final = 4
#: Bytes a record adds to its payload.
RECORD_OVERHEAD: Final = HEADER_LEN + CRC_LEN
#: A commit that would need this seq is refused: seq never wraps.
SEQ_LIMIT: Final = 0xFFFF_FFFF


class StorageCorrupt(StorageError):
    """Storage holds data no sequence of commits and power cuts can leave.

    The persistent state is unknown.  The firmware must not fall back to
    factory defaults: it enters its safe state (remote bolus off, alarm)
    until the user resets storage at the pump.
    """


class _Kind(enum.Enum):
    BLANK = enum.auto()
    UNCOMMITTED = enum.auto()
    VALID = enum.auto()
    DAMAGED = enum.auto()


@dataclass(frozen=True)
class _Record:
    """Where one valid record lies.  ``sector`` is relative to the region."""

    seq: int
    sector: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + RECORD_OVERHEAD + self.length


@dataclass(frozen=True)
class _SectorScan:
    records: tuple[_Record, ...]
    #: The sector's valid record with the highest seq.
    newest: _Record | None
    #: The record position right after ``newest`` holds a damaged record.
    damaged_after_newest: bool
    #: Every byte after ``newest`` (from 0 without one) is erased.
    clean_after_newest: bool
    #: Index just past the last non-erased byte (0 for a blank sector).
    used: int
    #: The 8 bytes at offset 0, for the torn-first-commit rule.
    head: bytes


@dataclass
class _State:
    newest: _Record | None
    #: Offset in ``newest``'s sector where a record may be appended, or None.
    append_at: int | None


def _classify(data: bytes, pos: int, max_payload: int) -> tuple[_Kind, int]:
    """The state of the record position ``pos`` of a sector, and its payload length."""
    if pos + RECORD_OVERHEAD > len(data):
        return (_Kind.BLANK, 0) if is_erased(data[pos:]) else (_Kind.DAMAGED, 0)
    magic, _seq, length = _HEADER.unpack_from(data, pos)
    if is_erased(data[pos : pos + HEADER_LEN]):
        return _Kind.BLANK, 0
    magic_bits = int.from_bytes(magic, "big")
    if magic_bits == 0xFFFF:
        return _Kind.UNCOMMITTED, 0
    if magic_bits & _MAGIC_BITS != _MAGIC_BITS:
        return _Kind.DAMAGED, 0
    end = pos + HEADER_LEN + length
    if length > max_payload or end + CRC_LEN > len(data):
        return _Kind.DAMAGED, 0
    crc = int.from_bytes(data[end : end + CRC_LEN], "big")
    if zlib.crc32(data[pos + MAGIC_LEN : end]) != crc:
        return _Kind.DAMAGED, 0
    return _Kind.VALID, length


class SnapshotStore:
    """Atomic, crash-safe storage of one payload in ``sector_count`` sectors.

    ``first_sector .. first_sector + sector_count - 1`` of ``flash`` belong
    to the store alone.  A payload is at most ``sector_size - 12`` bytes.
    """

    def __init__(self, flash: Flash, first_sector: int, sector_count: int) -> None:
        if sector_count < 2:
            raise ValueError("a snapshot store needs at least 2 sectors")
        if first_sector < 0 or first_sector + sector_count > flash.sector_count:
            raise ValueError(
                f"sectors {first_sector}..{first_sector + sector_count - 1} "
                f"are outside the flash's {flash.sector_count}"
            )
        self._flash = flash
        self._first = first_sector
        self._count = sector_count
        self._size = flash.sector_size
        self._max_payload = min(flash.sector_size - RECORD_OVERHEAD, 0xFFFF)
        self._state: _State | None = None

    @property
    def max_payload(self) -> int:
        """Largest payload :meth:`commit` accepts."""
        return self._max_payload

    # --- public API ---------------------------------------------------------

    def load(self) -> bytes | None:
        """The newest committed payload, read from flash (call it at boot).

        Returns:
            The payload of the valid record with the highest seq, or ``None``
            if nothing was ever committed (blank region, or only a torn
            first commit).

        Raises:
            StorageCorrupt: the region holds no valid record but something
                was committed, or a committed record newer than the newest
                valid one is damaged.
            PowerLoss: the flash has no power.
        """
        self._state = None
        state = self._decide(self._scan_all())
        self._state = state
        if state.newest is None:
            return None
        return self._read_payload(state.newest)

    def commit(self, payload: bytes) -> int:
        """Make ``payload`` the stored state, atomically.

        Durable when it returns.  If it raises (a power cut), :meth:`load`
        returns either the previous payload or ``payload``.

        Returns:
            The new record's seq.

        Raises:
            ValueError: ``payload`` is longer than :attr:`max_payload`.
            StorageCorrupt: the region is corrupt; only :meth:`format` clears it.
            StorageError: the seq would wrap.
            StorageWorn: no sector but the newest record's can be erased.
            FlashError: the flash refused a write or read back wrong.
            PowerLoss: the power was cut; the commit may or may not have happened.
        """
        if len(payload) > self._max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {self._max_payload}")
        state = self._state if self._state is not None else self._decide(self._scan_all())
        self._state = None  # Until this commit is known to be complete.
        newest = state.newest
        seq = 1 if newest is None else newest.seq + 1
        if seq >= SEQ_LIMIT:
            raise StorageError("snapshot sequence number exhausted")
        total = RECORD_OVERHEAD + len(payload)
        if (
            newest is not None
            and state.append_at is not None
            and state.append_at + total <= self._size
        ):
            sector, offset = newest.sector, state.append_at
        else:
            sector, offset = self._fresh_sector(newest), 0
        self._write_record(sector, offset, seq, payload)
        record = _Record(seq, sector, offset, len(payload))
        self._state = _State(record, record.end)
        return seq

    def format(self) -> None:
        """Erase the region: the store becomes factory new (``load() is None``).

        For the user's "reset storage" at the pump after :class:`StorageCorrupt`.
        First every valid record is programmed to all zeros, oldest first,
        then every sector is erased.  A power cut part-way therefore leaves
        the newest payload, or :class:`StorageCorrupt`, or a blank store --
        never an older payload brought back.  (Zeroing the whole record, not
        just its magic, matters: an erase cut short sets bits back to 1 and
        could turn a zeroed magic into a valid one, but cannot recreate a
        body and its CRC.)

        Raises:
            PowerLoss: the power was cut; call it again after the reboot.
        """
        self._state = None
        records = sorted(
            (record for scan in self._scan_all() for record in scan.records),
            key=lambda record: record.seq,
        )  # Worn sectors' records are never read again (``_scan_all``).
        for record in records:
            zeros = bytes(RECORD_OVERHEAD + record.length)
            self._flash.program(self._address(record.sector, record.offset), zeros)
        for sector in range(self._count):
            if not self._worn(sector):  # A worn sector is never read again.
                self._flash.erase(self._first + sector)
        self._state = _State(None, None)

    # --- internals ----------------------------------------------------------

    def _fresh_sector(self, newest: _Record | None) -> int:
        """Erase the next usable sector after the newest record's (never that
        one) and return it.  A sector that wears out is retired: the next one
        is tried.

        Raises:
            StorageWorn: every other sector of the region is worn out.
        """
        start = 0 if newest is None else newest.sector + 1
        for candidate in range(start, start + self._count):
            sector = candidate % self._count
            if (newest is not None and sector == newest.sector) or self._worn(sector):
                continue
            try:
                self._flash.erase(self._first + sector)
            except FlashWorn:
                continue
            return sector
        raise StorageWorn(
            f"snapshot store in sectors {self._first}..{self._first + self._count - 1}: "
            "no sector left to commit to (the others are worn out)"
        )

    def _worn(self, sector: int) -> bool:
        return self._flash.is_worn(self._first + sector)

    def _address(self, sector: int, offset: int) -> int:
        return (self._first + sector) * self._size + offset

    def _write_record(self, sector: int, offset: int, seq: int, payload: bytes) -> None:
        length = len(payload).to_bytes(2, "big")
        body = seq.to_bytes(4, "big") + length + payload
        tail = body + zlib.crc32(body).to_bytes(CRC_LEN, "big")
        address = self._address(sector, offset)
        self._flash.program(address + MAGIC_LEN, tail)
        self._flash.program(address, MAGIC)
        if self._flash.read(address, MAGIC_LEN + len(tail)) != MAGIC + tail:
            raise FlashError(f"snapshot record at {address} read back wrong")

    def _read_payload(self, record: _Record) -> bytes:
        start = self._address(record.sector, record.offset) + HEADER_LEN
        return self._flash.read(start, record.length)

    def _scan_all(self) -> list[_SectorScan]:
        # A worn sector is read as blank: it wore out when it was to be
        # erased, so what it still holds is older than the newest record and
        # was meant to go (module docstring, "Worn sectors").
        return [
            _SectorScan((), None, False, True, 0, bytes([ERASED]) * HEADER_LEN)
            if self._worn(sector)
            else self._scan_sector(sector)
            for sector in range(self._count)
        ]

    def _scan_sector(self, sector: int) -> _SectorScan:
        data = self._flash.read(self._address(sector, 0), self._size)
        records: list[_Record] = []
        newest: _Record | None = None
        pos = 0
        # Walk record by record; at a position holding no valid record, jump
        # to the next "PG" and try again (at most one try per byte).
        while pos + RECORD_OVERHEAD <= self._size:
            kind, length = _classify(data, pos, self._max_payload)
            if kind is _Kind.VALID:
                seq = int.from_bytes(data[pos + MAGIC_LEN : pos + MAGIC_LEN + 4], "big")
                record = _Record(seq, sector, pos, length)
                records.append(record)
                if newest is None or seq > newest.seq:
                    newest = record
                pos = record.end
                continue
            found = data.find(MAGIC, pos + 1)
            if found < 0:
                break
            pos = found
        after = 0 if newest is None else newest.end
        return _SectorScan(
            records=tuple(records),
            newest=newest,
            damaged_after_newest=(
                newest is not None and _classify(data, after, self._max_payload)[0] is _Kind.DAMAGED
            ),
            clean_after_newest=is_erased(data[after:]),
            used=len(data.rstrip(bytes([ERASED]))),
            head=data[:HEADER_LEN],
        )

    def _decide(self, scans: list[_SectorScan]) -> _State:
        """Apply the load rule (module docstring) to a scan of every sector."""
        newest: _Record | None = None
        tied = False
        for scan in scans:
            for record in scan.records:
                if newest is None or record.seq > newest.seq:
                    newest, tied = record, False
                elif record.seq == newest.seq:
                    tied = True
        if newest is not None:
            if tied:
                raise StorageCorrupt(f"two valid snapshots claim seq {newest.seq}")
            scan = scans[newest.sector]
            if scan.damaged_after_newest:
                raise StorageCorrupt(
                    f"a committed snapshot after seq {newest.seq} is damaged; refusing to roll back"
                )
            return _State(newest, newest.end if scan.clean_after_newest else None)
        if all(scan.used == 0 for scan in scans) or self._torn_first_commit(scans):
            return _State(None, None)
        raise StorageCorrupt("storage is not blank but holds no valid snapshot")

    def _torn_first_commit(self, scans: list[_SectorScan]) -> bool:
        """Only a cut first commit (and cut retries of it) could leave this.

        The first commit goes to offset 0 of the region's first sector, and
        a cut one leaves its magic erased.  Its non-erased bytes then lie
        within the extent its length field allows: a partly programmed
        length reads *larger* than intended (programming only clears bits),
        so the bound read is never too small.
        """
        if any(scan.used for scan in scans[1:]):
            return False
        first = scans[0]
        magic, _seq, length = _HEADER.unpack(first.head)
        if magic != bytes([ERASED, ERASED]):
            return False
        extent: int = RECORD_OVERHEAD + min(int(length), self._max_payload)
        return first.used <= extent
