"""A counter that never goes back, across any power cut (SPEC §13.3).

:class:`ReservedCounter` hands out 0, 1, 2, ... and persists only one write
per ``block`` values, as RFC 8613 Appendix B.1 does for OSCORE sender
sequence numbers: before handing out the first value of a new block it
durably records the *reservation mark* ``n + block``; values below the mark
may have been used.  After a reboot it resumes at the persisted mark,
skipping whatever of the last block was not used.  A value is never handed
out twice and the next one is always larger -- whatever was torn.

Slot format
-----------

The counter owns two consecutive sectors, ``sector`` and ``sector + 1``,
each an array of fixed 16-byte slots (``sector_size`` must be a multiple of
16; a slot never spans sectors and suits flash with 8- or 16-byte program
units)::

    offset  size  field
    0       4     magic  "PGRC" (0x50 0x47 0x52 0x43), programmed LAST: the commit mark
    4       8     mark   u64 big-endian: the reservation mark
    12      4     crc    CRC-32/ISO-HDLC (zlib.crc32) of mark, u32 big-endian

A slot is *blank* (16 x ``0xFF``), *uncommitted* (magic ``0xFFFFFFFF``, the
rest not blank: a reservation cut before its magic), *valid* (magic is
"PGRC" or a partly programmed "PGRC" -- every 1 bit of it still 1 -- and the
crc matches) or *damaged* (anything else).

Reserving
---------

The new record goes in the slot after the last non-blank slot of the sector
holding the highest valid mark; when that sector is full, the *other* sector
is erased and the record goes to its slot 0.  The sector holding the newest
valid mark is never erased, so it survives any cut.  The 12-byte body is
programmed first, then the magic (the commit point), then the slot is read
back.  Every record's mark is exactly the previous record's mark + ``block``
(for the block size in use).  Values are below ``limit`` (default 2**63);
:class:`CounterLimitReached` is raised at it, never a wrap.

Boot
----

* mark ``M`` = the highest valid mark (0 if there is none);
* if any slot is *damaged*, resume at ``M + block``, else at ``M``;
* no valid slot and a damaged one: :class:`~firmware_sim.store.StorageCorrupt`
  (a reservation was committed and lost; the count is unknown).

A power cut leaves only uncommitted slots (ignored: their mark was never
durable, so no value of their block was handed out), partly programmed
magics over a whole body (valid: the body is complete) and, in the other
sector, the remains of a cut erase (damaged, but older than ``M``: skipping
one block for them costs nothing).  The extra block also covers one
corrupted record: because each mark is its predecessor's + ``block`` and the
predecessor is never erased while its successor is the newest, losing the
newest record to corruption makes ``M + block`` equal to the lost mark.
More than one corrupted record needs ECC, which this simulation has not.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import Final

from .flash import Flash, FlashError, StorageError, is_erased
from .store import StorageCorrupt

__all__ = ["COUNTER_SLOT_LEN", "CounterLimitReached", "ReservedCounter"]

MAGIC: Final = b"PGRC"
_MAGIC_BITS: Final = int.from_bytes(MAGIC, "big")
_SLOT: Final = struct.Struct(">4sQI")
COUNTER_SLOT_LEN: Final = _SLOT.size
_MAGIC_LEN: Final = 4
#: Marks are u64; ``limit + 2 * block`` must stay below this.
_MARK_LIMIT: Final = 1 << 64
#: Values are below this unless the caller asks for less.
DEFAULT_LIMIT: Final = 1 << 63


class CounterLimitReached(StorageError):
    """The counter reached its limit; the caller must rekey (or the like)."""


class _Slot(enum.Enum):
    BLANK = enum.auto()
    UNCOMMITTED = enum.auto()
    VALID = enum.auto()
    DAMAGED = enum.auto()


def _classify(raw: bytes) -> tuple[_Slot, int]:
    if is_erased(raw):
        return _Slot.BLANK, 0
    magic, mark, crc = _SLOT.unpack(raw)
    magic_bits = int.from_bytes(magic, "big")
    if magic_bits == 0xFFFF_FFFF:
        return _Slot.UNCOMMITTED, 0
    if magic_bits & _MAGIC_BITS != _MAGIC_BITS or zlib.crc32(raw[4:12]) != crc:
        return _Slot.DAMAGED, 0
    return _Slot.VALID, int(mark)


class ReservedCounter:
    """A never-decreasing counter persisted in blocks (module docstring).

    Uses sectors ``sector`` and ``sector + 1`` of ``flash`` alone.  Values
    handed out are ``< limit``.
    """

    #: Sectors the counter occupies, starting at ``sector``.
    SECTORS: Final = 2

    def __init__(
        self, flash: Flash, sector: int, block: int = 16, *, limit: int = DEFAULT_LIMIT
    ) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        if limit < 1 or limit + 2 * block >= _MARK_LIMIT:
            raise ValueError("limit must be positive and leave room for two blocks below 2**64")
        if sector < 0 or sector + self.SECTORS > flash.sector_count:
            raise ValueError(f"sectors {sector}..{sector + 1} are outside the flash")
        if flash.sector_size % COUNTER_SLOT_LEN:
            raise ValueError(f"sector size must be a multiple of {COUNTER_SLOT_LEN}")
        self._flash = flash
        self._sector = sector
        self._block = block
        self._limit = limit
        self._slots = flash.sector_size // COUNTER_SLOT_LEN
        # Durable state, rebuilt from flash whenever it is None.
        self._mark = 0
        self._current = 0
        self._free_slot = 0
        self._next = 0
        self._loaded = False
        self._boot()

    # --- public API ---------------------------------------------------------

    @property
    def block(self) -> int:
        """Values reserved per flash write."""
        return self._block

    @property
    def reserved(self) -> int:
        """The durable reservation mark: no value at or above it was handed out."""
        self._ensure_loaded()
        return self._mark

    def peek(self) -> int:
        """The value :meth:`next` would return, without using it.

        Raises:
            StorageCorrupt, PowerLoss: as :meth:`next`, when the counter is
                rebuilt from flash after an interrupted reservation.
        """
        self._ensure_loaded()
        return self._next

    def next(self) -> int:
        """Hand out the next value.  It is durable-safe when this returns.

        Raises:
            CounterLimitReached: the next value would be ``limit`` or more.
            StorageCorrupt: the counter's sectors hold no provable mark.
            FlashError: the flash refused a write or read back wrong.
            PowerLoss: the power was cut while reserving; nothing was handed
                out, and after the reboot a new counter resumes above every
                value this one returned.
        """
        self._ensure_loaded()
        value = self._next
        if value >= self._limit:
            raise CounterLimitReached(f"counter reached its limit {self._limit}")
        while value >= self._mark:
            self._reserve(self._mark + self._block)
        self._next = value + 1
        return value

    # --- internals ----------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._boot()

    def _boot(self) -> None:
        """Rebuild the durable state from flash (module docstring, "Boot")."""
        self._loaded = False
        size = self._flash.sector_size
        best: tuple[int, int, int] | None = None  # (mark, sector, slot)
        last_used = [-1, -1]
        damaged = False
        for half in range(self.SECTORS):
            data = self._flash.read((self._sector + half) * size, size)
            for slot in range(self._slots):
                raw = data[slot * COUNTER_SLOT_LEN : (slot + 1) * COUNTER_SLOT_LEN]
                kind, mark = _classify(raw)
                if kind is _Slot.BLANK:
                    continue
                last_used[half] = slot
                if kind is _Slot.DAMAGED:
                    damaged = True
                elif kind is _Slot.VALID and (best is None or mark > best[0]):
                    best = (mark, half, slot)
        if best is None:
            if damaged:
                raise StorageCorrupt("counter sectors hold no valid mark but a damaged one")
            mark, current = 0, 0
        else:
            mark, current, _slot = best
        self._mark = mark
        self._current = current
        self._free_slot = last_used[current] + 1
        self._next = mark + self._block if damaged else mark
        self._loaded = True

    def _reserve(self, mark: int) -> None:
        """Durably record ``mark`` (module docstring, "Reserving")."""
        self._loaded = False  # Until the record is known to be complete.
        current, slot = self._current, self._free_slot
        if slot >= self._slots:
            current, slot = 1 - current, 0
            self._flash.erase(self._sector + current)
        address = (self._sector + current) * self._flash.sector_size + slot * COUNTER_SLOT_LEN
        body = mark.to_bytes(8, "big")
        tail = body + zlib.crc32(body).to_bytes(4, "big")
        self._flash.program(address + _MAGIC_LEN, tail)
        self._flash.program(address, MAGIC)
        if self._flash.read(address, COUNTER_SLOT_LEN) != MAGIC + tail:
            raise FlashError(f"counter slot at {address} read back wrong")
        self._mark = mark
        self._current = current
        self._free_slot = slot + 1
        self._loaded = True
